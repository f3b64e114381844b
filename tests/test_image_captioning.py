"""The main lesson: it learns, grounds words in the image, reloads, and masks padding."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

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
    assert metrics["reload_identical"] is True


def test_caption_length_covers_the_training_captions(metrics):
    length = metrics["caption_length"]
    assert length["coverage"] >= 0.999
    assert length["tokens"] <= 24  # the smoke profile's MAX_CAPTION_LEN


def test_compiled_decoding_writes_the_loop_captions(metrics):
    assert metrics["compiled_matches_loop"] is True
    assert set(metrics["beam"]) == set(metrics["model"])


def test_exported_captioner_reloads_in_a_fresh_process_with_the_notebook_captions(metrics):
    """`python -m captioning_course.caption` loads the export with tensorflow_hub.load."""
    assert metrics["export_identical"] is True
    photos = sorted(p for p in (REPO / "sample_images").iterdir() if p.suffix != ".md")
    export = REPO / "build" / "smoke" / "image_captioning" / "captioner_export"
    done = subprocess.run([sys.executable, "-m", "captioning_course.caption", str(export),
                           *map(str, photos)], capture_output=True, text=True, check=True)
    printed = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert printed == {str(p): metrics["sample_captions"][p.name]["greedy"] for p in photos}


def test_the_caption_command_names_an_unreadable_photo_and_captions_the_others(metrics, tmp_path):
    export = REPO / "build" / "smoke" / "image_captioning" / "captioner_export"
    photo = REPO / "sample_images" / "coffee.jpg"
    (tmp_path / "notes.jpg").write_text("not a photo")
    done = subprocess.run([sys.executable, "-m", "captioning_course.caption", str(export),
                           str(tmp_path / "notes.jpg"), str(photo)], capture_output=True, text=True)
    assert done.returncode == 1
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert "notes.jpg" in error
    assert done.stdout == f"{photo}: {metrics['sample_captions']['coffee.jpg']['greedy']}\n"


def test_an_uninterrupted_run_starts_at_the_first_epoch(metrics):
    assert metrics["training"]["resumed_from_epoch"] == 0


# Training paths the CPU machine does not take by itself, run on a few slice images.
SHORT_RUN = {"TRAIN_SPLIT": "train[:64]", "EVAL_IMAGES": 8, "EPOCHS": 2}  # 2 steps per epoch
# The profiles train on cached features, as the full course does; these runs keep the CNN
# inside the model, the lesson's other branch.
CNN_INSIDE = {**SHORT_RUN, "CACHE_FEATURES": False}
FIT_CELL = "history = caption_model.fit("
TWO_CPUS = """import tensorflow as tf
[cpu] = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""
ONE_GPU_OR_MORE = """if len(tf.config.list_logical_devices("GPU")) > 1:
    strategy = tf.distribute.MirroredStrategy()
else:
    strategy = tf.distribute.get_strategy()"""
TWO_CPU_STRATEGY = 'strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])'


@pytest.mark.slow
def test_training_runs_on_two_devices_with_a_batch_per_device(tmp_path):
    probe = run_lesson_cells(
        LESSON, tmp_path, last_cell="def on_one_device(", parameters=CNN_INSIDE,
        preamble=TWO_CPUS, replace=((ONE_GPU_OR_MORE, TWO_CPU_STRATEGY),),
        probe='{"replicas": strategy.num_replicas_in_sync, "steps": optimizer_steps, '
              '"loss": history.history["loss"], '
              '"trained": type(caption_model.trainable_variables[0].value).__name__, '
              '"inference": type(step_model.trainable_variables[0].value).__name__, '
              '"rows": len(encoder.predict_on_batch(np.zeros((3, IMG_SIZE, IMG_SIZE, 3))))}')
    assert probe["replicas"] == 2
    assert probe["trained"] == "MirroredVariable"
    assert probe["steps"] == 2  # 64 images, 32 per device: one step per epoch
    assert np.isfinite(probe["loss"]).all()
    # Inference runs on one device: a batch of 3 gives 3 rows, not 3 per device.
    assert (probe["inference"], probe["rows"]) != ("MirroredVariable", 6)
    assert probe["rows"] == 3


@pytest.mark.slow
def test_a_training_step_in_mixed_precision_with_xla(tmp_path):
    probe = run_lesson_cells(
        LESSON, tmp_path, last_cell=FIT_CELL,
        parameters={**CNN_INSIDE, "EPOCHS": 1, "MIXED_PRECISION": "mixed_float16", "XLA": True},
        probe='{"optimizer": type(caption_model.optimizer).__name__, '
              '"gru": decoder_gru.compute_dtype, "logits": caption_model.outputs[0].dtype, '
              '"loss": history.history["loss"], "steps": optimizer_steps}')
    assert probe["optimizer"] == "LossScaleOptimizer"
    assert (probe["gru"], probe["logits"]) == ("float16", "float32")
    assert probe["steps"] == 2 and np.isfinite(probe["loss"]).all()


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
