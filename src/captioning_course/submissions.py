"""Reading a class: the lessons' exercises and self-checks, which lesson a file is a lab of,
and where the students' files are.

A lesson is read from its authored notebook (`notebooks/`): its lab, each exercise with the
self-check cell that follows it, and the code cells that recognise a copy of it. A student's
file is recognised by the cells it shares with a lesson, not by its name (see `identify`).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import nbformat

from captioning_course import execution, labs

# A cell must be recognised in at least this share of a lesson's cells for a file to count
# as a lab of that lesson.
MIN_SHARE = 0.5
CHECK_CALL = re.compile(r"\bcheck\.(\w+)\s*\(")


class GradingError(Exception):
    """Grading cannot start as asked; found before any kernel starts."""


@dataclasses.dataclass(frozen=True)
class GradedExercise:
    number: int
    title: str  # "Exercise N: what to do", from the lesson's solution markers
    check: str  # the check function its self-check cell calls first, e.g. "tokenizer"
    occurrence: int  # 0 unless an earlier self-check cell of the lesson calls the same check


@dataclasses.dataclass(frozen=True)
class Lesson:
    name: str  # the stem of its notebook in the lessons folder
    lab: nbformat.NotebookNode
    exercises: tuple[GradedExercise, ...]
    fingerprints: frozenset[str]  # its recognisable code cells


# Cells ----------------------------------------------------------------------------------------

def check_calls(source: str) -> list[str]:
    """The `check.NAME(...)` calls of a code cell, in order; comments and strings ignored."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        tree = ast.parse(TransformerManager().transform_cell(source))
    except (SyntaxError, ValueError, ImportError):  # a cell that is not valid Python yet
        code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
        return CHECK_CALL.findall(code)
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
             and node.func.value.id == "check"]
    return [call.func.attr for call in sorted(calls, key=lambda c: (c.lineno, c.col_offset))]


def _code_cells(nb: nbformat.NotebookNode) -> list[tuple[int, str]]:
    """(index, source) of every code cell, papermill's own cells left out."""
    return [(index, cell.get("source", "")) for index, cell in enumerate(nb.cells)
            if cell.get("cell_type") == "code" and not execution.added_by_papermill(cell)]


def _fingerprint(source: str) -> str | None:
    """What identifies a code cell: its self-check call, or its lines without edge blanks."""
    calls = check_calls(source)
    if calls:
        return f"check.{calls[0]}(...)"
    text = "\n".join(line.strip() for line in source.strip().splitlines())
    return text or None


def self_check_cells(nb: nbformat.NotebookNode) -> dict[tuple[str, int], int]:
    """Cell index of every self-check cell, by (check it calls first, occurrence)."""
    found: dict[tuple[str, int], int] = {}
    seen: dict[str, int] = {}
    for index, source in _code_cells(nb):
        calls = check_calls(source)
        if calls:
            occurrence = seen.get(calls[0], 0)
            seen[calls[0]] = occurrence + 1
            found[(calls[0], occurrence)] = index
    return found


# Lessons --------------------------------------------------------------------------------------

def load_lesson(path: Path) -> Lesson:
    """A lesson from its authored notebook: its lab, exercises and self-check cells."""
    try:
        source = nbformat.read(path, as_version=4)
        _, lab, blocks = labs.solution_and_lab(source, str(path))
    except labs.MarkerError as exc:
        raise GradingError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise GradingError(f"cannot read lesson {path} ({exc})") from None
    cells: dict[int, list[int]] = {}
    titles: dict[int, str] = {}
    for block in blocks:
        cells.setdefault(block.number, []).append(block.cell)
        titles.setdefault(block.number, block.title)
    code = _code_cells(lab)
    exercises = []
    numbers = sorted(cells)
    for number in numbers:
        # Its self-check is the first cell calling a check from its last block's cell on,
        # before a later exercise's cell. Exercises in one cell (two parts of one layer)
        # share the self-check that follows it.
        later = [i for n in numbers if n > number for i in cells[n] if i > max(cells[number])]
        end = min(later, default=len(lab.cells))
        calls = [check_calls(src) for index, src in code if max(cells[number]) <= index < end]
        name = next((found[0] for found in calls if found), None)
        if name is None:
            raise GradingError(f"{path}: {titles[number]!r} has no self-check cell (one calling "
                               "check.NAME(...)) after it, so it cannot be graded")
        occurrence = sum(check_calls(src)[:1] == [name] for index, src in code
                         if index < max(cells[number]))
        exercises.append(GradedExercise(number, titles[number], name, occurrence))
    exercise_cells = {index for indices in cells.values() for index in indices}
    fingerprints = frozenset(filter(None, (_fingerprint(src) for index, src in code
                                           if index not in exercise_cells)))
    return Lesson(path.stem, lab, tuple(exercises), fingerprints)


def load_lessons(folder: Path) -> dict[str, Lesson]:
    paths = sorted(folder.glob("*.ipynb")) if folder.is_dir() else []
    if not paths:
        raise GradingError(f"no lesson notebooks in {folder}")
    return {path.stem: load_lesson(path) for path in paths}


def identify(nb: nbformat.NotebookNode, lessons: dict[str, Lesson],
             name: str = "") -> tuple[Lesson | None, str]:
    """The lesson `nb` is a lab of, or None and why not. `name` (the file's) breaks ties."""
    prints = {fp for fp in (_fingerprint(src) for _, src in _code_cells(nb)) if fp}
    shared = {lesson.name: len(lesson.fingerprints & prints) for lesson in lessons.values()}

    def rank(lesson: Lesson) -> tuple:
        share = shared[lesson.name] / max(len(lesson.fingerprints), 1)
        return share, lesson.name in name, shared[lesson.name], lesson.name

    best = max(lessons.values(), key=rank)
    if rank(best)[0] < MIN_SHARE:
        return None, (f"unknown lesson: it shares {shared[best.name]} of the "
                      f"{len(best.fingerprints)} code cells of the closest lesson, {best.name}")
    return best, ""


# Students' files ------------------------------------------------------------------------------

def find_submissions(folder: Path, out: Path) -> list[Path]:
    """Every notebook under `folder`, hidden folders and the output folder left out."""
    out = out.resolve()
    found = []
    for path in sorted(folder.rglob("*.ipynb")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts[:-1]):
            continue
        if path.resolve().is_relative_to(out) or not path.is_file():
            continue
        found.append(path)
    return found
