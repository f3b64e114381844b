"""Shared fixtures: repository paths, a tiny data slice, and one smoke run of every solution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from captioning_course import data_slice, profiles, runner

REPO = Path(__file__).resolve().parents[1]
# Fixtures that execute notebooks: a test using one is slow, and `make check` leaves it out.
EXECUTING_FIXTURES = {"smoke_run", "rehearsal_run", "outer_jupyter", "tiny_grades", "course_grades"}
TINY_SLICE = data_slice.SliceParams(train=24, val=6, test=6, seed=7)


def pytest_collection_modifyitems(items):
    for item in items:
        if EXECUTING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_slice_dir(tmp_path_factory) -> Path:
    """A small slice for the data tests, built once per session."""
    data_dir = tmp_path_factory.mktemp("slice")
    data_slice.prepare(data_dir, TINY_SLICE)
    return data_dir


# The oldest supported Python, in the environment `make test` builds for it (.venv-py3.10).
OLDEST_PYTHON = Path(os.environ.get("COURSE_OLDEST_PYTHON", REPO / ".venv-py3.10/bin/python"))
# Runs every solution with the runner of an environment; writes the results as JSON.
RUN_EVERY_SOLUTION = """
import dataclasses, json, sys
from pathlib import Path
from captioning_course import profiles, runner
profile, repo, results_file = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
results = runner.run(sorted((repo / "solutions").glob("*.ipynb")), profiles.get(profile),
                     repo / "data", repo / "build", repo / "sample_images")
print(runner.summary_table(results))
results_file.write_text(json.dumps([{**dataclasses.asdict(r), "notebook": str(r.notebook),
                                     "executed": str(r.executed)} for r in results]))
"""


def run_every_solution(profile: profiles.Profile, python: Path) -> dict[str, runner.Result]:
    """Every solution executed once under `profile` by `python`'s environment, as
    `make execute-solutions` does there.

    Executed copies and records stay in build/PROFILE/ for inspection after the tests.
    """
    if not python.is_file():
        pytest.fail(f"no Python at {python}: `make test` builds the environments it runs")
    results_file = REPO / "build" / f"{profile.name}-results.json"
    results_file.unlink(missing_ok=True)
    subprocess.run([str(python), "-c", RUN_EVERY_SOLUTION, profile.name, str(REPO),
                    str(results_file)], cwd=REPO, check=True)
    results = [runner.Result(**{**r, "notebook": Path(r["notebook"]),
                                "executed": Path(r["executed"])})
               for r in json.loads(results_file.read_text())]
    return {result.notebook.stem: result for result in results}


@pytest.fixture(scope="session")
def smoke_run() -> dict[str, runner.Result]:
    """The course at small scale, on the Python of this environment: it must learn."""
    return run_every_solution(profiles.SMOKE, Path(sys.executable))


@pytest.fixture(scope="session")
def rehearsal_run() -> dict[str, runner.Result]:
    """The full profile's sizes and code paths on a few dozen images, on the oldest supported
    Python with its own pins: it must run."""
    return run_every_solution(profiles.REHEARSAL, OLDEST_PYTHON)


def recorded_metrics(run: dict[str, runner.Result], lesson: str) -> dict:
    """What `lesson` recorded in a run of every solution, once it ran to its end."""
    result = run[lesson]
    assert result.status == "ok", result.failure
    return result.metrics


def assert_beats_the_image_blind_baseline(metrics: dict) -> None:
    """The course's bar for a captioner on the smoke data: 3 times the baseline's CIDEr and
    a higher BLEU-4."""
    model, baseline = metrics["model"], metrics["baseline"]
    assert model["CIDEr"] >= 3 * baseline["CIDEr"], (model, baseline)
    assert model["BLEU-4"] > baseline["BLEU-4"], (model, baseline)


def assert_every_sample_photo_captioned(metrics: dict) -> None:
    """One greedy and three sampled captions for each photo of sample_images/."""
    photos = {p.name for p in (REPO / "sample_images").iterdir() if p.suffix != ".md"}
    assert set(metrics["sample_captions"]) == photos
    for captions in metrics["sample_captions"].values():
        assert captions["greedy"] and len(captions["sampled"]) == 3


def install_kernel(data_dir: Path) -> str:
    """`make install`'s kernel registration, with `data_dir` as the user's Jupyter data dir."""
    out = subprocess.run([sys.executable, "-m", "captioning_course.kernel"], check=True,
                         capture_output=True, text=True, env={**os.environ,
                                                              "JUPYTER_DATA_DIR": str(data_dir)})
    return out.stdout


def one_line_error(capsys) -> str:
    """What a command-line tool printed on stderr, asserted to be one `error: ...` line."""
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


def printed_text(executed: Path) -> str:
    """Everything an executed notebook's code cells printed."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    return "".join(output.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []))


