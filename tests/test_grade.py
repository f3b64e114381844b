"""The grader: each exercise's grade, rows for files that cannot be graded, refusals, the
smoke run's executed solution graded, and a small class of the real lesson graded end to end
(untouched lab, one wrong answer, a broken file). The sandbox's class is `test_sandbox`'s."""

from __future__ import annotations

import contextlib
import csv
import io
import re
from pathlib import Path

import nbformat
import psutil
import pytest

from captioning_course import execution, grade, labs, parameters, submissions
from conftest import REPO, one_line_error
from tiny_class import (
    INTRO,
    PLAIN,
    TINY,
    index_of,
    notebook,
    tiny_solution_and_lab,
    without,
    write_tiny_lessons,
)

LIMIT = 20  # seconds for the never-ending file; the others end in a few seconds


@pytest.fixture(scope="module")
def tiny_lessons(tmp_path_factory) -> Path:
    return write_tiny_lessons(tmp_path_factory.mktemp("lessons"))


@pytest.fixture(scope="module")
def course_lessons() -> dict[str, submissions.Lesson]:
    return submissions.load_lessons(REPO / "notebooks")


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


TWO_IN_ONE_CELL = [
    ('OUTPUT_DIR = "outputs"', ["parameters"]),
    ("def layer(x):\n"
     "    ### BEGIN SOLUTION Exercise 1: the score\n"
     "    score = 2 * x\n"
     "    ### END SOLUTION\n"
     "    ### BEGIN SOLUTION Exercise 2: the context\n"
     "    context = score + 1\n"
     "    ### END SOLUTION\n"
     "    return context", []),
    ("check.layer(layer)", []),
]


def executed_check_cell(printed: str, error: tuple[str, str] | None) -> nbformat.NotebookNode:
    outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)] if printed else []
    if error:
        outputs.append(nbformat.v4.new_output("error", ename=error[0], evalue=error[1],
                                              traceback=[]))
    return nbformat.v4.new_code_cell("check.layer(layer)", outputs=outputs, execution_count=3)


@pytest.mark.parametrize("printed, error, grades", [
    ("PASS Exercise 1 (score): ok\nPASS Exercise 2 (context): ok\n", None,
     {1: "pass", 2: "pass"}),
    ("PASS Exercise 1 (score): ok\n", ("SelfCheckFailed", "Exercise 2 (context): not summed"),
     {1: "pass", 2: "fail: not summed"}),
    ("", ("SelfCheckFailed", "Exercise 1 (score): no tanh"),
     {1: "fail: no tanh", 2: "not reached: Exercise 1 failed first"}),
])
def test_exercises_in_one_cell_share_its_self_check_and_get_their_own_grades(
        tmp_path, printed, error, grades):
    nbformat.write(notebook(TWO_IN_ONE_CELL), tmp_path / "two.ipynb")
    lesson = submissions.load_lesson(tmp_path / "two.ipynb")
    assert [(e.number, e.check, e.occurrence) for e in lesson.exercises] == [
        (1, "layer", 0), (2, "layer", 0)]
    executed = notebook(TWO_IN_ONE_CELL)
    executed.cells[2] = executed_check_cell(printed, error)
    assert grade.grade_executed(lesson, executed, "ok", "", {("layer", 0): 2}) == grades


# Refusals (no kernel) ------------------------------------------------------------------------

