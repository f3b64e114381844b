"""The main lesson: it learns, grounds words in the image, reloads, and masks padding."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import (
    REPO,
    LessonCellsFailed,
    assert_beats_the_image_blind_baseline,
    assert_every_sample_photo_captioned,
    notebook_definitions,
    recorded_metrics,
    run_lesson_cells,
)

LESSON = REPO / "solutions" / "image_captioning.ipynb"


@pytest.fixture(scope="module")
def metrics(smoke_run):
    return recorded_metrics(smoke_run, "image_captioning")


def test_model_clearly_beats_the_image_blind_baseline(metrics):
    assert_beats_the_image_blind_baseline(metrics)


def test_training_lowers_the_loss(metrics):
    assert metrics["loss"]["last_epoch"] < metrics["loss"]["first_epoch"]


def test_attention_falls_on_the_named_object_more_than_uniform(metrics):
    attention = metrics["attention_in_box"]
    assert attention["words"] > 0
    assert attention["mass"] > attention["uniform_share"]


def test_every_sample_photo_is_captioned(metrics):
    assert_every_sample_photo_captioned(metrics)


def test_reloaded_captioner_writes_the_same_caption(metrics):
    assert metrics["reloaded"]["after"] == metrics["reloaded"]["before"]


def test_caption_length_covers_the_training_captions(metrics):
    length = metrics["caption_length"]
    assert length["coverage"] >= 0.999
    assert length["tokens"] <= 24  # the smoke profile's MAX_CAPTION_LEN


def test_compiled_decoding_writes_the_loop_captions(metrics):
    assert metrics["decoded"]["compiled"] == metrics["decoded"]["loop"]
    assert set(metrics["beam"]) == set(metrics["model"])


def test_the_first_loss_is_about_that_of_a_uniform_guess(metrics):
    """ln V for the vocabulary actually learned: between ln 50 and ln 200 on the smoke data."""
    assert np.log(50) < metrics["loss"]["initial"] < np.log(200) + 0.5
    assert metrics["loss"]["first_epoch"] < metrics["loss"]["initial"]


def test_an_uninterrupted_run_starts_at_the_first_epoch(metrics):
    assert metrics["training"]["resumed_from_epoch"] == 0


# A short run on a few slice images, to interrupt and resume.
SHORT_RUN = {"TRAIN_SPLIT": "train[:64]", "EVAL_IMAGES": 8, "EPOCHS": 2}  # 2 steps per epoch
FIT_CELL = "history = caption_model.fit("


INTERRUPT_AFTER_FIRST_EPOCH = """import keras


class InterruptedBackup(keras.callbacks.BackupAndRestore):
    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt("stopped after the first epoch")


keras.callbacks.BackupAndRestore = InterruptedBackup
"""


@pytest.mark.slow
def test_an_interrupted_training_resumes_with_the_optimizer_step_count(tmp_path):
    settings = {"notebook": LESSON, "folder": tmp_path, "last_cell": FIT_CELL,
                "parameters": {**SHORT_RUN, "EPOCHS": 3}}
    with pytest.raises(LessonCellsFailed, match="stopped after the first epoch"):
        run_lesson_cells(**settings, preamble=INTERRUPT_AFTER_FIRST_EPOCH, probe="None")
    backups = list((tmp_path / "outputs" / "training_backup").iterdir())
    assert len(backups) == 1 and any(backups[0].iterdir())

    probe = run_lesson_cells(**settings, probe='{"resumed": resumed_from_epoch, '
                                               '"epochs": history.epoch, "steps": optimizer_steps}')
    assert probe == {"resumed": 1, "epochs": [1, 2], "steps": 6}  # 2 steps in each of 3 epochs
    assert not backups[0].exists()  # deleted once training has finished


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
