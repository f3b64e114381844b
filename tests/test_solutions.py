"""Every solution runs headless in the smoke and the rehearsal profiles (each executed once)."""

from __future__ import annotations

import nbformat
import pytest

from captioning_course import profiles
from conftest import LESSONS, REPO, printed_text

# What the rehearsal may change: how many images, and where the bytes come from (a Source: a
# copy of the slice in a real dataset's layout, archives at a file:// URL, a weights file).
# Everything else (dataset, encoder, image size, vocabulary cap, caption length, width, batch,
# CACHE_FEATURES) keeps the full profile's value.
REHEARSAL_MAY_SHRINK = {"TRAIN_SPLIT", "TRAIN_IMAGES", "EVAL_IMAGES"}
GRU_LESSONS = ("image_captioning", "image_captioning_custom_loop", "image_captioning_at_scale")


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_solution_runs_in_the_smoke_profile(smoke_run, lesson):
    assert smoke_run[lesson].status == "ok", smoke_run[lesson].failure


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_solution_runs_in_the_rehearsal(rehearsal_run, lesson):
    assert rehearsal_run[lesson].status == "ok", rehearsal_run[lesson].failure


def test_getting_started_records_the_slice_sizes_and_the_encoder_speed(smoke_run):
    metrics = smoke_run["getting_started"].metrics
    sizes = profiles.SMOKE.data_slice
    assert metrics["images"] == {"train": sizes.train, "val": sizes.val, "test": sizes.test}
    assert metrics["encoder_ms_per_image"] > 0


@pytest.mark.parametrize("lesson", [p.stem for p in (REPO / "solutions").glob("*.ipynb")])
def test_rehearsal_keeps_the_full_sizes_and_code_paths(lesson):
    changed = {name for name, value in profiles.REHEARSAL.overrides_for(lesson).items()
               if name not in REHEARSAL_MAY_SHRINK and not isinstance(value, profiles.Source)}
    assert not changed, f"the rehearsal must not change {changed}"


def injected_parameters(executed) -> str:
    nb = nbformat.read(executed, as_version=4)
    [injected] = [c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    return injected


@pytest.mark.parametrize("lesson", GRU_LESSONS)
def test_rehearsal_decodes_without_xla_where_a_gpu_gru_cannot_be_compiled(rehearsal_run, lesson):
    """The rehearsal's kernels play a GPU: their GRUs refuse XLA, as cuDNN's do."""
    result = rehearsal_run[lesson]
    assert result.status == "ok", result.failure
    assert "Greedy decoding runs without XLA: Keras says XLA cannot compile" in printed_text(
        result.executed)


@pytest.mark.parametrize("lesson", ["getting_started", *GRU_LESSONS])
def test_rehearsal_reads_coco_through_the_registered_coco_captions_builder(rehearsal_run, lesson):
    injected = injected_parameters(rehearsal_run[lesson].executed)
    assert "DATASET" not in injected  # the full course's "coco_captions"
    assert f"DATA_DIR = \"{REPO / 'data' / 'coco'}\"" in injected


@pytest.mark.lesson("image_captioning_transformer")
def test_rehearsal_downloads_and_unpacks_flickr8k_with_the_lessons_code(rehearsal_run):
    result = rehearsal_run["image_captioning_transformer"]
    assert result.status == "ok", result.failure
    printed = printed_text(result.executed)
    for archive in ("Flickr8k_Dataset.zip", "Flickr8k_text.zip"):
        assert f"Downloading data from file://{REPO / 'data' / 'flickr8k_archives'}/{archive}" \
            in printed
    for split, photos in (("train", 64), ("val", 100), ("test", 32)):
        assert f"{split:5}: {photos} photos, " in printed


@pytest.mark.lesson("image_captioning")
def test_rehearsal_runs_the_main_lesson_at_full_scale(rehearsal_run):
    result = rehearsal_run["image_captioning"]
    injected = injected_parameters(result.executed)
    assert "ENCODER_WEIGHTS = " in injected and ".weights.h5" in injected  # loaded from a file
    assert "feature grid 8x8 with 1536 channels" in printed_text(result.executed)
    assert result.metrics["loss"]["first_epoch"] > 0
