"""A class that needs no TensorFlow, for the grader's tests: a tiny lesson with its own `check`
in the course's conventions, a lesson without exercises, and edits of their notebooks."""

from __future__ import annotations

from pathlib import Path

import nbformat

from captioning_course import labs
from captioning_course.kernel import KERNELSPEC
from captioning_course.profiles import Profile

PLAIN = Profile(name="plain", description="no overrides", timeout_s=300, data_slice=None,
                overrides={})

# A lesson that needs no TensorFlow: its own `check` with the course's conventions.
TINY = [
    ('OUTPUT_DIR = "outputs"\nSCALE = 2', ["parameters"]),
    ("class SelfCheckFailed(Exception):\n"
     "    pass\n\n\n"
     "class check:\n"
     "    def double(f):\n"
     "        if f(3) != 6:\n"
     "            raise SelfCheckFailed(f'Exercise 1 (double): double(3) gave {f(3)}, not 6')\n"
     "        print('PASS Exercise 1 (double): doubles')\n\n"
     "    def square(f):\n"
     "        try:\n"
     "            f(3)\n"
     "        except Exception as error:  # as the course's checks report the answer's errors\n"
     "            raise SelfCheckFailed(f'Exercise 2 (square): square raised '\n"
     "                                  f'{type(error).__name__}: {error}') from error\n"
     "        if f(3) != 9:\n"
     "            raise SelfCheckFailed('Exercise 2 (square): square(3) is not 9')\n"
     "        print('PASS Exercise 2 (square): squares')\n\n"
     "    def answer(value):\n"
     "        if value != 42:\n"
     "            raise SelfCheckFailed('Exercise 3 (answer): the answer is 42')\n"
     "        print('PASS Exercise 3 (answer): 42')", []),
    ("def double(x):\n"
     "    ### BEGIN SOLUTION Exercise 1: double it\n"
     "    # TODO: return twice x.\n"
     "    return 2 * x\n"
     "    ### END SOLUTION", []),
    ("check.double(double)", []),
    ("def square(x):\n"
     "    ### BEGIN SOLUTION Exercise 2: square it\n"
     "    return x * x\n"
     "    ### END SOLUTION", []),
    ("# Run me after exercise 2.\ncheck.square(\n    square,\n)", []),
    ("### BEGIN SOLUTION Exercise 3: find the answer\n"
     "answer = 6 * 7\n"
     "### END SOLUTION\n"
     "print(answer)", []),
    ("check.answer(answer)", []),
    ("print('the end')", []),
]
INTRO = [('OUTPUT_DIR = "outputs"', ["parameters"]), ("import math", []),
         ("print(math.pi)", []), ("print('no exercises here')", [])]


def notebook(cells: list[tuple[str, list[str]]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": dict(KERNELSPEC)})
    nb.cells = [nbformat.v4.new_code_cell(source, metadata={"tags": tags} if tags else {})
                for source, tags in cells]
    return nb


def without(nb: nbformat.NotebookNode, source_part: str) -> nbformat.NotebookNode:
    nb = nbformat.from_dict(nb)
    [index] = [i for i, c in enumerate(nb.cells) if source_part in c.source]
    del nb.cells[index]
    return nb


def index_of(nb: nbformat.NotebookNode, source_part: str) -> int:
    [index] = [i for i, c in enumerate(nb.cells) if source_part in c.source]
    return index


def write_tiny_lessons(folder: Path) -> Path:
    """The tiny lesson and a lesson without exercises, authored in `folder`."""
    nbformat.write(notebook(TINY), folder / "tiny.ipynb")
    nbformat.write(notebook(INTRO), folder / "intro.ipynb")
    return folder


def tiny_solution_and_lab(lessons: Path):
    solution, lab, _ = labs.solution_and_lab(nbformat.read(lessons / "tiny.ipynb", as_version=4))
    return solution, lab
