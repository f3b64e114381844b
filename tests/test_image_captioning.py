"""The main lesson: it learns, grounds words in the image, reloads, and masks padding."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import REPO, notebook_definitions, printed_text

LESSON = REPO / "solutions" / "image_captioning.ipynb"


@pytest.fixture(scope="module")
def metrics(smoke_run):
    result = smoke_run["image_captioning"]
    assert result.status == "ok", result.failure
    return result.metrics


def test_model_clearly_beats_the_image_blind_baseline(metrics):
    model, baseline = metrics["model"], metrics["baseline"]
    assert model["CIDEr"] >= 3 * baseline["CIDEr"], (model, baseline)
    assert model["BLEU-4"] > baseline["BLEU-4"], (model, baseline)


def test_training_lowers_the_loss(metrics):
    assert metrics["loss"]["last_epoch"] < metrics["loss"]["first_epoch"]


def test_attention_falls_on_the_named_object_more_than_uniform(metrics):
    attention = metrics["attention_in_box"]
    assert attention["words"] > 0
    assert attention["mass"] > attention["uniform_share"]


def test_every_sample_photo_is_captioned(metrics):
    photos = {p.name for p in (REPO / "sample_images").iterdir() if p.suffix != ".md"}
    assert set(metrics["sample_captions"]) == photos
    for captions in metrics["sample_captions"].values():
        assert captions["greedy"] and len(captions["sampled"]) == 3


def test_reloaded_captioner_writes_the_same_caption(metrics):
    assert metrics["reload_identical"] is True


@pytest.fixture(scope="module")
def masked_loss():
    return notebook_definitions(LESSON, "masked_loss")["masked_loss"]


def loss_value(loss, targets, logits) -> float:
    return float(np.asarray(loss(np.array(targets), np.array(logits, dtype="float32"))))


def random_logits(rng, batch, length, vocab=7):
    return rng.normal(size=(batch, length, vocab)).astype("float32")


def test_appending_padding_leaves_the_loss_unchanged(masked_loss):
    rng = np.random.default_rng(0)
    targets = np.array([[3, 4, 2, 0], [5, 2, 0, 0]])
    logits = random_logits(rng, 2, 4)
    padded_targets = np.concatenate([targets, np.zeros((2, 5), dtype=int)], axis=1)
    padded_logits = np.concatenate([logits, random_logits(rng, 2, 5)], axis=1)
    assert loss_value(masked_loss, padded_targets, padded_logits) == pytest.approx(
        loss_value(masked_loss, targets, logits), rel=1e-5)


def test_logits_at_padded_positions_do_not_matter(masked_loss):
    rng = np.random.default_rng(1)
    targets = np.array([[3, 4, 2, 0, 0], [5, 2, 0, 0, 0]])
    logits = random_logits(rng, 2, 5)
    changed = logits.copy()
    changed[targets == 0] = rng.normal(scale=50.0, size=changed[targets == 0].shape)
    assert loss_value(masked_loss, targets, changed) == pytest.approx(
        loss_value(masked_loss, targets, logits), rel=1e-5)


def test_a_wrong_prediction_on_a_real_token_raises_the_loss(masked_loss):
    targets = np.array([[3, 4, 0]])
    right = np.full((1, 3, 7), -10.0, dtype="float32")
    right[0, 0, 3] = right[0, 1, 4] = right[0, 2, 0] = 10.0
    wrong = right.copy()
    wrong[0, 1, 4], wrong[0, 1, 6] = -10.0, 10.0  # confidently the wrong word
    assert loss_value(masked_loss, targets, wrong) > loss_value(masked_loss, targets, right) + 5


def test_predict_caption_names_bad_input_in_the_executed_lesson(smoke_run):
    printed = printed_text(smoke_run["image_captioning"].executed)
    assert "FileNotFoundError: no image file at" in printed and "no_such_photo.jpg" in printed
    assert "SOURCES.md is not a readable image: unknown format" in printed
    assert "sample_images is a folder, not an image file" in printed


@pytest.fixture(scope="module")
def attention_in_boxes():
    return notebook_definitions(LESSON, "attention_in_boxes")["attention_in_boxes"]


def test_attention_in_boxes_weighs_cells_by_their_area_inside(attention_in_boxes):
    weights = np.zeros((3, 3))
    weights[0, 0] = 1.0
    top_left_cell = [(0.0, 0.0, 1 / 3, 1 / 3)]
    assert attention_in_boxes(weights, top_left_cell) == pytest.approx((1.0, 1 / 9))
    uniform = np.full((3, 3), 1 / 9)
    mass, share = attention_in_boxes(uniform, [(0.1, 0.2, 0.6, 0.9)])
    assert mass == pytest.approx(share, abs=1e-9)
    assert share == pytest.approx(0.5 * 0.7, abs=0.02)


def test_attention_in_boxes_takes_float32_boxes_as_tfds_stores_them(attention_in_boxes):
    boxes = np.array([[0.0, 0.0, 0.5, 0.5]], dtype=np.float32)
    assert attention_in_boxes(np.full((2, 2), 0.25), boxes) == pytest.approx((0.25, 0.25))
