"""Shared fixtures: repository paths, a tiny data slice, and one smoke run of every solution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from captioning_course import data_slice, execution, profiles, runner

REPO = Path(__file__).resolve().parents[1]
# Fixtures that execute notebooks: a test using one is slow, and `make check` leaves it out.
EXECUTING_FIXTURES = {"smoke_run", "rehearsal_run", "outer_jupyter", "tiny_grades", "course_grades",
                      "hostile_grades"}
TINY_SLICE = data_slice.SliceParams(train=24, val=6, test=6, seed=7)


LESSONS = tuple(sorted(p.stem for p in (REPO / "solutions").glob("*.ipynb")))
# Time limits: a test that executes a whole lesson may be the first to ask for it (the
# runner bounds each notebook too); other slow tests start a kernel, a browser or pip.
EXECUTING_LIMIT_S = 45 * 60
SLOW_LIMIT_S = 15 * 60  # pyproject.toml sets the limit of every other test


def lesson_of(item) -> str:
    """The one lesson a test reads the rehearsal of: its `lesson` parameter, its `lesson`
    marker, or the lesson its module is named after (tests/test_LESSON.py)."""
    marker = item.get_closest_marker("lesson")
    named = getattr(getattr(item, "callspec", None), "params", {}).get("lesson") or (
        marker.args[0] if marker else item.module.__name__.removeprefix("test_"))
    if named not in LESSONS:
        raise pytest.UsageError(f"{item.nodeid} reads an executed lesson without saying which: "
                                "parametrize `lesson`, or mark it @pytest.mark.lesson(NAME)")
    return named


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the marks it adds
def pytest_collection_modifyitems(items):
    """Mark the tests that execute notebooks slow, and limit every test's time."""
    for item in items:
        if EXECUTING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.timeout(EXECUTING_LIMIT_S))
        elif item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.timeout(SLOW_LIMIT_S))


def lessons_read(items, fixture: str) -> list[str]:
    """The lessons whose run by `fixture` the selected tests read."""
    return sorted({lesson_of(item) for item in items
                   if fixture in getattr(item, "fixturenames", ())})


@pytest.fixture(scope="session")
def tiny_slice_dir(tmp_path_factory) -> Path:
    """A small slice for the data tests, built once per session."""
    data_dir = tmp_path_factory.mktemp("slice")
    data_slice.prepare(data_dir, TINY_SLICE)
    return data_dir


# The oldest supported Python, in the environment `make test` builds for it (.venv-py3.10).
OLDEST_PYTHON = Path(os.environ.get("COURSE_OLDEST_PYTHON", REPO / ".venv-py3.10/bin/python"))
# Runs solutions with the runner of an environment; writes each one's result as JSON.
RUN_SOLUTIONS = """
import dataclasses, json, sys
from pathlib import Path
from captioning_course import profiles, runner
profile, repo, results_dir, *lessons = sys.argv[1:]
for lesson in lessons:
    [result] = runner.run([Path(repo) / "solutions" / f"{lesson}.ipynb"], profiles.get(profile),
                          Path(repo) / "data", Path(repo) / "build", Path(repo) / "sample_images")
    print(runner.summary_table([result]), flush=True)
    (Path(results_dir) / f"{lesson}.json").write_text(json.dumps(
        {**dataclasses.asdict(result), "notebook": str(result.notebook),
         "executed": str(result.executed)}))
"""


class SolutionRuns(Mapping):
    """The solutions executed under `profile` by `python`'s environment, as `make
    execute-solutions` runs them there: each lesson the first time a test asks for it, or
    ahead of time in the background (`start`), then shared by every test of the session.
    Executed copies and records stay in build/PROFILE/.
    """

    def __init__(self, profile: profiles.Profile, python: Path):
        self.profile, self.python = profile, python
        self.results_dir = REPO / "build" / f"{profile.name}-results"
        self.results: dict[str, runner.Result] = {}
        self.background: tuple[subprocess.Popen, set[str]] | None = None

    def start(self, lessons: list[str], log: Path) -> None:
        """Execute `lessons` in a process of their own while the tests go on."""
        log.parent.mkdir(parents=True, exist_ok=True)
        self.background = (self._runner(lessons, stdout=log.open("w"),
                                        stderr=subprocess.STDOUT), set(lessons))

    def stop(self) -> None:
        """Stop what runs in the background: the session has ended without it."""
        if self.background and self.background[0].poll() is None:
            execution.stop_process_tree(self.background[0])

    def __getitem__(self, lesson: str) -> runner.Result:
        if lesson not in LESSONS:
            raise KeyError(lesson)
        if lesson not in self.results:
            if self.background and lesson in self.background[1]:
                self._wait(self.background[0], lesson)
            else:
                self._wait(self._runner([lesson]), lesson)
            result = json.loads((self.results_dir / f"{lesson}.json").read_text())
            self.results[lesson] = runner.Result(**{
                **result, "notebook": Path(result["notebook"]),
                "executed": Path(result["executed"])})
        return self.results[lesson]

    def __iter__(self):
        return iter(LESSONS)

    def __len__(self) -> int:
        return len(LESSONS)

    def _runner(self, lessons: list[str], **output) -> subprocess.Popen:
        if not self.python.is_file():
            pytest.fail(f"no Python at {self.python}: `make test` builds the environments it runs")
        self.results_dir.mkdir(parents=True, exist_ok=True)
        for lesson in lessons:
            (self.results_dir / f"{lesson}.json").unlink(missing_ok=True)
        return subprocess.Popen([str(self.python), "-c", RUN_SOLUTIONS, self.profile.name,
                                 str(REPO), str(self.results_dir), *lessons], cwd=REPO, **output)

    def _wait(self, process: subprocess.Popen, lesson: str) -> None:
        try:  # a test's time limit stops the notebook's kernel too, not only this child
            process.wait()
        finally:
            if process.returncode is None:
                execution.stop_process_tree(process)
        if not (self.results_dir / f"{lesson}.json").is_file():
            pytest.fail(f"the runner stopped with exit code {process.returncode} "
                        f"before it recorded {lesson} ({self.profile.name})")


