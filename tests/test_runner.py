"""The headless runner on throwaway notebooks: failures, parameters, records, time limits,
set-up errors and Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from papermill.cli import _resolve_type as papermill_type

from captioning_course import execution, parameters, record, runner
from captioning_course.kernel import KERNELSPEC
from captioning_course.profiles import Profile
from captioning_course.weights import RandomWeights
from conftest import one_line_error

PLAIN = Profile(name="plain", description="no overrides", timeout_s=300, data_slice=None,
                overrides={})


def write_notebook(folder: Path, name: str, *cells: str) -> Path:
    """A notebook whose first cell is the tagged parameters cell."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(cells[0], metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in cells[1:]]
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(autouse=True)
def gpu_present(monkeypatch):
    """The full profile's GPU check starts TensorFlow; these tests are about other things."""
    monkeypatch.setattr(parameters, "gpu_visible", lambda: True)


def run_one(notebook: Path, build: Path, profile: Profile = PLAIN) -> runner.Result:
    [result] = runner.run([notebook], profile, build / "data", build, build / "images")
    return result


PARAMETERS = 'OUTPUT_DIR = "outputs"\nSCALE = 2'


@pytest.mark.slow
def test_raising_notebook_fails_and_keeps_its_executed_copy(tmp_path):
    notebook = write_notebook(tmp_path, "broken", PARAMETERS, "x = 1",
                              "raise ValueError('the answer is wrong')", "y = 2")
    stale = tmp_path / "build" / "plain" / "broken" / record.METRICS_FILE
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"from": "an earlier run"}))
    source = notebook.read_bytes()

    result = run_one(notebook, tmp_path / "build")

    assert result.status == "failed"
    assert "ValueError: the answer is wrong" in result.failure
    assert "raise ValueError" in result.failure  # names the failing cell by its source
    assert result.metrics is None  # the earlier run's record is not passed off as this one's
    executed = nbformat.read(result.executed, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert [e.ename for e in errors] == ["ValueError"]
    assert notebook.read_bytes() == source  # the source is never written


@pytest.mark.slow
def test_main_exits_non_zero_and_names_the_failure(tmp_path, monkeypatch, capsys):
    notebook = write_notebook(tmp_path, "broken", PARAMETERS, "1 / 0")
    monkeypatch.chdir(tmp_path)
    assert runner.main(["--profile", "full", str(notebook)]) == 1
    out = capsys.readouterr().out
    assert "broken.ipynb | failed" in out
    assert "ZeroDivisionError" in out and "executed copy kept at" in out


@pytest.mark.slow
def test_records_metrics_and_runs_in_the_notebook_folder(tmp_path):
    (tmp_path / "here.txt").write_text("found")
    notebook = write_notebook(
        tmp_path, "good", PARAMETERS,
        "from pathlib import Path\n"
        "from captioning_course.record import save_metrics\n"
        "save_metrics(OUTPUT_DIR, {'scale': SCALE, 'cwd_ok': Path('here.txt').read_text()})",
    )
    result = run_one(notebook, tmp_path / "build")
    assert result.status == "ok", result.failure
    assert result.metrics == {"scale": 2, "cwd_ok": "found"}
    assert result.executed == tmp_path / "build" / "plain" / "good" / "good.ipynb"
    assert "scale=2" in runner.summary_table([result])


@pytest.mark.slow
def test_profile_overrides_are_injected(tmp_path):
    notebook = write_notebook(
        tmp_path, "scaled", PARAMETERS,
        "from captioning_course.record import save_metrics\n"
        "save_metrics(OUTPUT_DIR, {'scale': SCALE})",
    )
    profile = Profile(name="big", description="", timeout_s=300, data_slice=None,
                      overrides={"*": {"SCALE": 5}})
    assert run_one(notebook, tmp_path / "build", profile).metrics == {"scale": 5}


def test_unknown_parameter_is_refused_before_running(tmp_path):
    notebook = write_notebook(tmp_path, "plain", PARAMETERS)
    profile = Profile(name="typo", description="", timeout_s=300, data_slice=None,
                      overrides={"plain": {"SCLAE": 3}})
    with pytest.raises(parameters.UnknownParameterError, match="SCLAE.*plain.ipynb"):
        run_one(notebook, tmp_path / "build", profile)
    assert not (tmp_path / "build" / "typo").exists()


def test_notebook_without_parameters_cell_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(nb, tmp_path / "untagged.ipynb")
    with pytest.raises(runner.RunnerError, match="no cell tagged 'parameters'"):
        run_one(tmp_path / "untagged.ipynb", tmp_path / "build")


def test_missing_notebook_is_named(tmp_path):
    with pytest.raises(runner.RunnerError, match="nowhere.ipynb"):
        run_one(tmp_path / "nowhere.ipynb", tmp_path / "build")


@pytest.mark.slow
def test_notebook_over_its_time_limit_is_stopped(tmp_path):
    notebook = write_notebook(tmp_path, "slow", PARAMETERS, "import time\ntime.sleep(600)")
    profile = Profile(name="hurried", description="", timeout_s=20, data_slice=None,
                      overrides={})
    result = run_one(notebook, tmp_path / "build", profile)
    assert result.status == "timeout"
    assert result.failure.startswith("timed out after 20 s")
    assert result.seconds < 120


@pytest.mark.slow
def test_failing_cell_is_named_by_its_index_in_the_source(tmp_path):
    # The executed copy has an injected-parameters cell and papermill's error markers.
    notebook = write_notebook(tmp_path, "late", PARAMETERS, "x = 1",
                              "\nvalues = [1, 2]\nvalues[SCALE]", "y = 2")
    result = run_one(notebook, tmp_path / "build")
    assert result.failure == "cell 2 ('values = [1, 2]') raised IndexError: list index out of range"


@pytest.mark.slow
def test_command_line_parameters_are_typed_like_papermills(tmp_path, monkeypatch):
    notebook = write_notebook(
        tmp_path, "typed", 'OUTPUT_DIR = "outputs"\nSCALE = 2\nRATE = 0.1\nNAME = "x"\nFLAG = True',
        "from captioning_course.record import save_metrics\n"
        "save_metrics(OUTPUT_DIR, {k: [type(v).__name__, v] for k, v in "
        "dict(SCALE=SCALE, RATE=RATE, NAME=NAME, FLAG=FLAG).items()})",
    )
    monkeypatch.chdir(tmp_path)
    assert runner.main(["--profile", "full", "--timeout", "300", "-p", "SCALE", "7",
                        "-p", "RATE", "1.5", "-p", "NAME", "abc", "-p", "FLAG", "False",
                        str(notebook)]) == 0
    assert record.load_metrics(tmp_path / "build" / "full" / "typed") == {
        "SCALE": ["int", 7], "RATE": ["float", 1.5], "NAME": ["str", "abc"],
        "FLAG": ["bool", False]}


@pytest.mark.parametrize("text", ["7", "-2", "1.5", "1e3", "True", "False", "None", "true",
                                  "abc", ""])
def test_parameter_value_follows_papermill(text):
    value = parameters.parameter_value(text)
    assert (type(value), value) == (type(papermill_type(text)), papermill_type(text))


@pytest.mark.slow
def test_command_line_parameters_go_over_the_profile(tmp_path):
    notebook = write_notebook(tmp_path, "scaled", PARAMETERS)
    profile = Profile(name="big", description="", timeout_s=300, data_slice=None,
                      overrides={"*": {"SCALE": 5}})
    parameters = runner.notebook_parameters(notebook, profile, tmp_path, tmp_path / "out",
                                            tmp_path, extra_parameters={"SCALE": 7})
    assert parameters == {"SCALE": 7, "OUTPUT_DIR": str((tmp_path / "out").resolve())}


@pytest.fixture
def no_kernel(monkeypatch):
    """Fail the test if the runner gets as far as starting papermill."""
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel was started")
    monkeypatch.setattr(execution, "execute", refuse)


@pytest.mark.parametrize("name, message", [
    ("SCLAE", "-p sets SCLAE but .*declares no such parameter .*it declares OUTPUT_DIR, SCALE"),
    ("OUTPUT_DIR", "-p cannot set OUTPUT_DIR; use --build-dir"),
])
def test_unknown_command_line_parameter_is_refused(tmp_path, capsys, no_kernel, name, message):
    notebook = write_notebook(tmp_path, "plain", PARAMETERS)
    build = tmp_path / "build"
    assert runner.main(["--profile", "full", "--build-dir", str(build), "-p", name, "3",
                        str(notebook)]) == 2
    assert re.search(message, one_line_error(capsys))
    assert not build.exists()


def test_main_gives_sigterm_back_as_it_found_it(tmp_path, capsys, no_kernel):
    notebook = write_notebook(tmp_path, "plain", PARAMETERS)
    before = signal.getsignal(signal.SIGTERM)
    assert runner.main(["--profile", "full", "--build-dir", str(tmp_path / "build"),
                        "-p", "SCLAE", "3", str(notebook)]) == 2
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_damaged_record_is_named_in_its_row_and_the_other_rows_stay(tmp_path, monkeypatch):
    damaged, good = (write_notebook(tmp_path, name, PARAMETERS) for name in ("damaged", "good"))

    def execute(notebook, executed, parameters, **options):
        shutil.copy(notebook, executed)
        # The first lesson's kernel died while writing its record, say.
        text = '{"scale": ' if notebook == damaged else json.dumps({"scale": 2})
        (Path(parameters["OUTPUT_DIR"]) / record.METRICS_FILE).write_text(text)
        return execution.Outcome("ok")

    monkeypatch.setattr(execution, "execute", execute)
    results = runner.run([damaged, good], PLAIN, tmp_path / "data", tmp_path / "build",
                         tmp_path / "images")
    assert [(r.status, r.metrics) for r in results] == [("ok", None), ("ok", {"scale": 2})]
    assert results[0].metrics_damage.startswith("metrics.json is damaged: Expecting value")
    table = runner.summary_table(results)
    assert re.search(r"damaged.ipynb \| ok .*\| metrics.json is damaged: ", table)
    assert re.search(r"good.ipynb +\| ok .*\| scale=2", table)


@pytest.mark.parametrize("regular_file, build", [
    ("file.txt", "file.txt/build"),  # the build dir under a regular file
    ("build/full/plain", "build"),  # a regular file where the output folder goes
])
def test_output_folder_that_cannot_be_created_is_refused(tmp_path, capsys, no_kernel,
                                                         regular_file, build):
    notebook = write_notebook(tmp_path, "plain", PARAMETERS)
    (tmp_path / regular_file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / regular_file).write_text("not a folder")
    assert runner.main(["--profile", "full", "--build-dir", str(tmp_path / build),
                        str(notebook)]) == 2
    error = one_line_error(capsys)
    assert f"cannot write in folder {tmp_path / build / 'full' / 'plain'}" in error


def test_output_folder_that_cannot_be_written_is_refused(tmp_path, capsys, monkeypatch,
                                                         no_kernel):
    # Tests run as root, who writes through chmod, so the OS's refusal is simulated.
    notebook = write_notebook(tmp_path, "plain", PARAMETERS)
    output = tmp_path / "build" / "full" / "plain"
    real = tempfile.TemporaryFile

    def refuse_in_output(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == output:
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse_in_output)
    assert runner.main(["--profile", "full", "--build-dir", str(tmp_path / "build"),
                        str(notebook)]) == 2
    assert f"folder {output}: Permission denied" in one_line_error(capsys)


def test_notebook_without_kernelspec_is_refused(tmp_path, capsys, no_kernel):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]})])
    nbformat.write(nb, tmp_path / "kernelless.ipynb")
    assert runner.main(["--profile", "full", str(tmp_path / "kernelless.ipynb")]) == 2
    error = one_line_error(capsys)
    assert "kernelless.ipynb" in error
    assert "'Python (captioning course)'" in error and "make labs" in error


