"""The grader's sandbox: a hostile class graded beside honest students, each hostile row saying
what was refused or stopped, nothing of the instructor's or the course changed, the honest
grades the same; the refusal without bubblewrap, and `--no-sandbox`."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import socket
from pathlib import Path

import nbformat
import psutil
import pytest

from captioning_course import grade, parameters, sandbox
from captioning_course.sandbox import Limits
from conftest import REPO, one_line_error
from tiny_class import PLAIN, index_of, tiny_solution_and_lab, write_tiny_lessons

LIMITS = Limits(memory_bytes=2**30, processes=64, open_files=256)
TIME_LIMIT_S = 20
SECRET_VARIABLE, SECRET = "COURSE_INSTRUCTOR_TOKEN", "instructor-token-8d41c7"
METADATA_SERVER = "169.254.169.254"  # where a cloud instance hands out its access token


def hostile_cells(home: Path, out: Path, port: int) -> dict[str, str]:
    """Each hostile student's extra cell, by file name, and the refusal its row must note."""
    return {
        "environment": f"import os\nprint(os.environ[{SECRET_VARIABLE!r}])",
        "home": f"print(open({str(home / 'notes.txt')!r}).read())",
        "course": f"open({str(REPO / 'notebooks' / 'planted.ipynb')!r}, 'w').write('{{}}')",
        "neighbour": f"open({str(out / 'outputs' / 'solution' / 'planted.txt')!r}, 'w')",
        "loopback": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)",
        "metadata": f"import socket\nsocket.create_connection(({METADATA_SERVER!r}, 80), "
                    "timeout=5)",
        "processes": "import subprocess\n"
                     "children = [subprocess.Popen(['sleep', '600']) for _ in range(1000)]",
        "memory": f"block = bytearray({2 * LIMITS.memory_bytes})",
        "files": "handles = [open('/dev/null') for _ in range(100_000)]",
        "forever": "while True:\n    pass",
    }


NOTES = {
    "environment": f"environment variable {SECRET_VARIABLE} is not passed while grading",
    "home": "the instructor's files, the class and the grades are hidden while grading",
    "course": "only the file's own output folder can be written while grading",
    "neighbour": "the instructor's files, the class and the grades are hidden while grading",
    "loopback": "network is not available while grading",
    "metadata": "network is not available while grading",
    "processes": f"process limit {LIMITS.processes} reached",
    "memory": "memory limit 1 GB reached",
    "files": f"open-file limit {LIMITS.open_files} reached",
}


def fingerprint(*folders: Path) -> dict[str, str]:
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in folders for path in sorted(folder.rglob("*")) if path.is_file()}


def write_honest_class(lessons: Path, folder: Path) -> None:
    solution, _ = tiny_solution_and_lab(lessons)
    nbformat.write(solution, folder / "solution.ipynb")
    wrong = nbformat.from_dict(solution)
    wrong.cells[index_of(wrong, "return 2 * x")].source = "def double(x):\n    return x + 2"
    nbformat.write(wrong, folder / "wrong.ipynb")


def grades_of(rows: list[grade.Row]) -> dict[str, tuple]:
    return {row.file: (row.grades, row.note) for row in rows}


