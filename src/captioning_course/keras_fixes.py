"""A backport of one Keras fix, for the Keras release the pins choose on Python 3.10, and one
expected Keras warning silenced.

Keras 3.12.4, the last release for Python 3.10, remembers in the `Attention` layer whether its
last real call returned the attention scores, and its symbolic calls then describe their
output from that memory: once a layer has run on tensors with `return_attention_scores=True`
(a self-check, a training step, a caption), calling it on `keras.Input`s raises
`ValueError: ... Invalid dtype: tuple`. The main lesson calls it that way when it builds its
inference model after training. Keras fixed it upstream (keras-team/keras#22738: the output
is described from the call's own argument); `apply()` gives a Keras that still has the bug
the same stateless description, and leaves every other Keras alone.
"""

from __future__ import annotations

import functools


def _attention_output_spec(self, inputs, mask=None, return_attention_scores=False,
                           training=None, use_causal_mask=False):
    import keras

    query, value = inputs[0], inputs[1]
    key = inputs[2] if len(inputs) > 2 else value
    output = keras.KerasTensor((*query.shape[:-1], value.shape[-1]), dtype=self.compute_dtype)
    if not return_attention_scores:
        return output
    return output, keras.KerasTensor((*query.shape[:-1], key.shape[-2]),
                                     dtype=self.compute_dtype)


def attention_remembers_scores() -> bool:
    """Whether this Keras has the bug: a symbolic call fails after a real one with scores."""
    import keras
    import numpy as np

    layer = keras.layers.Attention()
    layer([np.zeros((1, 1, 1), "float32"), np.zeros((1, 2, 1), "float32")],
          return_attention_scores=True)
    try:
        layer([keras.Input((1, 1)), keras.Input((2, 1))], return_attention_scores=True)
    except ValueError:
        return True
    return False


@functools.cache
def apply() -> bool:
    """Backport the fix where it is missing; whether it was."""
    import warnings

    import keras

    # Decoding word by word, a Transformer's first word attends to itself alone, and Keras
    # warns about a softmax over one value at every call: expected, and not the student's bug.
    warnings.filterwarnings("ignore", message="You are using a softmax over axis")

    if not attention_remembers_scores():
        return False
    keras.layers.Attention.compute_output_spec = _attention_output_spec
    return True
