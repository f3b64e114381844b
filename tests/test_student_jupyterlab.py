"""What a student does on Vertex AI Workbench, in a real browser: open a lab, Run All, read it.

Two JupyterLabs serve a temporary copy of the course: the course's own (`.venv`, as `make lab`
starts it) and one from another environment with only `jupyterlab`, as Workbench serves its
own, which finds the course kernel only among the user's kernels. Debian's Chromium, headless
and driven by Playwright, opens a lab, checks the kernel JupyterLab picked, runs all cells from
the Run menu and saves the notebook with the toolbar's button. The test then reads the saved
copy, where an error output is marked as one; the page renders tracebacks and TensorFlow's
stderr chatter alike. The page is read only for what the file cannot say: the kernel shown,
the dialogs, and whether a progress bar is a live widget. The data are the offline slice as a
prepared `coco_captions` in TFDS's default data dir (`TFDS_DATA_DIR`), so the labs run with
their defaults, unchanged. Screenshots of each lab after Run All go to build/browser/.

In the course's JupyterLab only (the other shows no widgets), a student also runs the main
lesson's solution, prepared as the runner's --prepare-only writes it under the smoke profile
with a short training, and captions a photo with the upload button at its end: a photo gives
a greedy and a beam caption, a text file named like a photo the reader's one-line error.
"""

from __future__ import annotations

import base64
import io
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import expect, sync_playwright

from captioning_course import execution, profiles
from captioning_course.execution import stop_process_tree
from captioning_course.kernel import DISPLAY_NAME
from captioning_course.parameters import kernel_environment, notebook_parameters, prepare_data
from conftest import REPO, install_kernel

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
SCREENSHOTS = REPO / "build" / "browser"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# Generous bounds, many times what a 2-core machine needs: a stuck step fails, never hangs.
SERVER_START_S = 120
KERNEL_START_MS = 180_000
RUN_ALL_MS = 900_000
DESCRIBE_MS = 180_000  # from a file chosen to its captions and attention map on the page
# Every dialog JupyterLab opens is attached to <body>; a kernel-selection one is among them.
RECORD_DIALOGS = """
window.addEventListener("DOMContentLoaded", () => {
  window.dialogsSeen = [];
  new MutationObserver(records => records.forEach(record => record.addedNodes.forEach(node => {
    if (node.classList?.contains("jp-Dialog")) window.dialogsSeen.push(node.textContent);
  }))).observe(document.body, {childList: true});
});
"""
# Scrolling renders cells that were skipped while off screen (CSS content-visibility), and their
# real heights move the target: scroll again until it stays put (a few rounds at most).
SCROLL_TO_BOTTOM = """async element => {
  for (let round = 0, last = null; round < 20; round++) {
    element.scrollIntoView({block: "end"});
    await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
    const top = element.getBoundingClientRect().top;
    if (top === last) return;
    last = top;
  }
}"""
KERNEL_STATUS = '.jp-StatusBar-TextItem[title^="Change kernel for"]'  # "<kernel> | <status>"
# Wait for a kernel to be ready, whichever JupyterLab chose (without the course's kernelspec it
# silently starts its default one), or for a dialog asking the student something.
KERNEL_IDLE_OR_DIALOG = f"""() => window.dialogsSeen?.length > 0 || /^(?!No Kernel).* [|] Idle$/
  .test(document.querySelector('{KERNEL_STATUS}')?.textContent)"""
# Run All has ended when the first code cell has its number and none waits ("[*]:") any more.
RUN_ALL_ENDED = """() => {
  const prompts = [...document.querySelectorAll(".jp-CodeCell .jp-InputPrompt")]
    .map(prompt => prompt.textContent.trim());
  return /\\d/.test(prompts[0]) && !prompts.includes("[*]:");
}"""


@dataclass
class Server:
    name: str
    url: str
    token: str
    root: Path  # the temporary course tree it serves
    # Whether its environment has ipywidgets' JupyterLab extension (jupyterlab_widgets); without
    # it, JupyterLab shows a widget's text instead: tqdm's bar frozen at 0%.
    renders_widgets: bool


