"""The package's choose_next is the main lesson's, for the lessons that reuse it."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from captioning_course.sampling import choose_next
from conftest import REPO, notebook_definitions

MAIN_LESSON = REPO / "solutions" / "image_captioning.ipynb"


@pytest.fixture(scope="module")
def lessons_choose_next():
    return notebook_definitions(MAIN_LESSON, "choose_next")["choose_next"]


@pytest.mark.parametrize(("top_k", "temperature"), [(1, 1.0), (3, 0.5), (5, 2.0)])
def test_choose_next_is_the_main_lesson_s(lessons_choose_next, top_k, temperature):
    logits = np.random.default_rng(0).normal(size=(64, 12)).astype("float32")
    banned = np.isin(np.arange(12), [0, 1, 2])
    chosen = []
    for function in (choose_next, lessons_choose_next):
        tf.random.set_seed(7)  # the same draws for both
        chosen.append(function(logits, banned, top_k, temperature))
    np.testing.assert_array_equal(*chosen)
    assert not np.isin(chosen[0], [0, 1, 2]).any()
