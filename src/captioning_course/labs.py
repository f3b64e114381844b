"""Generate `solutions/` and `labs/` from the authored lessons in `notebooks/`.

    python -m captioning_course.labs [--source notebooks] [--solutions solutions] [--labs labs]

An instructor marks the lines a student must write inside a code cell:

    ### BEGIN SOLUTION Exercise 2: scale the features
    # TODO: divide each feature vector by its largest absolute value.
    scaled = features / ops.max(ops.abs(features), axis=-1, keepdims=True)
    ### END SOLUTION

The comment lines that open a block are the student's instructions. The solution keeps the
answer and drops the markers and instructions; the lab keeps the instructions and replaces
the answer with `raise NotImplementedError("Exercise 2: scale the features")`, so running a
lab stops at the first unanswered exercise with a message that names it.

Both copies are stored clean: no outputs, no execution counts, normalised metadata (the course
kernel), cell tags kept and cell ids numbered, so generating twice gives identical bytes.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import sys
from pathlib import Path

import nbformat

from captioning_course.kernel import KERNELSPEC

BEGIN = re.compile(r"^(?P<indent>\s*)### BEGIN SOLUTION(?P<title>.*)$")
END = re.compile(r"^\s*### END SOLUTION\s*$")
TITLE = re.compile(r"^Exercise (?P<number>\d+): \S.*$")


class MarkerError(ValueError):
    """An answer marker is malformed; the message names the notebook, cell and line."""


@dataclasses.dataclass(frozen=True)
class Exercise:
    title: str  # "Exercise N: what to do"
    cell: int  # index of the cell in the notebook
    indent: str
    instructions: tuple[str, ...]  # comment lines shown to the student
    answer: tuple[str, ...]  # the lines the student must write

    @property
    def number(self) -> int:
        return int(TITLE.match(self.title)["number"])

    def placeholder(self) -> list[str]:
        """The lines the lab shows instead of the answer."""
        return [*self.instructions, f"{self.indent}raise NotImplementedError({self.title!r})"]


def _split(source: str, cell: int, where: str) -> tuple[list[str], list[str], list[Exercise]]:
    """The solution lines, the lab lines and the exercises of one code cell."""
    solution, lab, exercises = [], [], []
    lines = source.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        if END.match(line):
            raise MarkerError(f"{where}, cell {cell}, line {index + 1}: END without BEGIN")
        begin = BEGIN.match(line)
        if not begin:
            solution.append(line)
            lab.append(line)
            index += 1
            continue
        title = begin["title"].strip()
        if not TITLE.match(title):
            raise MarkerError(f"{where}, cell {cell}, line {index + 1}: a solution block needs "
                              f"a title 'Exercise N: what to do', got {title!r}")
        body = []
        index += 1
        while index < len(lines) and not END.match(lines[index]):
            if BEGIN.match(lines[index]):
                raise MarkerError(f"{where}, cell {cell}, line {index + 1}: nested BEGIN")
            body.append(lines[index])
            index += 1
        if index == len(lines):
            raise MarkerError(f"{where}, cell {cell}: {title!r} has no END SOLUTION")
        index += 1  # past END
        count = next((i for i, text in enumerate(body) if not text.strip().startswith("#")),
                     len(body))
        exercise = Exercise(title, cell, begin["indent"], tuple(body[:count]),
                            tuple(body[count:]))
        if not exercise.answer:
            raise MarkerError(f"{where}, cell {cell}: {title!r} marks no answer lines")
        exercises.append(exercise)
        solution += exercise.answer
        lab += exercise.placeholder()
    return solution, lab, exercises


def _check_numbering(found: list[Exercise], where: str) -> None:
    """Exercises run 1, 2, 3...; the blocks of one follow each other and share its title."""
    numbers = [ex.number for ex in found]
    runs = [number for index, number in enumerate(numbers)
            if index == 0 or number != numbers[index - 1]]
    if runs != list(range(1, len(runs) + 1)):
        raise MarkerError(f"{where}: exercises are numbered {numbers}; number them 1, 2, 3... "
                          "in order (blocks of one exercise share its number)")
    titles: dict[int, str] = {}
    for exercise in found:
        title = titles.setdefault(exercise.number, exercise.title)
        if exercise.title != title:
            raise MarkerError(f"{where}, cell {exercise.cell}: {exercise.title!r} has the number "
                              f"of {title!r}; blocks of one exercise share its title")


def exercises(nb: nbformat.NotebookNode, where: str = "notebook") -> list[Exercise]:
    """Every marked block, in order. One exercise may span several blocks (same title);
    exercise numbers must run 1, 2, 3... in the order they appear."""
    return solution_and_lab(nb, where)[2]


def normalised(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A clean copy of `nb`: what is committed, whatever Jupyter left in the source."""
    clean = nbformat.v4.new_notebook()
    clean.metadata = nbformat.NotebookNode(
        kernelspec=KERNELSPEC, language_info={"name": "python"}
    )
    for index, cell in enumerate(nb.cells):
        tags = list(cell.get("metadata", {}).get("tags", []))
        metadata = {"tags": tags} if tags else {}
        if cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(cell.source, metadata=metadata)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(cell.source, metadata=metadata)
        else:
            new = nbformat.v4.new_raw_cell(cell.source, metadata=metadata)
        new.id = f"cell-{index:03d}"
        clean.cells.append(new)
    return clean


