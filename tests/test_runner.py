"""The headless runner on throwaway notebooks: failures, parameters, records, time limits."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from captioning_course import record, runner
from captioning_course.kernel import KERNELSPEC
from captioning_course.profiles import Profile

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


def run_one(notebook: Path, build: Path, profile: Profile = PLAIN) -> runner.Result:
    [result] = runner.run([notebook], profile, build / "data", build, build / "images")
    return result


PARAMETERS = 'OUTPUT_DIR = "outputs"\nSCALE = 2'


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


def test_main_exits_non_zero_and_names_the_failure(tmp_path, monkeypatch, capsys):
    notebook = write_notebook(tmp_path, "broken", PARAMETERS, "1 / 0")
    monkeypatch.chdir(tmp_path)
    assert runner.main(["--profile", "full", str(notebook)]) == 1
    out = capsys.readouterr().out
    assert "broken.ipynb | failed" in out
    assert "ZeroDivisionError" in out and "executed copy kept at" in out


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
    with pytest.raises(runner.UnknownParameterError, match="SCLAE.*plain.ipynb"):
        run_one(notebook, tmp_path / "build", profile)
    assert not (tmp_path / "build" / "typo").exists()


def test_notebook_without_parameters_cell_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(nb, tmp_path / "untagged.ipynb")
    with pytest.raises(runner.UnknownParameterError, match="no cell tagged 'parameters'"):
        run_one(tmp_path / "untagged.ipynb", tmp_path / "build")


def test_missing_notebook_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.ipynb"):
        run_one(tmp_path / "nowhere.ipynb", tmp_path / "build")


def test_notebook_over_its_time_limit_is_stopped(tmp_path):
    notebook = write_notebook(tmp_path, "slow", PARAMETERS, "import time\ntime.sleep(600)")
    profile = Profile(name="hurried", description="", timeout_s=20, data_slice=None,
                      overrides={})
    result = run_one(notebook, tmp_path / "build", profile)
    assert result.status == "timeout"
    assert result.failure.startswith("timed out after 20 s")
    assert result.seconds < 120
