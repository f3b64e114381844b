"""The package's captioner is the main lesson's: given the weights the lesson saved, its
encoder head and one-step decoder compute the same outputs."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from captioning_course.captioner import build_captioner, first_state
from conftest import REPO, recorded_metrics

SAVED = REPO / "build" / "smoke" / "image_captioning" / "captioner"
SMOKE_GRID, SMOKE_WIDTH = (3, 3, 1536), 256  # the smoke profile's 150x150 images, its width


@pytest.fixture(scope="module")
def lesson_and_package(smoke_run):
    metrics = recorded_metrics(smoke_run, "image_captioning")
    vocabulary = json.loads((SAVED / "vocabulary.json").read_text())
    lesson_step = keras.models.load_model(SAVED / "decoder_step.keras")
    lesson_head = keras.models.load_model(SAVED / "encoder.keras").get_layer("encoder_head")
    package = build_captioner(len(vocabulary), metrics["caption_length"]["tokens"],
                              SMOKE_GRID, SMOKE_WIDTH)
    package.step_model.set_weights(lesson_step.get_weights())
    package.encoder_head.set_weights(lesson_head.get_weights())
    return lesson_step, lesson_head, package, len(vocabulary)


def test_the_encoder_head_is_the_main_lesson_s(lesson_and_package):
    _, lesson_head, package, _ = lesson_and_package
    grid = np.random.default_rng(0).normal(size=(2, *SMOKE_GRID)).astype("float32")
    np.testing.assert_allclose(package.encoder_head.predict_on_batch(grid),
                               lesson_head.predict_on_batch(grid), rtol=1e-5, atol=1e-5)


def test_the_one_step_decoder_is_the_main_lesson_s(lesson_and_package):
    lesson_step, _, package, vocabulary_size = lesson_and_package
    rng = np.random.default_rng(1)
    inputs = [rng.integers(1, vocabulary_size, (3, 1)),
              rng.normal(size=(3, SMOKE_WIDTH)).astype("float32"),
              rng.normal(size=(3, 9, SMOKE_WIDTH)).astype("float32")]
    for ours, lessons in zip(package.step_model.predict_on_batch(inputs),
                             lesson_step.predict_on_batch(inputs), strict=True):
        np.testing.assert_allclose(ours, lessons, rtol=1e-4, atol=1e-5)


def test_the_training_model_shares_the_step_model_s_layers():
    captioner = build_captioner(30, 7, (2, 2, 8), 16)
    assert captioner.training_model.output_shape == (None, 7, 30)
    shared = {id(v) for v in captioner.step_model.trainable_variables}
    assert shared <= {id(v) for v in captioner.training_model.trainable_variables}
    state = first_state(captioner.step_model)(np.zeros((5, 4, 16), "float32"))
    assert tuple(state.shape) == (5, 16) and not np.any(state)