def solution_and_lab(nb: nbformat.NotebookNode, where: str = "notebook"
                     ) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode, list[Exercise]]:
    """The solution and the lab of a source notebook, and its exercises."""
    solution, lab = normalised(nb), normalised(nb)
    found: list[Exercise] = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            solution_lines, lab_lines, cell_exercises = _split(cell.source, index, where)
            solution.cells[index].source = "\n".join(solution_lines)
            lab.cells[index].source = "\n".join(lab_lines)
            found += cell_exercises
    _check_numbering(found, where)
    return solution, lab, found


def _defined_name(node: ast.stmt) -> str | None:
    """The one name a top-level statement defines, if it is a definition or `NAME = ...`."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return node.name
    targets = node.targets if isinstance(node, ast.Assign) else (
        [node.target] if isinstance(node, ast.AnnAssign) else [])
    return targets[0].id if len(targets) == 1 and isinstance(targets[0], ast.Name) else None


def run_definitions(notebook: Path, names: tuple[str, ...], namespace: dict) -> dict:
    """Execute in `namespace` the `def`, `class` and `NAME = ...` statements of `notebook`
    that define the names in `names`, and return it: lessons keep their code in the notebook,
    so tests and benchmarks take it from there rather than from a copy that could drift.

    Only those statements run, in notebook order, not the rest of their cells; `namespace`
    provides what else they use (imports, parameters). Cells are read as IPython reads them,
    so `%magics` and `!commands` elsewhere in a cell do not stop the parsing. A name that the
    notebook does not define, or defines twice, raises LookupError.
    """
    from IPython.core.inputtransformer2 import TransformerManager

    python = TransformerManager()
    found: dict[str, list[tuple[int, ast.stmt]]] = {name: [] for name in names}
    for index, cell in enumerate(nbformat.read(notebook, as_version=4).cells):
        if cell.cell_type != "code":
            continue
        for node in ast.parse(python.transform_cell(cell.source)).body:
            name = _defined_name(node)
            if name in found:
                found[name].append((index, node))
    for name, nodes in found.items():
        if len(nodes) != 1:
            raise LookupError(f"{notebook.name} defines {name!r} {len(nodes)} times, not once")
    # In notebook order, so that a class defined after another may subclass it.
    statements = sorted((nodes[0] for nodes in found.values()),
                        key=lambda found_at: (found_at[0], found_at[1].lineno))
    for _, node in statements:
        module = ast.Module(body=[node], type_ignores=[])
        exec(compile(module, str(notebook), "exec"), namespace)  # noqa: S102
    return namespace


def dumps(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def generate(source: Path, solutions: Path, labs: Path) -> list[Path]:
    """Write every source notebook's solution and lab; return the paths written."""
    sources = sorted(source.glob("*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"no notebooks in {source}")
    # Parse everything first, so a marker error leaves every generated file untouched.
    pairs = [(path, solution_and_lab(nbformat.read(path, as_version=4), str(path))[:2])
             for path in sources]
    written = []
    for path, copies in pairs:
        for folder, nb in zip((solutions, labs), copies, strict=True):
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / path.name
            target.write_text(dumps(nb))
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("notebooks"))
    parser.add_argument("--solutions", type=Path, default=Path("solutions"))
    parser.add_argument("--labs", type=Path, default=Path("labs"))
    args = parser.parse_args(argv)
    try:
        written = generate(args.source, args.solutions, args.labs)
    except (MarkerError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