@pytest.fixture
def no_kernel(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel was started")
    monkeypatch.setattr(execution, "execute", refuse)
    monkeypatch.setattr(parameters, "gpu_visible", lambda: True)


@pytest.mark.parametrize("setup, message", [
    ("missing", "no such folder: .*nowhere"),
    ("empty", r"no notebooks \(\*\.ipynb\) in"),
    ("checkpoints only", r"no notebooks \(\*\.ipynb\) in"),
    ("unknown parameter", "-p sets SCLAE but lesson tiny declares no such parameter"),
    ("no lessons", "no lesson notebooks in"),
])
def test_grader_misuse_is_refused_in_one_line(tmp_path, capsys, no_kernel, tiny_lessons,
                                               setup, message):
    folder = tmp_path / ("nowhere" if setup == "missing" else "submissions")
    lessons = tmp_path / "no_lessons" if setup == "no lessons" else tiny_lessons
    extra = ["-p", "SCLAE", "3"] if setup == "unknown parameter" else []
    if setup != "missing":
        folder.mkdir()
    if setup == "checkpoints only":
        (folder / ".ipynb_checkpoints").mkdir()
        nbformat.write(notebook(TINY), folder / ".ipynb_checkpoints" / "a-checkpoint.ipynb")
    if setup in ("unknown parameter", "no lessons"):
        nbformat.write(tiny_solution_and_lab(tiny_lessons)[0], folder / "a.ipynb")
    out = tmp_path / "out"
    assert grade.main([str(folder), "--profile", "full", "--out", str(out),
                       "--lessons", str(lessons), *extra]) == 2
    assert re.search(message, one_line_error(capsys))
    assert not (out / grade.CSV_FILE).exists()


def test_a_failure_of_the_grader_itself_is_not_a_student_s_and_exits_non_zero(
        tmp_path, capsys, no_kernel, tiny_lessons, monkeypatch):
    folder = tmp_path / "class"
    folder.mkdir()
    solution, lab = tiny_solution_and_lab(tiny_lessons)
    nbformat.write(solution, folder / "a.ipynb")
    nbformat.write(lab, folder / "b.ipynb")

    def crash_on_a(planned, *args):
        if planned.row.file == "a.ipynb":
            raise RuntimeError("a bug in the grader")
    monkeypatch.setattr(grade, "_run_one", crash_on_a)
    out = tmp_path / "out"
    assert grade.main([str(folder), "--profile", "full", "--out", str(out),
                       "--lessons", str(tiny_lessons), "--data-dir", str(tmp_path / "data")]) == 1
    assert "the grader itself failed on a.ipynb" in one_line_error(capsys)
    rows = read_csv(out / grade.CSV_FILE)
    assert rows["a.ipynb"]["note"] == "grader error: RuntimeError: a bug in the grader"
    assert rows["b.ipynb"]["note"] == ""  # the others are graded all the same


# Grading the tiny lesson: every kind of row ---------------------------------------------------

@pytest.fixture(scope="module")
def tiny_grades(tiny_lessons, tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    solution, lab = tiny_solution_and_lab(tiny_lessons)
    nbformat.write(solution, folder / "solution.ipynb")
    nbformat.write(lab, folder / "lab.ipynb")
    wrong = nbformat.from_dict(solution)
    wrong.cells[index_of(wrong, "return 2 * x")].source = "def double(x):\n    return x + 2"
    (folder / "wrong").mkdir()
    nbformat.write(wrong, folder / "wrong" / "alice.ipynb")  # named by the student
    nbformat.write(without(solution, "check.square("), folder / "deleted.ipynb")
    crash = nbformat.from_dict(solution)
    crash.cells[index_of(crash, "return 2 * x")].source = "def double(x)\n    return 2 * x"
    crash.cells[index_of(crash, "return x * x")].source = "def square(x):\n    return x / 0"
    nbformat.write(crash, folder / "crash.ipynb")
    forever = nbformat.from_dict(solution)
    forever.cells.insert(index_of(forever, "check.double(") + 1,
                         nbformat.v4.new_code_cell("while True:\n    pass"))
    # A PASS left from the student's session must not count: the check never ran here.
    forever.cells[index_of(forever, "check.square(")].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="PASS Exercise 2 (square)\n")]
    nbformat.write(forever, folder / "forever.ipynb")
    untagged = nbformat.from_dict(solution)
    untagged.cells[0].metadata = {}
    nbformat.write(untagged, folder / "untagged.ipynb")
    (folder / "broken.ipynb").write_bytes(b"\x00\x01 not a notebook \xff")
    nbformat.write(notebook(INTRO), folder / "intro_copy.ipynb")
    nbformat.write(notebook([("import this", [])]), folder / "other.ipynb")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "lab-checkpoint.ipynb").write_bytes(b"skipped")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    # Processes of this session's own, such as the rehearsal running in the background.
    already_running = set(psutil.Process().children(recursive=True))
    out = tmp_path_factory.mktemp("grades")
    rows = grade.grade(folder, PLAIN, out, tiny_lessons, out / "data", out / "images",
                       timeout_s=LIMIT)
    return {
        "rows": {row.file: row for row in rows}, "csv": read_csv(out / grade.CSV_FILE),
        "markdown": (out / grade.MARKDOWN_FILE).read_text(), "out": out, "folder": folder,
        "unchanged": before == {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()},
        "left_running": [p for p in psutil.Process().children(recursive=True)
                         if p not in already_running],
        "forever": forever,
    }


NIE = "not reached: NotImplementedError"


