"""The custom-loop lesson: it learns, decodes as its own loop does, and really resumes."""

from __future__ import annotations

import json
import math

import nbformat
import numpy as np
import pytest

from captioning_course import profiles
from conftest import (
    REPO,
    LessonCellsFailed,
    assert_beats_the_image_blind_baseline,
    assert_every_sample_photo_captioned,
    notebook_definitions,
    printed_text,
    recorded_metrics,
    run_lesson_cells,
)

LESSON = REPO / "solutions" / "image_captioning_custom_loop.ipynb"
SMOKE_EPOCHS = profiles.SMOKE.overrides_for(LESSON.stem)["EPOCHS"]


@pytest.fixture(scope="module")
def metrics(smoke_run):
    return recorded_metrics(smoke_run, LESSON.stem)


def test_model_clearly_beats_the_image_blind_baseline(metrics):
    assert_beats_the_image_blind_baseline(metrics)


def test_training_lowers_the_training_and_the_validation_loss(metrics):
    loss = metrics["loss"]
    assert len(loss["train"]) == len(loss["val"]) == SMOKE_EPOCHS
    assert loss["train"][-1] < loss["train"][0]
    assert loss["val"][-1] < loss["val"][0]


def test_the_untrained_decoder_starts_near_ln_v(metrics):
    """fc2 starts with a zero bias and a small kernel: every word about 1 / V."""
    chance = math.log(metrics["data"]["vocabulary"])
    assert metrics["loss"]["initial"] == pytest.approx(chance, rel=0.05)


def test_consecutive_training_batches_share_few_images(metrics):
    """Interleaving one caption of each of 64 images in turn shares all 64 images with the
    batch before four times out of five (a mean near 51); shuffled pairs share a few."""
    mixing = metrics["batch_mixing"]
    assert mixing["batches"] >= 20
    assert mixing["shared_with_previous_mean"] < 0.2 * mixing["batch_size"]


def test_compiled_decoding_writes_the_loop_captions(metrics):
    assert metrics["compiled_matches_loop"] is True


def test_every_sample_photo_is_captioned(metrics):
    assert_every_sample_photo_captioned(metrics)


def test_validation_images_are_kept_out_of_training(metrics):
    data = metrics["data"]
    assert data["val_images"] > 0 and data["train_images"] > 0
    assert metrics["eval_images"] <= data["val_images"]