@pytest.fixture(scope="module")
def hostile_grades(tmp_path_factory):
    lessons = write_tiny_lessons(tmp_path_factory.mktemp("lessons"))
    honest = tmp_path_factory.mktemp("honest")
    write_honest_class(lessons, honest)
    honest_rows = grade.grade(honest, PLAIN, tmp_path_factory.mktemp("honest-grades"), lessons,
                              honest / "data", honest / "images", progress=False, limits=LIMITS)

    folder = tmp_path_factory.mktemp("class")
    write_honest_class(lessons, folder)
    out = tmp_path_factory.mktemp("grades")
    # Outside /tmp, which the sandbox replaces anyway: the home must be hidden by name.
    home = REPO / "build" / "instructor-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "notes.txt").write_text(f"my token is {SECRET}\n")
    listener = socket.create_server(("127.0.0.1", 0))
    solution, _ = tiny_solution_and_lab(lessons)
    cells = hostile_cells(home, out, listener.getsockname()[1])
    for name, source in cells.items():
        hostile = nbformat.from_dict(solution)
        hostile.cells.insert(index_of(hostile, "check.double(") + 1,
                             nbformat.v4.new_code_cell(source))
        nbformat.write(hostile, folder / f"{name}.ipynb")
    guarded = (REPO / "notebooks", REPO / "src", home, folder)
    before = fingerprint(*guarded)
    already_running = set(psutil.Process().children(recursive=True))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.setenv(SECRET_VARIABLE, SECRET)
        rows = grade.grade(folder, PLAIN, out, lessons, out / "data", out / "images",
                           timeout_s=TIME_LIMIT_S, progress=False, limits=LIMITS)
    listener.settimeout(0)
    with contextlib.suppress(BlockingIOError):
        listener.accept()
        pytest.fail("a sandboxed notebook reached a port of the grader's loopback")
    listener.close()
    result = {
        "rows": {row.file: row for row in rows}, "honest": grades_of(honest_rows),
        "changed": before != fingerprint(*guarded), "out": out, "cells": cells,
        "left_running": [p for p in psutil.Process().children(recursive=True)
                         if p not in already_running],
    }
    shutil.rmtree(home)
    yield result


@pytest.mark.parametrize("name", sorted(NOTES))
def test_each_hostile_row_says_what_was_refused(hostile_grades, name):
    row = hostile_grades["rows"][f"{name}.ipynb"]
    assert NOTES[name] in row.note.split("; "), row.note
    assert row.grades[1] == "pass"  # the cells before the hostile one ran as usual


def test_a_never_ending_file_is_stopped(hostile_grades):
    row = hostile_grades["rows"]["forever.ipynb"]
    assert row.grades == {1: "pass", 2: "timeout", 3: "timeout"}
    assert row.note.startswith(f"timed out after {TIME_LIMIT_S} s in cell ")
    assert hostile_grades["left_running"] == []  # the sleeping children went too


def test_nothing_of_the_instructor_or_the_course_is_changed_or_shown(hostile_grades):
    assert not hostile_grades["changed"]
    assert not (REPO / "notebooks" / "planted.ipynb").exists()
    assert not (hostile_grades["out"] / "outputs" / "solution" / "planted.txt").exists()
    for path in hostile_grades["out"].rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert SECRET.encode() not in path.read_bytes(), path


def test_honest_students_get_the_grades_they_get_without_the_hostile_ones(hostile_grades):
    graded = {file: (row.grades, row.note) for file, row in hostile_grades["rows"].items()
              if file in hostile_grades["honest"]}
    assert graded == hostile_grades["honest"]
    assert graded["solution.ipynb"] == ({1: "pass", 2: "pass", 3: "pass"}, "")


def test_without_bubblewrap_grading_refuses_in_one_line_unless_unsandboxed(
        tmp_path, capsys, monkeypatch):
    (tmp_path / "lessons").mkdir()
    lessons = write_tiny_lessons(tmp_path / "lessons")
    folder = tmp_path / "class"
    folder.mkdir()
    write_honest_class(lessons, folder)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    monkeypatch.setattr(parameters, "gpu_visible", lambda: True)
    arguments = [str(folder), "--profile", "full", "--out", str(tmp_path / "out"),
                 "--lessons", str(lessons), "--data-dir", str(tmp_path / "data")]
    assert grade.main(arguments) == 2
    assert "install bubblewrap" in one_line_error(capsys)
    assert not (tmp_path / "out" / grade.CSV_FILE).exists()

    with contextlib.redirect_stdout(io.StringIO()):
        rows = grade.grade(folder, PLAIN, tmp_path / "out", lessons, tmp_path / "data",
                           tmp_path / "images", progress=False, limits=None)
    assert {row.file: row.passed for row in rows} == {"solution.ipynb": "3/3",
                                                      "wrong.ipynb": "2/3"}


def test_a_sandbox_that_cannot_start_is_named(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: "/bin/false")
    with pytest.raises(sandbox.SandboxUnavailable, match="bubblewrap cannot make a sandbox"):
        sandbox.check_available()