@pytest.mark.parametrize("file, grades, note", [
    ("solution.ipynb", ["pass", "pass", "pass"], ""),
    # 1: the check calls the placeholder; 2: so does the check, which reports it as a failure;
    # 3: the cell raises, so `answer` is undefined in the check.
    ("lab.ipynb", [NIE, NIE, NIE], ""),
    ("wrong/alice.ipynb", ["fail: double(3) gave 5, not 6", "pass", "pass"], ""),
    ("deleted.ipynb", ["pass", "missing", "pass"], "no cell calls check.square(...)"),
    # 1: a syntax error left `double` undefined; 2: the check reports the answer's error.
    ("crash.ipynb", ["not reached: NameError",
                     "fail: square raised ZeroDivisionError: division by zero", "pass"], ""),
])
def test_each_exercise_gets_its_grade(tiny_grades, file, grades, note):
    row = tiny_grades["csv"][file]
    assert row["lesson"] == "tiny"
    assert [row[f"Exercise {n}"] for n in (1, 2, 3)] == grades
    assert row["passed"] == f"{grades.count('pass')}/3"
    assert row["note"] == note
    executed = tiny_grades["out"] / "executed" / file
    assert "injected-parameters" in executed.read_text()


def test_a_never_ending_notebook_is_stopped_and_what_ran_is_kept(tiny_grades):
    row = tiny_grades["csv"]["forever.ipynb"]
    assert [row[f"Exercise {n}"] for n in (1, 2, 3)] == ["pass", "timeout", "timeout"]
    loop = index_of(tiny_grades["forever"], "while True")
    assert row["note"] == f"timed out after {LIMIT} s in cell {loop} ('while True:')"
    assert tiny_grades["left_running"] == []  # the kernel went with papermill


@pytest.mark.parametrize("file, lesson, note", [
    ("broken.ipynb", "", "not a notebook: "),
    ("intro_copy.ipynb", "intro", "intro has no exercises to grade"),
    ("other.ipynb", "?", "unknown lesson: it shares 0 of the "),
    ("untagged.ipynb", "tiny", "cannot run: untagged.ipynb has no cell tagged 'parameters'"),
])
def test_files_that_cannot_be_graded_get_a_row_saying_why(tiny_grades, file, lesson, note):
    row = tiny_grades["csv"][file]
    assert (row["lesson"], row["passed"]) == (lesson, "")
    assert row["note"].startswith(note)
    assert [row[f"Exercise {n}"] for n in (1, 2, 3)] == ["", "", ""]


