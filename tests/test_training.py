"""The training helpers the later lessons import: the main lesson's masked loss, and one
checkpoint folder per combination of settings."""

from __future__ import annotations

import numpy as np
import pytest

from captioning_course import training
from conftest import REPO, notebook_definitions

MAIN_LESSON = REPO / "notebooks" / "image_captioning.ipynb"


@pytest.fixture(scope="module")
def lessons_masked_loss():
    return notebook_definitions(MAIN_LESSON, "masked_loss")["masked_loss"]


@pytest.mark.parametrize("padding", [0, 3, 6])  # none, some, every position
def test_the_masked_loss_is_the_main_lesson_s(lessons_masked_loss, padding):
    rng = np.random.default_rng(padding)
    targets = rng.integers(1, 9, (4, 6))
    targets[:, 6 - padding:] = 0
    logits = rng.normal(size=(4, 6, 9)).astype("float32")
    ours = float(training.masked_loss(targets, logits))
    assert np.isfinite(ours)
    assert ours == pytest.approx(float(lessons_masked_loss(targets, logits)), rel=1e-6)
    if padding == 6:
        assert ours == 0.0  # an all-padding batch: nothing to learn, and no NaN


def test_each_combination_of_settings_gets_its_own_folder(tmp_path):
    first = training.settings_folder(tmp_path, "coco", ["<start>", "a"], 512)
    assert first.parent == tmp_path
    assert training.settings_folder(tmp_path, "coco", ["<start>", "a"], 512) == first
    assert training.settings_folder(tmp_path, "coco", ["<start>", "b"], 512) != first
    assert training.settings_folder(tmp_path, "coco", ["<start>", "a"], 256) != first
