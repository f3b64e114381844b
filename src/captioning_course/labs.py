"""Generate `solutions/` and `labs/` from the authored lessons in `notebooks/`.

    python -m captioning_course.labs [--source notebooks] [--solutions solutions] [--labs labs]

Both copies are stored clean: no outputs, no execution counts, normalised metadata (kernel
`python3`), cell tags kept and cell ids numbered, so generating twice gives identical bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


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


def dumps(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def generate(source: Path, solutions: Path, labs: Path) -> list[Path]:
    """Write every source notebook's solution and lab; return the paths written."""
    sources = sorted(source.glob("*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"no notebooks in {source}")
    written = []
    for path in sources:
        text = dumps(normalised(nbformat.read(path, as_version=4)))
        # No exercise is marked yet, so the lab is the solution itself.
        for folder in (solutions, labs):
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / path.name
            target.write_text(text)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("notebooks"))
    parser.add_argument("--solutions", type=Path, default=Path("solutions"))
    parser.add_argument("--labs", type=Path, default=Path("labs"))
    args = parser.parse_args(argv)
    for path in generate(args.source, args.solutions, args.labs):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