def pinned(package: str) -> str:
    return re.search(rf"^{package}==(\S+)", (REPO / "requirements.txt").read_text(), re.M)[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's Chromium with an empty profile, recording every dialog a page opens."""
    if not CHROMIUM.is_file():
        reason = f"{CHROMIUM} is missing (Debian: apt-get install chromium)"
        if os.environ.get("COURSE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and COURSE_REQUIRE_BROWSER=1 requires it")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=str(CHROMIUM),
            headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 1400})
        context.set_default_timeout(60_000)
        context.add_init_script(RECORD_DIALOGS)
        yield context
        context.close()


@pytest.fixture(scope="module")
def coco_data_dir() -> Path:
    """The offline slice as a prepared `coco_captions`, what TFDS's default data dir holds."""
    from captioning_course import data_copies, data_slice

    return data_copies.prepare_coco_captions(REPO / "data" / "coco", data_slice.SliceParams())


@pytest.fixture(scope="module")
def separate_jupyterlab() -> Path:
    """A venv with only JupyterLab at the course's pin, built once in build/ and reused."""
    venv = REPO / "build" / "jupyterlab-only"
    wanted = f"jupyterlab=={pinned('jupyterlab')}"
    marker = venv / "installed.txt"
    if not marker.is_file() or marker.read_text() != wanted:
        base = getattr(sys, "_base_executable", None) or "python3"
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", wanted],
                       check=True, capture_output=True, timeout=1800)
        marker.write_text(wanted)
    return venv / "bin"


def course_copy(root: Path) -> Path:
    """The labs and the sample photos beside them (`../sample_images`), as in the course."""
    (root / "labs").mkdir(parents=True)
    for lab in (REPO / "labs").glob("*.ipynb"):
        shutil.copy(lab, root / "labs")
    shutil.copytree(REPO / "sample_images", root / "sample_images")
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"JupyterLab exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"JupyterLab did not answer in {SERVER_START_S} s:\n"
                         f"{log.read_text()[-3000:]}")