def test_the_recorded_run_resumed_from_its_checkpoint(metrics):
    """The lesson stops after half the epochs and restores fresh objects from the checkpoint.

    A rerun in the same folder finds the finished checkpoint and starts from it: the
    relations below hold either way.
    """
    resume = metrics["resume"]
    steps = resume["steps_per_epoch"]
    assert steps > 0
    assert resume["restored_epoch"] == max(SMOKE_EPOCHS // 2, resume["started_from_epoch"])
    assert resume["optimizer_steps_before"] == resume["restored_epoch"] * steps
    assert resume["optimizer_steps_after"] == SMOKE_EPOCHS * steps
    # The restored weights are the saved ones: same validation loss as recorded then.
    recorded = metrics["loss"]["val"][resume["restored_epoch"] - 1]
    assert resume["restored_val_loss"] == pytest.approx(recorded, rel=1e-4)


# A real interruption: the first kernel stops right after saving epoch 1; a new one resumes.
SHORT_RUN = {"TRAIN_SPLIT": "train[:64]", "EVAL_IMAGES": 8, "EPOCHS": 4}
# 64 images: 13 for validation, 51 for training, 255 pairs: 3 full batches of 64 per epoch.
STEPS_PER_EPOCH = 3
FINISHED_TRAINING = "history = train(checkpoint, manager, until_epoch=EPOCHS)"
STOP_AFTER_FIRST_CHECKPOINT = """import tensorflow as tf

_save = tf.train.CheckpointManager.save


def _save_then_stop(self, *args, **kwargs):
    path = _save(self, *args, **kwargs)
    raise KeyboardInterrupt(f"stopped after the first epoch, saved in {path}")


tf.train.CheckpointManager.save = _save_then_stop
"""


@pytest.mark.slow
def test_an_interrupted_training_resumes_in_a_new_kernel_with_the_optimizer_step_count(tmp_path):
    settings = {"notebook": LESSON, "folder": tmp_path, "last_cell": FINISHED_TRAINING,
                "parameters": SHORT_RUN}
    with pytest.raises(LessonCellsFailed, match="stopped after the first epoch"):
        run_lesson_cells(**settings, preamble=STOP_AFTER_FIRST_CHECKPOINT, probe="None")
    [folder] = (tmp_path / "outputs" / "checkpoints").iterdir()
    first_kernel = json.loads((folder / "history.json").read_text())
    assert list(first_kernel) == ["1"]

    probe = run_lesson_cells(**settings, probe=(
        '{"started": started_from_epoch, "started_at_step": started_at_step, '
        '"restored": restored_epoch, "before": steps_before, "after": steps_after, '
        '"per_epoch": steps_per_epoch, "epochs": sorted(history), '
        '"first_epoch": history[1], "restored_val": restored_val_loss, '
        '"recorded_val": history[restored_epoch]["val"]}'))
    assert probe["per_epoch"] == STEPS_PER_EPOCH
    # The new kernel starts after epoch 1, at the step count the first kernel reached...
    assert (probe["started"], probe["started_at_step"]) == (1, STEPS_PER_EPOCH)
    # ...trains epoch 2, then the lesson's own restart restores it and trains 3 and 4.
    assert (probe["restored"], probe["before"]) == (2, 2 * STEPS_PER_EPOCH)
    assert probe["after"] == 4 * STEPS_PER_EPOCH
    assert probe["epochs"] == [1, 2, 3, 4]
    assert probe["first_epoch"] == first_kernel["1"]  # epoch 1's record survives the restart
    assert probe["restored_val"] == pytest.approx(probe["recorded_val"], rel=1e-4)


@pytest.fixture(scope="module")
def lesson():
    return notebook_definitions(LESSON, "BahdanauAttention", "RNNDecoder", "CNNEncoder",
                                "teacher_forcing", "train_step")


def small_model(lesson, vocab=11, regions=4, channels=6, dropout=0.0):
    encoder, decoder = lesson["CNNEncoder"](5, dropout), lesson["RNNDecoder"](5, 8, vocab)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, regions, channels)).astype("float32")
    captions = np.array([[2, 5, 7, 3, 0, 0], [2, 4, 3, 0, 0, 0]])
    decoder(captions[:, :1], encoder(features), decoder.reset_state(2))  # builds the weights
    return encoder, decoder, features, captions


def caption_loss(lesson, encoder, decoder, features, captions):
    logits = lesson["teacher_forcing"](decoder, encoder(features), captions)
    return float(lesson["masked_loss"](captions[:, 1:], logits))


def test_appending_padding_to_the_captions_leaves_the_training_loss_unchanged(lesson):
    encoder, decoder, features, captions = small_model(lesson)
    padded = np.concatenate([captions, np.zeros((2, 4), dtype=captions.dtype)], axis=1)
    assert caption_loss(lesson, encoder, decoder, features, padded) == pytest.approx(
        caption_loss(lesson, encoder, decoder, features, captions), rel=1e-5)


def test_the_compiled_training_step_updates_every_weight_of_both_models(lesson):
    import keras
    import tensorflow as tf

    encoder, decoder, features, captions = small_model(lesson, dropout=0.5)
    variables = encoder.trainable_variables + decoder.trainable_variables
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(variables)
    before = [np.array(v) for v in variables]
    loss = lesson["train_step"](encoder, decoder, optimizer, tf.constant(features),
                                tf.constant(captions))
    assert np.shape(loss) == () and np.isfinite(float(loss))
    unchanged = [v.path for v, old in zip(variables, before, strict=True)
                 if np.array_equal(np.array(v), old)]
    assert not unchanged, f"the step leaves {unchanged} unchanged"
    assert int(optimizer.iterations) == 1


def test_the_encoders_dropout_acts_in_training_only(lesson):
    encoder, _, features, _ = small_model(lesson, dropout=0.5)
    np.testing.assert_array_equal(encoder(features), encoder(features, training=False))
    assert not np.allclose(encoder(features), encoder(features, training=True))


def test_rehearsal_runs_the_custom_loop_at_full_scale(rehearsal_run):
    result = rehearsal_run[LESSON.stem]
    assert result.status == "ok", result.failure
    executed = nbformat.read(result.executed, as_version=4)
    [injected] = [c.source for c in executed.cells
                  if "injected-parameters" in c.metadata.get("tags", [])]
    assert "ENCODER_WEIGHTS = " in injected and ".weights.h5" in injected  # loaded from a file
    assert "feature grid 8x8 with 2048 channels" in printed_text(result.executed)
    assert len(result.metrics["loss"]["train"]) == 20  # the full course's epochs
