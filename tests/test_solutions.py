"""Every solution runs headless in the smoke and the rehearsal profiles (each executed once)."""

from __future__ import annotations

import nbformat
import pytest

from captioning_course import profiles
from conftest import REPO, printed_text

# What the rehearsal may shrink: the data and the time spent on it, and the weights' source.
# Everything else (image size, vocabulary cap, caption length, width, batch, CACHE_FEATURES)
# keeps the full profile's value.
REHEARSAL_MAY_SET = {"DATASET", "TRAIN_SPLIT", "TRAIN_IMAGES", "EVAL_IMAGES", "ENCODER_WEIGHTS"}


@pytest.mark.slow
@pytest.mark.parametrize("run", ["smoke_run", "rehearsal_run"])
def test_every_solution_runs(run, request):
    results = request.getfixturevalue(run)
    assert set(results) == {p.stem for p in (REPO / "solutions").glob("*.ipynb")}
    failures = {name: r.failure for name, r in results.items() if r.status != "ok"}
    assert not failures


def test_getting_started_records_the_slice_sizes_and_the_encoder_speed(smoke_run):
    metrics = smoke_run["getting_started"].metrics
    sizes = profiles.SMOKE.data_slice
    assert metrics["images"] == {"train": sizes.train, "val": sizes.val, "test": sizes.test}
    assert metrics["encoder_ms_per_image"] > 0


@pytest.mark.parametrize("lesson", [p.stem for p in (REPO / "solutions").glob("*.ipynb")])
def test_rehearsal_keeps_the_full_sizes(lesson):
    changed = set(profiles.REHEARSAL.overrides_for(lesson)) - REHEARSAL_MAY_SET
    assert not changed, f"the rehearsal must not shrink {changed}"


def test_rehearsal_runs_the_main_lesson_at_full_scale(rehearsal_run):
    result = rehearsal_run["image_captioning"]
    executed = nbformat.read(result.executed, as_version=4)
    [injected] = [c.source for c in executed.cells
                  if "injected-parameters" in c.metadata.get("tags", [])]
    assert "ENCODER_WEIGHTS = " in injected and ".weights.h5" in injected  # loaded from a file
    assert "feature grid 8x8 with 1536 channels" in printed_text(result.executed)
    assert result.metrics["loss"]["first_epoch"] > 0
