"""The Keras fix backported for Python 3.10's Keras: where the bug is, it is fixed; elsewhere
nothing changes."""

from __future__ import annotations

import json
import subprocess

import keras

from captioning_course import keras_fixes
from conftest import OLDEST_PYTHON

# An Attention layer called on tensors with its scores, then on keras.Inputs, as the main
# lesson does when it builds its inference model after training.
EAGER_THEN_SYMBOLIC = """
import json, sys
import keras, numpy as np
from captioning_course import keras_fixes

def symbolic_call_after_eager_one():
    layer = keras.layers.Attention()
    layer([np.ones((2, 3, 4), "float32"), np.ones((2, 5, 4), "float32")],
          return_attention_scores=True)
    try:
        output, scores = layer([keras.Input((3, 4)), keras.Input((5, 4))],
                               return_attention_scores=True)
        plain = layer([keras.Input((3, 4)), keras.Input((5, 4))])
    except ValueError:
        return "fails"
    return [list(output.shape), list(scores.shape), list(plain.shape)]

before = symbolic_call_after_eager_one()
applied = keras_fixes.apply()
print(json.dumps({"keras": keras.__version__, "before": before, "applied": applied,
                  "after": symbolic_call_after_eager_one()}))
"""


def test_the_oldest_pythons_keras_gets_the_fix_and_then_builds():
    done = subprocess.run([str(OLDEST_PYTHON), "-c", EAGER_THEN_SYMBOLIC], check=True,
                          capture_output=True, text=True, timeout=300)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["keras"] == "3.12.4"
    assert (result["before"], result["applied"]) == ("fails", True)
    assert result["after"] == [[None, 3, 4], [None, 3, 5], [None, 3, 4]]


def test_a_keras_without_the_bug_is_left_alone():
    assert keras.__version__ != "3.12.4"
    spec = keras.layers.Attention.compute_output_spec
    assert keras_fixes.apply() is False
    assert keras.layers.Attention.compute_output_spec is spec