@pytest.fixture(params=["course", "separate"], ids=["course-jupyterlab", "separate-jupyterlab"])
def server(request, tmp_path, coco_data_dir):
    """A JupyterLab on a temporary course copy, with private Jupyter folders; its tree is
    killed afterwards, kernels included. A test of one JupyterLab only narrows `params` with
    `@pytest.mark.parametrize("server", [...], indirect=True)`."""
    jupyter_dirs = {name: tmp_path / name for name in ("config", "data", "runtime")}
    # The first-run question about Jupyter news would cover part of every screenshot.
    settings = (jupyter_dirs["config"] / "lab" / "user-settings" / "@jupyterlab"
                / "apputils-extension" / "notification.jupyterlab-settings")
    settings.parent.mkdir(parents=True)
    settings.write_text('{"fetchNews": "false"}')
    env = {key: value for key, value in os.environ.items() if not key.startswith("JUPYTER")}
    env.update({f"JUPYTER_{name.upper()}_DIR": str(path) for name, path in jupyter_dirs.items()})
    env["TFDS_DATA_DIR"] = str(coco_data_dir)  # the kernel inherits the server's environment
    if request.param == "course":
        bin_dir = REPO / ".venv" / "bin"  # finds the kernel registered inside .venv
    else:
        bin_dir = request.getfixturevalue("separate_jupyterlab")  # built only when needed
        install_kernel(jupyter_dirs["data"])  # `make install` registers it for the user
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
        env.pop("VIRTUAL_ENV", None)
    root = course_copy(tmp_path / "course")
    port, token = free_port(), secrets.token_hex(16)
    command = [str(bin_dir / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", *(["--allow-root"] if os.geteuid() == 0 else [])]
    log = tmp_path / "jupyterlab.log"
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(process, f"{url}/api/status?token={token}", log)
        yield Server(request.param, url, token, root, renders_widgets=request.param == "course")
    finally:
        stop_process_tree(process)


def prepared_solution(root: Path, lesson: str, output_dir: Path, extra: dict) -> Path:
    """`lesson`'s solution in root/solutions, beside root/sample_images, with the smoke profile's
    values and `extra` injected as the runner's --prepare-only injects them (paths absolute,
    so that it runs from its folder); the data those values stand for are made first."""
    notebook = REPO / "solutions" / f"{lesson}.ipynb"
    parameters = notebook_parameters(notebook, profiles.SMOKE, REPO / "data", output_dir,
                                     root / "sample_images", extra,
                                     feature_cache_dir=REPO / "build" / "feature_cache")
    # The kernel starts with the server's environment: the profile must ask for nothing else.
    assert kernel_environment(profiles.SMOKE, lesson, REPO / "build") == {}
    prepare_data(profiles.SMOKE, [lesson], REPO / "data")
    copy = root / "solutions" / notebook.name
    copy.parent.mkdir()
    outcome = execution.execute(notebook, copy, parameters, cwd=copy.parent, timeout_s=300,
                                prepare_only=True)
    assert outcome.status == "ok", outcome
    return copy


def open_lab(browser, server: Server, lab: str, folder: str = "labs"):
    """Open `folder`/`lab` as a student does; JupyterLab must start the course kernel unasked."""
    page = browser.new_page()
    page.goto(f"{server.url}/lab/tree/{folder}/{lab}?reset&token={server.token}")
    page.wait_for_function(KERNEL_IDLE_OR_DIALOG, timeout=KERNEL_START_MS, polling=250)
    assert page.evaluate("window.dialogsSeen") == [], "JupyterLab asked for something"
    assert page.locator(KERNEL_STATUS).text_content() == f"{DISPLAY_NAME} | Idle"
    assert page.locator(".jp-NotebookPanel-toolbar .jp-Toolbar-kernelName").text_content() \
        == DISPLAY_NAME
    return page


def run_all_and_save(page, server: Server, lab: str,
                     folder: str = "labs") -> nbformat.NotebookNode:
    """Run > Run All Cells, wait for the run to end, save; the notebook as saved."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    page.wait_for_function(RUN_ALL_ENDED, timeout=RUN_ALL_MS, polling=500)
    page.locator('.jp-NotebookPanel-toolbar [data-command="docmanager:save"]').click()
    expect(page.locator(".lm-DockPanel-tabBar .jp-mod-dirty")).to_have_count(0)
    assert page.evaluate("window.dialogsSeen") == [], "JupyterLab asked for something"
    return nbformat.read(server.root / folder / lab, as_version=4)


def screenshot(page, server: Server, lab: str, last_shown, what: str = "") -> None:
    """The notebook as the student sees it, scrolled down to the end of `last_shown`; `what`
    tells apart two screenshots of one notebook."""
    last_shown.evaluate(SCROLL_TO_BOTTOM)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    name = "-".join(part for part in (Path(lab).stem, what, server.name) if part)
    page.screenshot(path=SCREENSHOTS / f"{name}-jupyterlab.png")


def choose_file(page, button, file) -> None:
    """Click an upload `button` and pick `file` (a path, or Playwright's name, mimeType and
    buffer) in the file chooser it opens; its <input> is never in the page to be filled."""
    with page.expect_file_chooser() as chooser:
        button.click()
    chooser.value.set_files(file)


def drawn_shares(image, bands: int = 4) -> list[float]:
    """For each of `bands` horizontal bands of a page's PNG <img>, the share of its pixels that
    something was drawn on (not white once put on white): a figure drawn whole has panels in
    every band, one drawn over by another thread blank or cut off below."""
    import numpy as np
    from PIL import Image

    png = base64.b64decode(image.get_attribute("src").split(",", 1)[1])
    with Image.open(io.BytesIO(png)) as figure:
        gray = np.asarray(Image.alpha_composite(Image.new("RGBA", figure.size, "white"),
                                                figure.convert("RGBA")).convert("L"))
    return [float(np.mean(band < 250)) for band in np.array_split(gray, bands)]


def code_cells(notebook: nbformat.NotebookNode) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def errors(cells: list) -> list[tuple[int, str, str]]:
    """(code cell index, exception name, message) of each error output."""
    return [(index, output.ename, output.evalue) for index, cell in enumerate(cells)
            for output in cell.outputs if output.output_type == "error"]


def shown_text(cells: list) -> str:
    """What the outputs show as text: streams and plain-text representations."""
    return "".join(output.get("text", "") + output.get("data", {}).get("text/plain", "")
                   for cell in cells for output in cell.outputs)


@pytest.mark.slow
def test_getting_started_runs_whole_in_the_course_kernel(browser, server):
    lab = "getting_started.ipynb"
    page = open_lab(browser, server, lab)
    cells = code_cells(run_all_and_save(page, server, lab))
    screenshot(page, server, lab, page.locator(".jp-OutputArea-output").last)
    page.close()
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))
    assert errors(cells) == []
    assert "IProgress not found" not in shown_text(cells)


@pytest.mark.slow
def test_main_lab_runs_to_exercise_1_and_stops_there(browser, server):
    lab = "image_captioning.ipynb"
    page = open_lab(browser, server, lab)
    cells = code_cells(run_all_and_save(page, server, lab))
    reading_cell = page.locator(".jp-CodeCell", has_text="reading captions")
    if server.renders_widgets:  # a live bar, not tqdm's text frozen at its first update
        bar = reading_cell.locator(".jp-OutputArea-output .widget-hbox")
        expect(bar).to_contain_text("reading captions: 100%")
        expect(bar.locator(".widget-hprogress .progress-bar")).to_have_count(1)
    screenshot(page, server, lab, page.locator(".jp-OutputArea-output",
                                               has_text="NotImplementedError: Exercise 1"))
    page.close()

    exercise = next(i for i, cell in enumerate(cells) if "raise NotImplementedError" in cell.source)
    [(where, name, message)] = errors(cells)
    assert (where, name) == (exercise, "NotImplementedError")
    assert message.startswith("Exercise 1") and "\n" not in message, message
    assert [cell.execution_count for cell in cells[:exercise + 1]] == list(range(1, exercise + 2))
    assert all(cell.execution_count is None and not cell.outputs for cell in cells[exercise + 1:])
    [reading] = [output for cell in cells for output in cell.outputs
                 if output.get("data", {}).get("text/plain", "").startswith("reading captions")]
    assert WIDGET_MIME in reading.data  # tqdm.auto chose the notebook bar: a Jupyter widget
    assert "IProgress not found" not in shown_text(cells)


@pytest.mark.slow
@pytest.mark.parametrize("server", ["course"], ids=["course-jupyterlab"], indirect=True)
def test_main_solution_captions_a_photo_uploaded_with_its_button(browser, server, tmp_path):
    lesson = "image_captioning.ipynb"
    prepared_solution(server.root, Path(lesson).stem, tmp_path / "outputs",
                      {"EPOCHS": 3, "EVAL_IMAGES": 16})
    page = open_lab(browser, server, lesson, folder="solutions")
    cells = code_cells(run_all_and_save(page, server, lesson, folder="solutions"))
    assert errors(cells) == []
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))

    upload_cell = page.locator(".jp-CodeCell", has=page.locator(".widget-upload"))
    button = upload_cell.locator("button.widget-upload")
    expect(button).to_contain_text("Your photo")
    shown = upload_cell.locator(".widget-output")  # the cell's own output captions photos[0]

    choose_file(page, button, server.root / "sample_images" / "coffee.jpg")
    expect(shown).to_contain_text("beam: ", timeout=DESCRIBE_MS)
    lines = shown.inner_text().splitlines()
    [greedy] = [line for line in lines if line.startswith("greedy: ")]
    assert len([line for line in lines if line.startswith("beam: ")]) == 1, lines
    assert greedy.removeprefix("greedy: ").strip(), lines
    attention_map = shown.locator("img")  # one figure, a panel per word
    expect(attention_map).to_have_count(1)
    attention_map.evaluate("image => image.decode()")  # laid out at its height once decoded
    expect(attention_map).to_be_visible()
    screenshot(page, server, lesson, shown, what="upload")
    # JupyterLab sends widget messages to a kernel subshell, whose thread may redraw every
    # pyplot figure (IPython's post_execute) while the upload's one is being rendered.
    shares = drawn_shares(attention_map)
    assert min(shares) > 0.01, f"the attention map is blank or cut off: drawn shares {shares}"

    choose_file(page, button, {"name": "notes.jpg", "mimeType": "image/jpeg",
                               "buffer": b"Shopping: milk, eggs.\nNot a photo at all.\n"})
    expect(shown).to_contain_text("error: notes.jpg is not a readable image: ",
                                  timeout=DESCRIBE_MS)
    lines = [line for line in shown.inner_text().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: notes.jpg is not a readable"), lines
    expect(shown.locator("img")).to_have_count(0)  # the photo's map is gone with its captions
    assert page.evaluate("window.dialogsSeen") == [], "JupyterLab asked for something"
    page.close()
