"""House rules for every committed notebook, and generated copies that match their source."""

from __future__ import annotations

import re
import subprocess
import sys

import nbformat
import papermill
import pytest

from captioning_course import labs
from captioning_course.kernel import KERNELSPEC
from conftest import REPO

SOURCES = sorted((REPO / "notebooks").glob("*.ipynb"))
COMMITTED = sorted(
    path for folder in ("notebooks", "solutions", "labs")
    for path in (REPO / folder).glob("*.ipynb")
)


def test_there_are_lessons():
    assert SOURCES, "notebooks/ holds no lesson"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(REPO)))
def test_stored_clean_with_the_course_kernel(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec == KERNELSPEC
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {index} has outputs"
            assert cell.execution_count is None, f"cell {index} has an execution count"


# Words of the harness, not of the course: a lesson that needs one is teaching its tests.
HARNESS_WORDS = re.compile(
    r"fingerprint|digest|hashlib|temporary name|cache key|\bassert\b|filterwarnings|"
    r"\bsmoke\b|rehearsal|offline|\bprofiles?\b|\bCI\b|weights file",
    re.IGNORECASE)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_lessons_teach_the_course_not_its_harness(path):
    cells = nbformat.read(path, as_version=4).cells
    found = {(index, match.group()) for index, cell in enumerate(cells)
             for match in HARNESS_WORDS.finditer(cell.source)}
    assert not found, f"cells that talk of the harness: {sorted(found)}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_one_parameters_cell_with_output_dir(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    assert "OUTPUT_DIR" in papermill.inspect_notebook(str(path))


def test_generated_copies_are_up_to_date(tmp_path):
    labs.generate(REPO / "notebooks", tmp_path / "solutions", tmp_path / "labs")
    stale = [
        f"{folder}/{path.name}"
        for folder in ("solutions", "labs")
        for path in sorted((tmp_path / folder).glob("*.ipynb"))
        if not (REPO / folder / path.name).is_file()
        or (REPO / folder / path.name).read_bytes() != path.read_bytes()
    ]
    assert not stale, f"run `make labs`: out of date with notebooks/: {', '.join(stale)}"
    for folder in ("solutions", "labs"):
        extra = {p.name for p in (REPO / folder).glob("*.ipynb")} - {p.name for p in SOURCES}
        assert not extra, f"{folder}/ has notebooks with no source: {extra}"


def test_generation_is_byte_identical_when_repeated(tmp_path):
    def generate() -> list[bytes]:
        written = labs.generate(REPO / "notebooks", tmp_path / "solutions", tmp_path / "labs")
        return [path.read_bytes() for path in written]

    assert generate() == generate()


def test_lint_clean():
    """`make lint`: ruff over the package, the tests and every notebook."""
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# The main lesson teaches captioning on one GPU; what only scale needs is the at-scale lesson's.
FOCUSED = {"image_captioning": 80, "image_captioning_at_scale": 60}  # lesson -> most cells
LONGEST_CODE_CELL = 20  # lines, the parameters cell aside


@pytest.mark.parametrize("lesson", sorted(FOCUSED))
def test_focused_lessons_keep_short_cells(lesson):
    cells = nbformat.read(REPO / "notebooks" / f"{lesson}.ipynb", as_version=4).cells
    assert len(cells) <= FOCUSED[lesson]
    long = [index for index, cell in enumerate(cells) if cell.cell_type == "code"
            and "parameters" not in cell.metadata.get("tags", [])
            and len(cell.source.splitlines()) > LONGEST_CODE_CELL]
    assert not long, f"code cells over {LONGEST_CODE_CELL} lines: {long}"


def test_the_main_lesson_leaves_devices_to_the_at_scale_lesson():
    source = (REPO / "notebooks" / "image_captioning.ipynb").read_text()
    assert "strategy" not in source and "MIXED_PRECISION" not in source