def cells_leaving_children(tag: int) -> tuple[str, str, str]:
    """A marker and two cells that start a `sleep` for that long and leave it running.

    One child stays in the kernel's process group; the other, from `!`, gets a session of
    its own. The marker is unique to this test process and `tag`.
    """
    marker = f"98765{tag}.{os.getpid()}"
    return marker, f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'])", f"!sleep {marker}"


@contextlib.contextmanager
def descendants_seen():
    """Every process that runs under this test process while the block runs: cmdline by process."""
    seen: dict[psutil.Process, str] = {}
    done = threading.Event()

    def watch():
        while not done.wait(0.1):
            # A process that ends mid-walk must not end the watching: skip it, look again.
            with contextlib.suppress(psutil.Error):
                for proc in psutil.Process().children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        seen[proc] = " ".join(proc.cmdline())  # the latest, after any exec

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()


def still_running(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    return False


def assert_nothing_left(seen: dict[psutil.Process, str], marker: str) -> None:
    assert sum(marker in cmdline for cmdline in seen.values()) >= 2, "the cells never ran"
    assert any("ipykernel_launcher" in cmdline for cmdline in seen.values()), list(seen.values())
    assert [cmdline for proc, cmdline in seen.items() if still_running(proc)] == []
    # Also those that left the tree: a child whose parent died belongs to init.
    anywhere = [proc.info["cmdline"] for proc in psutil.process_iter(["cmdline"])
                if marker in " ".join(proc.info["cmdline"] or []) and still_running(proc)]
    assert anywhere == []


@pytest.mark.slow
def test_time_limit_stops_the_kernel_and_everything_it_started(tmp_path, monkeypatch, capsys):
    marker, *cells = cells_leaving_children(1)
    notebook = write_notebook(tmp_path, "stuck", PARAMETERS, *cells)
    monkeypatch.chdir(tmp_path)
    with descendants_seen() as seen:
        # The full profile allows 12 h; --timeout cuts it to 20 s.
        assert runner.main(["--profile", "full", "--timeout", "20", str(notebook)]) == 1
    out = capsys.readouterr().out
    assert f"timed out after 20 s; cell 2 ('!sleep {marker}') was still running" in out
    assert_nothing_left(seen, marker)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_everything_and_prints_what_ran(tmp_path, stop):
    marker, *cells = cells_leaving_children(2 + stop)
    quick = write_notebook(tmp_path, "quick", PARAMETERS, "x = 1")
    stuck = write_notebook(tmp_path, "stuck", PARAMETERS, *cells)
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr, descendants_seen() as seen:
        process = subprocess.Popen(
            [sys.executable, "-m", "captioning_course.runner", "--profile", "full",
             str(quick), str(stuck)],
            cwd=tmp_path, stdout=stdout, stderr=stderr, start_new_session=True,
            # A shell may start the tests with Ctrl-C ignored; the runner would inherit that.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 120
            while sum(marker in c for c in list(seen.values())) < 2:
                assert time.monotonic() < deadline, "the stuck cell never started"
                time.sleep(0.2)
            os.kill(process.pid, stop)
            assert process.wait(timeout=60) == 130
        finally:
            if process.returncode is None:
                execution.stop_process_tree(process)
    printed = out.read_text()
    assert "quick.ipynb | ok" in printed and "stuck.ipynb | interrupted" in printed
    assert f"interrupted; cell 2 ('!sleep {marker}') was still running" in printed
    assert "Traceback" not in err.read_text()
    assert_nothing_left(seen, marker)


@pytest.mark.slow
def test_full_profile_without_a_gpu_warns_before_running(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(parameters, "gpu_visible", lambda: False)
    notebook = write_notebook(tmp_path, "plain", PARAMETERS)
    assert runner.main(["--profile", "full", "--build-dir", str(tmp_path / "build"),
                        str(notebook)]) == 0
    assert "warning: TensorFlow sees no GPU here" in capsys.readouterr().err


@pytest.mark.slow
def test_weights_file_is_made_once_and_its_path_injected(tmp_path):
    notebook = write_notebook(
        tmp_path, "weighted", 'OUTPUT_DIR = "outputs"\nENCODER_WEIGHTS = "imagenet"',
        "from pathlib import Path\n"
        "from captioning_course.record import save_metrics\n"
        "save_metrics(OUTPUT_DIR, {'weights': ENCODER_WEIGHTS, "
        "'exists': Path(ENCODER_WEIGHTS).is_file()})",
    )
    weights = RandomWeights("MobileNetV3Small")
    profile = Profile(name="offline", description="", timeout_s=300, data_slice=None,
                      overrides={"*": {"ENCODER_WEIGHTS": weights}})
    result = run_one(notebook, tmp_path / "build", profile)
    path = weights.path(tmp_path / "build" / "data")
    assert result.metrics == {"weights": str(path.resolve()), "exists": True}
    made = path.stat().st_mtime_ns
    run_one(notebook, tmp_path / "build", profile)
    assert path.stat().st_mtime_ns == made  # reused, not written again
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left


@pytest.mark.slow
def test_nbval_lets_a_cell_run_past_the_suites_per_test_limit(tmp_path: Path) -> None:
    # A project like this one, whose pytest settings give each test 2 s: nbval collects every
    # cell as a test, so that limit would stop the full course's long cells.
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\ntimeout = 2\n")
    folder = tmp_path / "prepared"
    folder.mkdir()
    write_notebook(folder, "slow_cell", "SECONDS = 4", "import time\ntime.sleep(SECONDS)")

    under_suite_limit = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", str(folder)],
        capture_output=True, text=True, timeout=120)
    assert under_suite_limit.returncode != 0, under_suite_limit.stdout[-2000:]
    assert runner.nbval(folder, limit_s=60) == 0
