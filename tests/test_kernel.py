"""The course kernel as a student meets it: from a Jupyter outside .venv, and in a wrong kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from captioning_course.kernel import DISPLAY_NAME, KERNEL_ENV, KERNEL_NAME
from conftest import REPO, install_kernel

LESSONS = sorted(p for folder in ("labs", "solutions") for p in (REPO / folder).glob("*.ipynb"))
WRONG_KERNEL = (f"This notebook needs the kernel '{DISPLAY_NAME}': run `make install` in the "
                "course folder, then pick that kernel in Kernel > Change Kernel.")

# Run by the outer environment's Python, which has jupyter_client but not the course: start a
# kernel by name, run the first code cells of a notebook, report each cell's outcome as JSON.
RUN_CELLS = """
import json, sys
from pathlib import Path

from jupyter_client.manager import start_new_kernel

kernel_name, notebook, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
cells = [c for c in json.load(open(notebook))["cells"] if c["cell_type"] == "code"][:count]
manager, client = start_new_kernel(kernel_name=kernel_name, cwd=str(Path(notebook).parent))
results = []
try:
    for cell in cells + [{"source": "import sys; print(sys.executable)"}]:
        shown = []
        reply = client.execute_interactive("".join(cell["source"]), timeout=300,
                                           output_hook=shown.append)
        text = "".join(m["content"].get("text", "") for m in shown if m["msg_type"] == "stream")
        results.append({"status": reply["content"]["status"], "text": text,
                        "traceback": reply["content"].get("traceback", [])})
        if reply["content"]["status"] != "ok":
            break
finally:
    client.stop_channels()
    manager.shutdown_kernel(now=True)
print(json.dumps(results))
"""


def test_install_registers_this_environment_for_the_user(tmp_path):
    message = install_kernel(tmp_path)
    spec = json.loads((tmp_path / "kernels" / KERNEL_NAME / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    assert spec["display_name"] == DISPLAY_NAME
    assert spec["env"] == KERNEL_ENV  # students see TensorFlow's errors, not its notices
    assert f"registered for this user: it runs {sys.executable}" in message


def test_install_in_another_clone_says_where_the_kernel_now_points(tmp_path):
    other = tmp_path / "kernels" / KERNEL_NAME / "kernel.json"
    other.parent.mkdir(parents=True)
    other.write_text(json.dumps({"argv": ["/elsewhere/.venv/bin/python", "-m", "ipykernel"],
                                 "display_name": DISPLAY_NAME, "language": "python"}))
    message = install_kernel(tmp_path)
    assert f"now runs {sys.executable}" in message
    assert "it ran /elsewhere/.venv/bin/python" in message


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_lesson_names_the_course_kernel(path):
    assert json.loads(path.read_text())["metadata"]["kernelspec"]["name"] == KERNEL_NAME


@pytest.fixture(scope="module")
def outer_jupyter(tmp_path_factory) -> dict:
    """A separate environment with only Jupyter's client and kernel, like Workbench's own."""
    venv = REPO / "build" / "outer-jupyter"
    python = venv / "bin" / "python"
    wanted = [f"jupyter_client=={metadata.version('jupyter_client')}",
              f"ipykernel=={metadata.version('ipykernel')}"]
    marker = venv / "installed.txt"
    if not marker.is_file() or marker.read_text() != "\n".join(wanted):
        base = getattr(sys, "_base_executable", None) or "python3"
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *wanted], check=True,
                       capture_output=True)
        marker.write_text("\n".join(wanted))
    data_dir = tmp_path_factory.mktemp("jupyter-data")
    install_kernel(data_dir)
    # The outer Jupyter sees the user's kernels (here a private folder) and its own python3.
    env = {key: value for key, value in os.environ.items() if not key.startswith("JUPYTER")}
    env.update(JUPYTER_DATA_DIR=str(data_dir), PATH=f"{venv / 'bin'}:{env['PATH']}")
    env.pop("VIRTUAL_ENV", None)
    return {"python": str(python), "env": env}


def run_cells(outer: dict, kernel: str, notebook: Path, count: int) -> list[dict]:
    out = subprocess.run([outer["python"], "-c", RUN_CELLS, kernel, str(notebook), str(count)],
                         capture_output=True, text=True, env=outer["env"], timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_outer_jupyter_lists_the_course_kernel(outer_jupyter):
    jupyter = Path(outer_jupyter["python"]).parent / "jupyter"
    out = subprocess.run([str(jupyter), "kernelspec", "list", "--json"], check=True,
                         capture_output=True, text=True, env=outer_jupyter["env"])
    specs = json.loads(out.stdout)["kernelspecs"]
    assert KERNEL_NAME in specs and "python3" in specs
    assert specs[KERNEL_NAME]["spec"]["argv"][0] == sys.executable
    assert specs[KERNEL_NAME]["spec"]["display_name"] == DISPLAY_NAME


def test_lab_opened_in_outer_jupyter_runs_its_first_cells_in_the_venv(outer_jupyter):
    lab = REPO / "labs" / "image_captioning.ipynb"
    kernel = json.loads(lab.read_text())["metadata"]["kernelspec"]["name"]  # what Jupyter picks
    # The kernel check, the imports and the parameters: the next cell loads COCO.
    results = run_cells(outer_jupyter, kernel, lab, count=3)
    assert [r["status"] for r in results] == ["ok"] * 4, results
    assert any("TensorFlow 2." in r["text"] for r in results)
    assert results[-1]["text"].strip() == sys.executable


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: str(p.relative_to(REPO)))
def test_first_cell_in_a_python_without_the_course_says_what_to_do(outer_jupyter, path):
    [result] = run_cells(outer_jupyter, "python3", path, count=1)
    assert result["status"] == "error"
    assert result["text"] == f"UsageError: {WRONG_KERNEL}\n"  # one sentence, no traceback
    assert result["traceback"] == []
