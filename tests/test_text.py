"""The caption text helpers the later lessons import are the main lesson's own."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from captioning_course import text
from conftest import REPO, notebook_definitions

MAIN_LESSON = REPO / "notebooks" / "image_captioning.ipynb"
CAPTIONS = ["A dog, running!", "<start> Two cats' toys. <end>", "  mixed CASE  ", "", "x-ray (1/2)"]


@pytest.fixture(scope="module")
def lesson():
    return notebook_definitions(MAIN_LESSON, "PUNCTUATION", "standardize", "add_start_end",
                                "covering_length")


@pytest.mark.parametrize("name", ["standardize", "add_start_end"])
def test_the_package_writes_what_the_main_lesson_writes(lesson, name):
    captions = tf.constant(CAPTIONS)
    assert getattr(text, name)(captions).numpy().tolist() == lesson[name](captions).numpy().tolist()


def test_start_and_end_survive_standardisation():
    assert text.standardize(text.add_start_end("A dog.")).numpy() == b"<start> a dog <end>"


@pytest.mark.parametrize("limit", [5, 12, 64])
def test_the_covering_length_is_the_main_lesson_s(lesson, limit):
    counts = np.random.default_rng(0).integers(3, 30, 5000)
    assert text.covering_length(counts, limit) == lesson["covering_length"](counts, limit)


def test_the_covering_length_keeps_the_share_asked_for():
    counts = np.array([5] * 9989 + [40] * 10 + [50])  # one caption in 10,000 is longer
    assert text.covering_length(counts, 64) == (40, 0.9999)
    assert text.covering_length(counts, 64, share=0.5) == (5, 0.9989)
    assert text.covering_length(counts, 10) == (10, 0.9989)  # the limit wins