def test_every_file_has_one_row_and_students_files_are_untouched(tiny_grades):
    assert sorted(tiny_grades["csv"]) == sorted(
        p.relative_to(tiny_grades["folder"]).as_posix()
        for p in tiny_grades["folder"].rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    assert tiny_grades["unchanged"]
    assert not (tiny_grades["folder"] / "outputs").exists()


def test_the_markdown_table_matches_the_csv(tiny_grades):
    lines = tiny_grades["markdown"].splitlines()
    assert lines[0] == ("| file | lesson | Exercise 1 | Exercise 2 | Exercise 3 | passed "
                        "| wall time | note |")
    row = tiny_grades["csv"]["wrong/alice.ipynb"]
    assert (f"| wrong/alice.ipynb | tiny | {row['Exercise 1']} | pass | pass | 2/3 | "
            f"{float(row['seconds']):.0f} s |  |") in lines
    assert "- Exercise 2: square it (check.square)" in lines


# The real lesson, end to end through the command line ----------------------------------------

def wrong_loss(solution: nbformat.NotebookNode,
               lesson: submissions.Lesson) -> tuple[int, nbformat.NotebookNode]:
    """The solution with the masked loss replaced by a mean over every token, padding included."""
    [exercise] = [e for e in lesson.exercises if e.check == "masked_loss"]
    source = nbformat.read(REPO / "notebooks" / f"{lesson.name}.ipynb", as_version=4)
    [block] = [b for b in labs.exercises(source) if b.number == exercise.number]
    kept = [line for line in block.answer if not line.strip().startswith(("mask", "return"))]
    assert any("per_token" in line for line in kept), f"no per_token in {block.answer}"
    wrong = nbformat.from_dict(solution)
    cell = wrong.cells[block.cell]
    answer = "\n".join(block.answer)
    assert answer in cell.source
    cell.source = cell.source.replace(
        answer, "\n".join([*kept, f"{block.indent}return ops.mean(per_token)"]))
    return exercise.number, wrong


@pytest.fixture(scope="module")
def course_grades(tmp_path_factory, course_lessons):
    """A small class graded end to end: the untouched lab, one wrong answer, a broken file."""
    lesson = course_lessons["image_captioning"]
    folder = tmp_path_factory.mktemp("class")
    solution = nbformat.read(REPO / "solutions" / "image_captioning.ipynb", as_version=4)
    nbformat.write(nbformat.read(REPO / "labs" / "image_captioning.ipynb", as_version=4),
                   folder / "lab.ipynb")
    number, wrong = wrong_loss(solution, lesson)
    nbformat.write(wrong, folder / "wrong_loss.ipynb")
    (folder / "broken.ipynb").write_text("these are notes, not a notebook")
    out = tmp_path_factory.mktemp("grades")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = grade.main([str(folder), "--profile", "smoke", "--out", str(out),
                           "--lessons", str(REPO / "notebooks"),
                           "--data-dir", str(REPO / "data"),
                           "--sample-images-dir", str(REPO / "sample_images"),
                           # The smallest run that still trains and evaluates.
                           "-p", "EPOCHS", "2", "-p", "TRAIN_SPLIT", "train[:64]",
                           "-p", "EVAL_IMAGES", "16"])
    print(printed.getvalue())  # shown by pytest when a test using it fails
    return {"code": code, "printed": printed.getvalue(), "csv": read_csv(out / grade.CSV_FILE),
            "markdown": (out / grade.MARKDOWN_FILE).read_text(), "lesson": lesson,
            "wrong": number, "out": out}


@pytest.mark.parametrize("name", ["image_captioning", "image_captioning_at_scale"])
def test_the_executed_solution_passes_every_exercise(smoke_run, course_lessons, name):
    """The smoke run's executed solution, graded as the grader grades a student's copy."""
    lesson = course_lessons[name]
    solution = nbformat.read(REPO / "solutions" / f"{name}.ipynb", as_version=4)
    executed = nbformat.read(smoke_run[name].executed, as_version=4)
    assert submissions.identify(solution, course_lessons, "solution.ipynb") == (lesson, "")
    located = submissions.self_check_cells(solution)
    grades = grade.grade_executed(lesson, executed, "ok", "", located)
    assert grades == {e.number: "pass" for e in lesson.exercises}


def test_the_course_is_graded_as_expected(course_grades):
    lesson = course_grades["lesson"]
    source = nbformat.read(REPO / "notebooks" / "image_captioning.ipynb", as_version=4)
    top_level = {b.number for b in labs.exercises(source) if b.indent == ""}
    numbers = [e.number for e in lesson.exercises]
    rows = course_grades["csv"]
    assert course_grades["code"] == 0
    assert sorted(rows) == ["broken.ipynb", "lab.ipynb", "wrong_loss.ipynb"]
    assert rows["lab.ipynb"]["lesson"] == rows["wrong_loss.ipynb"]["lesson"] == "image_captioning"

    lab = rows["lab.ipynb"]
    assert lab["Exercise 1"] == NIE
    for n in numbers:  # an answer written at a cell's top level stops its own cell
        assert lab[f"Exercise {n}"] == NIE if n in top_level else (
            lab[f"Exercise {n}"].startswith("not reached: ")), n
    assert lab["passed"] == f"0/{len(numbers)}"

    wrong = rows["wrong_loss.ipynb"]
    for n in numbers:
        if n == course_grades["wrong"]:
            assert wrong[f"Exercise {n}"].startswith("fail: padding is counted")
        else:
            assert wrong[f"Exercise {n}"] == "pass", n

    broken = rows["broken.ipynb"]
    assert broken["note"].startswith("not a notebook: ")
    assert [broken[f"Exercise {n}"] for n in numbers] == [""] * len(numbers)


def test_the_table_and_the_total_time_are_printed(course_grades):
    printed = course_grades["printed"]
    assert course_grades["markdown"] in printed
    assert ("Profile smoke, with -p EPOCHS=2, TRAIN_SPLIT='train[:64]', EVAL_IMAGES=16."
            in course_grades["markdown"])
    assert re.search(r"\n3 files graded in \d+ s", printed)
    for title in (e.title for e in course_grades["lesson"].exercises):
        assert f"- {title} (check." in course_grades["markdown"]
    for name in ("lab", "wrong_loss"):
        assert (course_grades["out"] / "executed" / f"{name}.ipynb").is_file()
