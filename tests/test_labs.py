"""Lab generation: markers, the lab/solution splice, no leaked answers, labs stop at exercise 1."""

from __future__ import annotations

import nbformat
import pytest

from captioning_course import labs, profiles, runner
from conftest import REPO

SOURCES = sorted((REPO / "notebooks").glob("*.ipynb"))
WITH_EXERCISES = [p for p in SOURCES if labs.exercises(nbformat.read(p, as_version=4))]

CELL = """def f(x):
    y = x + 1
    ### BEGIN SOLUTION Exercise 1: double it
    # TODO: return twice y.
    return 2 * y
    ### END SOLUTION"""


def notebook(*sources: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])


def test_solution_drops_markers_and_instructions_lab_keeps_instructions():
    solution, lab, _ = labs.solution_and_lab(notebook(CELL))
    assert solution.cells[0].source == "def f(x):\n    y = x + 1\n    return 2 * y"
    assert lab.cells[0].source == (
        "def f(x):\n    y = x + 1\n    # TODO: return twice y.\n"
        "    raise NotImplementedError('Exercise 1: double it')"
    )


def test_lab_placeholder_raises_naming_the_exercise():
    _, lab, _ = labs.solution_and_lab(notebook(CELL))
    namespace: dict = {}
    exec(lab.cells[0].source, namespace)  # noqa: S102
    with pytest.raises(NotImplementedError, match="Exercise 1: double it"):
        namespace["f"](1)


@pytest.mark.parametrize("source,message", [
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "needs a title 'Exercise N: what to do'"),
    ("### BEGIN SOLUTION Exercise 1: x\nx = 1", "has no END SOLUTION"),
    ("x = 1\n### END SOLUTION", "line 2: END without BEGIN"),
    ("### BEGIN SOLUTION Exercise 1: x\n### BEGIN SOLUTION Exercise 2: y\n", "nested BEGIN"),
    ("### BEGIN SOLUTION Exercise 1: x\n# TODO: only a hint\n### END SOLUTION", "no answer"),
])
def test_malformed_markers_are_named(source, message):
    with pytest.raises(labs.MarkerError, match=f"lesson.ipynb, cell 0.*{message}|{message}"):
        labs.solution_and_lab(notebook(source), "lesson.ipynb")


def block(title: str) -> str:
    return f"### BEGIN SOLUTION {title}\nanswer = 1\n### END SOLUTION"


@pytest.mark.parametrize("titles, message", [
    (["Exercise 2: b", "Exercise 1: a"], r"numbered \[2, 1\]"),
    (["Exercise 1: a", "Exercise 2: b", "Exercise 1: a"], r"numbered \[1, 2, 1\]"),
    (["Exercise 1: a", "Exercise 1: c"], r"cell 1: 'Exercise 1: c' has the number of "
                                         r"'Exercise 1: a'"),
])
def test_exercises_must_be_numbered_in_order_with_one_title_each(titles, message):
    with pytest.raises(labs.MarkerError, match=message):
        labs.exercises(notebook(*map(block, titles)))


def test_one_exercise_may_span_blocks_that_follow_each_other():
    found = labs.exercises(notebook(*map(block, ["Exercise 1: a", "Exercise 1: a",
                                                 "Exercise 2: b"])))
    assert [exercise.number for exercise in found] == [1, 1, 2]


def test_a_marker_error_writes_nothing(tmp_path):
    source = tmp_path / "notebooks"
    source.mkdir()
    nbformat.write(notebook("x = 1"), source / "a_good.ipynb")
    nbformat.write(notebook("### END SOLUTION"), source / "b_bad.ipynb")
    with pytest.raises(labs.MarkerError, match="b_bad.ipynb"):
        labs.generate(source, tmp_path / "solutions", tmp_path / "labs")
    assert not (tmp_path / "solutions").exists() and not (tmp_path / "labs").exists()


LESSON_CELLS = (
    "%matplotlib inline\nimport math\nSIDE_EFFECT = []",
    "!echo downloading\nSIDE_EFFECT.append('ran')\n\ndef area(r):\n    return math.pi * r * r",
    "class Circle:\n    def __init__(self, r):\n        self.area = area(r)\n\nCIRCLE = Circle(1)",
    "class Disc(Circle):\n    pass",
)