@pytest.fixture(scope="session")
def smoke_run() -> SolutionRuns:
    """The course at small scale, on the Python of this environment: it must learn."""
    return SolutionRuns(profiles.SMOKE, Path(sys.executable))


@pytest.fixture(scope="session")
def rehearsal_run(request) -> SolutionRuns:
    """The full profile's sizes and code paths on a few dozen images, on the oldest supported
    Python with its own pins: it must run.

    The lessons the selected tests read start at once, in the background: on two cores they
    run beside the smoke runs and the other tests in about two thirds of the time one after
    the other would take. Their messages go to build/rehearsal-runs.log.
    """
    runs = SolutionRuns(profiles.REHEARSAL, OLDEST_PYTHON)
    lessons = lessons_read(request.session.items, "rehearsal_run")
    if lessons:
        runs.start(lessons, REPO / "build" / "rehearsal-runs.log")
    yield runs
    runs.stop()


@pytest.fixture(scope="session", autouse=True)
def rehearsal_ahead(request) -> None:
    """Starts the rehearsal with the session when any selected test reads it."""
    if lessons_read(request.session.items, "rehearsal_run"):
        request.getfixturevalue("rehearsal_run")


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


PARTIAL_RUN_LIMIT_S = 10 * 60  # a few dozen images, two epochs


class LessonCellsFailed(Exception):
    """A run of `run_lesson_cells` did not end: the message names the cell and its error."""


def run_lesson_cells(notebook: Path, folder: Path, *, last_cell: str, parameters: dict,
                     probe: str, preamble: str = "", replace: tuple[tuple[str, str], ...] = ()
                     ) -> dict:
    """Execute a lesson's code cells, up to the first containing `last_cell`, in a new kernel.

    The smoke profile's values and `parameters` are injected as papermill does. `preamble`
    runs first (before TensorFlow is imported), each (old, new) in `replace` edits the cells'
    source (each old text must occur), and `probe`, a Python expression evaluated last, is
    returned through JSON. Raises LessonCellsFailed when a cell raises, naming it and the
    error, or when the run is stopped.
    """
    import nbformat

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
    executed = folder / f"executed-{notebook.name}"
    outcome = execution.execute(trimmed, executed, values, cwd=notebook.parent,
                                timeout_s=PARTIAL_RUN_LIMIT_S, log=folder / "papermill.log")
    if outcome.status != "ok":
        raise LessonCellsFailed(outcome.reason or (
            f"{outcome.status}: {execution.failing_cell(trimmed, executed)}"))
    return json.loads(result.read_text())


def edited_definitions(notebook: Path, names: tuple[str, ...], namespace: dict,
                       *replace: tuple[str, str]) -> dict:
    """`labs.run_definitions` of `names` from the cells of `notebook` that define them, with
    each (old, new) of `replace` changed once in their source: a mistake made in the lesson's
    own code. Linecache holds the edited source, as IPython holds a cell's: AutoGraph reads it."""
    import linecache
    import re
    import tempfile

    import nbformat

    from captioning_course.labs import run_definitions

    defines = re.compile(rf"^(?:class|def) (?:{'|'.join(names)})\b", re.M)
    source = "\n\n".join(c.source for c in code_cells(notebook) if defines.search(c.source))
    for old, new in replace:
        assert source.count(old) == 1, f"{old!r} is not once in {notebook.name}'s definitions"
        source = source.replace(old, new)
    with tempfile.TemporaryDirectory() as folder:
        edited = Path(folder) / notebook.name
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)]), edited)
        linecache.cache[str(edited)] = (len(source), None, source.splitlines(True), str(edited))
        return run_definitions(edited, names, namespace)
