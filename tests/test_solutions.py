"""Every solution runs headless in the smoke profile (each executed once, in `smoke_run`)."""

from __future__ import annotations

from captioning_course import profiles
from conftest import REPO


def test_every_solution_runs(smoke_run):
    assert set(smoke_run) == {p.stem for p in (REPO / "solutions").glob("*.ipynb")}
    failures = {name: r.failure for name, r in smoke_run.items() if r.status != "ok"}
    assert not failures


def test_getting_started_records_the_slice_sizes(smoke_run):
    metrics = smoke_run["getting_started"].metrics
    sizes = profiles.SMOKE.data_slice
    assert metrics == {"images": {"train": sizes.train, "val": sizes.val, "test": sizes.test}}