def test_run_definitions_runs_only_the_named_statements_of_cells_with_magics(tmp_path):
    path = tmp_path / "lesson.ipynb"
    nbformat.write(notebook(*LESSON_CELLS), path)
    import math

    found = labs.run_definitions(path, ("Disc", "area", "Circle", "SIDE_EFFECT"), {"math": math})
    assert found["Disc"](2).area == pytest.approx(4 * math.pi)
    assert found["SIDE_EFFECT"] == []  # assigned, and the cell's other statements not run
    assert "CIRCLE" not in found


@pytest.mark.parametrize("cells, names, message", [
    (LESSON_CELLS, ("area", "perimeter"), "defines 'perimeter' 0 times"),
    (LESSON_CELLS[1:2] * 2, ("area",), "defines 'area' 2 times"),
])
def test_run_definitions_names_a_missing_or_repeated_definition(tmp_path, cells, names, message):
    path = tmp_path / "lesson.ipynb"
    nbformat.write(notebook(*cells), path)
    with pytest.raises(LookupError, match=message):
        labs.run_definitions(path, names, {})


def test_main_lesson_has_five_exercises():
    main = REPO / "notebooks" / "image_captioning.ipynb"
    assert main in WITH_EXERCISES
    found = labs.exercises(nbformat.read(main, as_version=4))
    assert len({exercise.number for exercise in found}) >= 5


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_lab_with_answers_spliced_in_equals_the_solution(source):
    """Answers come from notebooks/, never from solutions/: the solution's run then proves the
    lab's scaffolding too."""
    lab = nbformat.read(REPO / "labs" / source.name, as_version=4)
    solution = nbformat.read(REPO / "solutions" / source.name, as_version=4)
    assert len(lab.cells) == len(solution.cells)
    by_cell: dict[int, list[labs.Exercise]] = {}
    for exercise in labs.exercises(nbformat.read(source, as_version=4)):
        by_cell.setdefault(exercise.cell, []).append(exercise)
    for index, (lab_cell, solution_cell) in enumerate(zip(lab.cells, solution.cells,
                                                          strict=True)):
        spliced = lab_cell.source
        for exercise in by_cell.get(index, []):
            placeholder = "\n".join(exercise.placeholder())
            assert placeholder in spliced, f"cell {index}: placeholder of {exercise.title}"
            spliced = spliced.replace(placeholder, "\n".join(exercise.answer), 1)
        assert spliced == solution_cell.source, f"{source.name} cell {index} differs"
        assert lab_cell.cell_type == solution_cell.cell_type
        assert lab_cell.metadata == solution_cell.metadata


@pytest.mark.parametrize("source", WITH_EXERCISES, ids=lambda p: p.name)
def test_no_answer_appears_in_the_lab(source):
    lab_text = "\n".join(c.source for c in nbformat.read(REPO / "labs" / source.name,
                                                         as_version=4).cells)
    for exercise in labs.exercises(nbformat.read(source, as_version=4)):
        for line in exercise.answer:
            if len(line.strip()) >= 10:
                assert line.strip() not in lab_text, f"{exercise.title}: {line.strip()!r}"
    assert "### BEGIN SOLUTION" not in lab_text and "### END SOLUTION" not in lab_text


@pytest.mark.slow
@pytest.mark.parametrize("source", WITH_EXERCISES, ids=lambda p: p.name)
def test_lab_runs_until_its_first_exercise_and_stops_there(source, tmp_path):
    lab_path = REPO / "labs" / source.name
    [result] = runner.run([lab_path], profiles.SMOKE, REPO / "data", tmp_path,
                          REPO / "sample_images")
    first = labs.exercises(nbformat.read(source, as_version=4))[0]
    assert result.status == "failed"
    # Keras rewraps an error raised inside a layer's call: the type and the title stay.
    assert "NotImplementedError" in result.failure and first.title in result.failure
    executed = nbformat.read(result.executed, as_version=4)
    errors = [c for c in executed.cells if c.cell_type == "code"
              and any(o.output_type == "error" for o in c.get("outputs", []))]
    assert len(errors) == 1  # no cell before the exercise failed; nothing ran after it
    cells = [c for c in executed.cells if c.cell_type == "code"]
    [exercise] = [i for i, c in enumerate(cells)
                  if f"raise NotImplementedError({first.title!r})" in c.source]
    failed = cells.index(errors[0])
    # An answer inside a layer's call first runs in the self-check cell right after it.
    assert failed == exercise or (failed == exercise + 1
                                  and cells[failed].source.startswith("check."))