def code_cells(notebook: Path) -> list:
    import nbformat

    return [c for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]


def notebook_definitions(notebook: Path, *names: str) -> dict:
    """Run a notebook's setup and parameters cells and the cells defining `names`.

    Returns the namespace.
    """
    from captioning_course.labs import run_definitions

    cells = code_cells(notebook)
    namespace: dict = {}
    [parameters] = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    for cell in cells[:parameters + 1]:  # setup and parameters
        exec(compile(cell.source, str(notebook), "exec"), namespace)  # noqa: S102
    run_definitions(notebook, names, namespace)
    missing = [name for name in names if name not in namespace]
    assert not missing, f"{notebook.name} defines no {missing}"
    return namespace


class LessonCellsFailed(Exception):
    """A cell of `run_lesson_cells` raised; the message is papermill's."""


def run_lesson_cells(notebook: Path, folder: Path, *, last_cell: str, parameters: dict,
                     probe: str, preamble: str = "", replace: tuple[tuple[str, str], ...] = ()
                     ) -> dict:
    """Execute a lesson's code cells, up to the first containing `last_cell`, in a new kernel.

    The smoke profile's values and `parameters` are injected as papermill does. `preamble`
    runs first (before TensorFlow is imported), each (old, new) in `replace` edits the cells'
    source (each old text must occur), and `probe`, a Python expression evaluated last, is
    returned through JSON. Raises LessonCellsFailed when a cell raises.
    """
    import json

    import nbformat
    import papermill

    from captioning_course.kernel import KERNEL_NAME

    source = nbformat.read(notebook, as_version=4)
    [end] = [i for i, c in enumerate(source.cells) if last_cell in c.source][:1]
    cells = [c for c in source.cells[:end + 1] if c.cell_type == "code"]
    for old, new in replace:
        assert any(old in c.source for c in cells), f"no cell of {notebook.name} has {old!r}"
        for cell in cells:
            cell.source = cell.source.replace(old, new)
    result = folder / "probe.json"
    cells.append(nbformat.v4.new_code_cell(
        f"import json as _json\nopen({str(result)!r}, 'w').write(_json.dumps({probe}))"))
    if preamble:
        cells.insert(0, nbformat.v4.new_code_cell(preamble))
    source.cells = cells
    trimmed = folder / notebook.name
    nbformat.write(source, trimmed)

    runner.prepare_data(profiles.SMOKE, [notebook.stem], REPO / "data")
    values = runner.notebook_parameters(
        notebook, profiles.SMOKE, REPO / "data", folder / "outputs", REPO / "sample_images",
        parameters, feature_cache_dir=REPO / "build" / "feature_cache")
    try:
        papermill.execute_notebook(trimmed, folder / f"executed-{notebook.name}",
                                   parameters=values, kernel_name=KERNEL_NAME,
                                   cwd=str(notebook.parent), progress_bar=False)
    except papermill.PapermillExecutionError as error:
        raise LessonCellsFailed(str(error)) from None
    return json.loads(result.read_text())
