"""Reading a class: a lesson's exercises and self-checks, which lesson a file is, whatever the
student did to it, and which files are submissions."""

from __future__ import annotations

import re

import nbformat
import pytest

from captioning_course import labs, submissions
from conftest import REPO
from tiny_class import TINY, index_of, notebook, without, write_tiny_lessons


@pytest.fixture(scope="module")
def tiny_lessons(tmp_path_factory):
    return write_tiny_lessons(tmp_path_factory.mktemp("lessons"))


# Lessons -------------------------------------------------------

def test_check_calls_ignore_comments_and_strings():
    cell = "check.a(x)\n# check.b(y)\ns = 'check.c(z)'\ncheck.d(\n  w)"
    assert submissions.check_calls(cell) == ["a", "d"]
    assert submissions.check_calls("%matplotlib inline\ncheck.e(1)") == ["e"]
    assert submissions.check_calls("check.f(  # unfinished") == ["f"]  # not Python yet: by pattern


def test_a_lesson_gives_its_exercises_and_their_checks(tiny_lessons):
    lesson = submissions.load_lesson(tiny_lessons / "tiny.ipynb")
    assert [(e.number, e.title, e.check) for e in lesson.exercises] == [
        (1, "Exercise 1: double it", "double"), (2, "Exercise 2: square it", "square"),
        (3, "Exercise 3: find the answer", "answer")]
    assert submissions.load_lesson(tiny_lessons / "intro.ipynb").exercises == ()


def test_the_main_lesson_gives_every_exercise_a_self_check():
    source = nbformat.read(REPO / "notebooks" / "image_captioning.ipynb", as_version=4)
    lesson = submissions.load_lesson(REPO / "notebooks" / "image_captioning.ipynb")
    titles = {block.number: block.title for block in labs.exercises(source)}
    assert [(e.number, e.title) for e in lesson.exercises] == sorted(titles.items())
    solution_text = "\n".join(c.source for c in nbformat.read(
        REPO / "solutions" / "image_captioning.ipynb", as_version=4).cells)
    for exercise in lesson.exercises:
        assert f"check.{exercise.check}(" in solution_text


def test_an_exercise_without_a_self_check_is_refused(tmp_path):
    cells = [c for c in TINY if not c[0].startswith("check.answer")]
    nbformat.write(notebook(cells), tmp_path / "tiny.ipynb")
    with pytest.raises(submissions.GradingError,
                       match="'Exercise 3: find the answer' has no self-check"):
        submissions.load_lesson(tmp_path / "tiny.ipynb")


@pytest.fixture(scope="module")
def course_lessons() -> dict[str, submissions.Lesson]:
    return submissions.load_lessons(REPO / "notebooks")


@pytest.mark.parametrize("change", ["none", "renamed", "answered", "check deleted",
                                    "check arguments edited", "cells appended"])
def test_a_lab_is_recognised_however_the_student_left_it(course_lessons, change):
    lab = nbformat.read(REPO / "labs" / "image_captioning.ipynb", as_version=4)
    name = "image_captioning"
    if change == "renamed":
        name = "homework3_alice"
    elif change == "answered":
        lab = nbformat.read(REPO / "solutions" / "image_captioning.ipynb", as_version=4)
    elif change == "check deleted":
        lab = without(lab, "check.tokenizer(")
    elif change == "check arguments edited":
        cell = lab.cells[index_of(lab, "check.tokenizer(")]
        cell.source = "check.tokenizer(my_tokenizer, 10, 5)  # my names"
    elif change == "cells appended":
        lab.cells += [nbformat.v4.new_code_cell(f"print({i})") for i in range(10)]
    lesson, why = submissions.identify(lab, course_lessons, name)
    assert (lesson.name if lesson else None, why) == ("image_captioning", "")


def test_another_lesson_and_unknown_notebooks_are_named(course_lessons):
    other = nbformat.read(REPO / "labs" / "getting_started.ipynb", as_version=4)
    lesson, _ = submissions.identify(other, course_lessons, "image_captioning")
    assert lesson.name == "getting_started"
    stranger = notebook([("import this", []), ("print(1 + 1)", [])])
    lesson, why = submissions.identify(stranger, course_lessons, "image_captioning")
    assert lesson is None
    assert re.fullmatch(r"unknown lesson: it shares 0 of the \d+ code cells of the closest "
                        r"lesson, \w+", why)


def test_hidden_folders_and_the_output_folder_hold_no_submissions(tmp_path):
    for name in ["a.ipynb", "sub/b.ipynb", ".ipynb_checkpoints/a-checkpoint.ipynb",
                 "sub/.ipynb_checkpoints/b-checkpoint.ipynb", "grades/executed/a.ipynb",
                 "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    found = submissions.find_submissions(tmp_path, tmp_path / "grades")
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.ipynb", "sub/b.ipynb"]
