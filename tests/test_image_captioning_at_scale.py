"""The lesson at scale: two replicas, mixed precision, the replicas' loss, XLA where it can
compile, and an export that captions like the notebook, from Python and the command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import (
    REPO,
    assert_beats_the_image_blind_baseline,
    printed_text,
    recorded_metrics,
    run_lesson_cells,
)

LESSON = REPO / "solutions" / "image_captioning_at_scale.ipynb"
EXPORT = REPO / "build" / "smoke" / "image_captioning_at_scale" / "captioner_export"


@pytest.fixture(scope="module")
def metrics(smoke_run):
    return recorded_metrics(smoke_run, "image_captioning_at_scale")


def test_the_exported_captioner_clearly_beats_the_image_blind_baseline(metrics):
    assert_beats_the_image_blind_baseline(metrics)


def test_training_runs_on_two_replicas_with_a_batch_per_replica(metrics):
    assert (metrics["replicas"], metrics["global_batch"]) == (2, 32)
    assert metrics["loss"]["last_epoch"] < metrics["loss"]["first_epoch"]


def test_mixed_precision_computes_in_float16_with_float32_logits_and_loss_scaling(metrics):
    assert metrics["precision"] == {"policy": "mixed_float16", "gru": "float16",
                                    "logits": "float32", "optimizer": "LossScaleOptimizer"}


def test_the_replicas_shares_report_the_loss_that_masked_loss_doubles_on_two(metrics):
    """Keras takes a loss that is already one number as it is and sums it over replicas."""
    loss = metrics["loss"]
    assert loss["masked_loss_initial"] / loss["initial"] == pytest.approx(2, rel=0.1)


def test_no_xla_on_a_cpu_with_auto(metrics):
    assert metrics["xla"]["training"] is False and metrics["xla"]["refusing"] == []


def test_the_export_writes_the_notebook_s_captions(metrics):
    captions = metrics["sample_captions"]
    assert captions["exported"] == captions["notebook"]
    assert all(captions["exported"])


def test_the_caption_command_reloads_the_export_in_a_fresh_process(metrics):
    """`python -m captioning_course.caption` loads the export with tensorflow_hub.load."""
    captions = metrics["sample_captions"]
    photos = [REPO / "sample_images" / name for name in captions["photos"]]
    done = subprocess.run([sys.executable, "-m", "captioning_course.caption", str(EXPORT),
                           *map(str, photos)], capture_output=True, text=True, check=True)
    printed = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert printed == {str(p): c for p, c in zip(photos, captions["exported"], strict=True)}


def test_the_caption_command_names_an_unreadable_photo_and_captions_the_others(metrics,
                                                                               tmp_path):
    captions = metrics["sample_captions"]
    photo = REPO / "sample_images" / captions["photos"][0]
    (tmp_path / "notes.jpg").write_text("not a photo")
    done = subprocess.run([sys.executable, "-m", "captioning_course.caption", str(EXPORT),
                           str(tmp_path / "notes.jpg"), str(photo)], capture_output=True, text=True)
    assert done.returncode == 1
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert "notes.jpg" in error
    assert done.stdout == f"{photo}: {captions['exported'][0]}\n"


def test_the_photo_reader_names_bad_input_in_the_executed_lesson(smoke_run):
    printed = printed_text(smoke_run["image_captioning_at_scale"].executed)
    assert "FileNotFoundError: no image file at" in printed and "no_such_photo.jpg" in printed
    assert "SOURCES.md is not a readable image: unknown format" in printed
    assert "sample_images is a folder, not an image file" in printed


def test_the_rehearsal_plays_a_gpu_whose_gru_xla_cannot_compile(rehearsal_run):
    """With a GPU's GRU, "auto" trains and decodes without XLA instead of failing."""
    metrics = recorded_metrics(rehearsal_run, "image_captioning_at_scale")
    assert metrics["xla"] == {"training": False, "refusing": ["gru"], "decoding": False}
    assert metrics["replicas"] == 1  # DEVICES = None: every GPU, here the one CPU
    assert metrics["precision"]["policy"] == "mixed_float16"


@pytest.mark.slow
def test_a_training_step_in_mixed_precision_with_xla(tmp_path):
    probe = run_lesson_cells(
        LESSON, tmp_path, last_cell="history = caption_model.fit(",
        parameters={"TRAIN_SPLIT": "train[:64]", "EVAL_IMAGES": 8, "EPOCHS": 1, "XLA": True,
                    "DEVICES": None},
        probe='{"xla": caption_model.jit_compile, "loss": history.history["loss"], '
              '"optimizer": type(caption_model.optimizer).__name__, "replicas": replicas}')
    assert probe["xla"] is True and probe["replicas"] == 1
    assert probe["optimizer"] == "LossScaleOptimizer" and np.isfinite(probe["loss"]).all()
