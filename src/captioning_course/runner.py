"""Headless runner: execute lesson notebooks with papermill under a profile.

    python -m captioning_course.runner [--profile smoke|rehearsal|full] [-p NAME VALUE ...]
                                       [--timeout SECONDS] [NOTEBOOK ...]

Each notebook runs in its own folder (so `../sample_images` resolves) in a separate
papermill process with a wall-clock limit. Executed copies and whatever the lesson writes
to OUTPUT_DIR go to BUILD_DIR/PROFILE/STEM/; the sources are never written. The run ends
with a table of status, wall time and the metrics each lesson recorded, and exits non-zero
if any notebook failed, naming the failing cell and keeping the executed copy.

`-p NAME VALUE` sets a parameter of every notebook over the profile's value, typed as
papermill's `-p` types it; `--timeout` replaces the profile's time limit. A run that cannot
go ahead as asked (unknown parameter, notebook without kernel, output folder that cannot be
written) stops with one line and exit code 2 before any kernel starts. Ctrl-C stops the
notebook with its kernel and everything it started, prints the table so far and exits 130.

With --prepare-only, the notebooks are only parameterised (for `make nbval`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
import papermill
import psutil

from captioning_course import data_slice, gpu_on_cpu, profiles, record
from captioning_course.kernel import DISPLAY_NAME, KERNEL_NAME
from captioning_course.profiles import Profile, Source

# Tags of the cells papermill adds to an executed copy; the author never sees them.
PAPERMILL_TAGS = {"injected-parameters", "papermill-error-cell-tag"}
# The words papermill's `-p` reads as Python constants rather than strings.
CONSTANTS = {"True": True, "False": False, "None": None}


class RunnerError(Exception):
    """The run cannot go ahead as asked; found before any kernel starts."""


class UnknownParameterError(RunnerError):
    """A parameter is set that the notebook's `parameters` cell does not declare."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; `results` ends with the notebook it stopped."""

    def __init__(self, results: list[Result]):
        super().__init__()
        self.results = results


@dataclasses.dataclass
class Result:
    notebook: Path
    status: str  # "ok", "failed", "timeout" or "interrupted"
    seconds: float
    executed: Path
    metrics: dict[str, Any] | None = None
    failure: str | None = None


def parameter_value(text: str) -> Any:
    """A value from the command line, typed as papermill's `-p` types it."""
    if text in CONSTANTS:
        return CONSTANTS[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """The parameters `notebook` declares, once it is clear papermill can run it."""
    try:
        nb = nbformat.read(notebook, as_version=4)
    except (OSError, ValueError) as exc:
        raise RunnerError(f"cannot read {notebook} as a notebook ({exc})") from None
    if not any("parameters" in cell.metadata.get("tags", []) for cell in nb.cells):
        raise RunnerError(f"{notebook} has no cell tagged 'parameters'")
    # papermill needs a kernel name to read the parameters cell, even with --kernel.
    if not nb.metadata.get("kernelspec", {}).get("name"):
        raise RunnerError(
            f"{notebook} names no kernel: open it in Jupyter with the course kernel "
            f"'{DISPLAY_NAME}' and save it, or regenerate it with `make labs`"
        )
    return papermill.inspect_notebook(str(notebook))


def notebook_parameters(
    notebook: Path, profile: Profile, data_dir: Path, output_dir: Path,
    sample_images_dir: Path, extra_parameters: dict[str, Any] | None = None,
    feature_cache_dir: Path | None = None,
) -> dict[str, Any]:
    """The values papermill injects into `notebook`: the profile's, then `extra_parameters`."""
    declared = declared_parameters(notebook)
    parameters = profile.overrides_for(notebook.stem)
    extra_parameters = extra_parameters or {}
    for source, names in ((f"profile {profile.name!r}", parameters), ("-p", extra_parameters)):
        unknown = sorted(set(names) - set(declared))
        if unknown:
            raise UnknownParameterError(
                f"{source} sets {', '.join(unknown)} but {notebook} declares no such "
                f"parameter (it declares {', '.join(sorted(declared)) or 'none'})"
            )
    # The runner reads each notebook's record from there, and notebooks must not share it.
    if "OUTPUT_DIR" in extra_parameters:
        raise RunnerError("-p cannot set OUTPUT_DIR; use --build-dir to choose where it goes")
    # Absolute, so that an executed or prepared copy works from any folder.
    paths = {"OUTPUT_DIR": output_dir, "SAMPLE_IMAGES_DIR": sample_images_dir}
    if feature_cache_dir is not None:
        paths["FEATURE_CACHE_DIR"] = feature_cache_dir
    if profile.data_slice is not None and "DATA_DIR" not in parameters:
        paths["DATA_DIR"] = data_dir
    for name, path in paths.items():
        if name in declared:
            parameters[name] = str(path.resolve())
    for name, value in parameters.items():
        if isinstance(value, Source):
            parameters[name] = value.value(data_dir, output_dir)
    return {**parameters, **extra_parameters}


def prepare_folder(folder: Path) -> None:
    """Create `folder` and make sure a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # mkdir accepts an existing folder that cannot be written, and os.access answers
        # root by its privileges, not by what the filesystem allows: only a write tells.
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise RunnerError(f"cannot write in folder {folder}: "
                          f"{exc.strerror or exc}") from None


def clear_folder(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def prepare_data(profile: Profile, lessons: list[str], data_dir: Path) -> None:
    """Make what the profile's values stand for: the data slice, its copies, weights files."""
    if profile.data_slice is not None:  # prepared copies point at it too
        prepare_folder(data_dir)
        data_slice.prepare(data_dir, profile.data_slice)
    sources = {value for lesson in lessons for value in profile.overrides_for(lesson).values()
               if isinstance(value, Source)}
    for source in sorted(sources, key=repr):
        source.prepare(data_dir, profile.data_slice or data_slice.SliceParams())


def kernel_environment(profile: Profile, build_dir: Path) -> dict[str, str]:
    """What the profile's kernels need in their environment: their start-up, if any."""
    if not profile.plays_gpu:
        return {}
    # IPython runs the files of its profile's startup folder before the notebook's first cell.
    ipython_dir = build_dir / "ipython-gpu-on-cpu"
    startup = ipython_dir / "profile_default" / "startup" / "00-play-cudnn-gru.py"
    startup.parent.mkdir(parents=True, exist_ok=True)
    startup.write_text(gpu_on_cpu.STARTUP)
    return {"IPYTHONDIR": str(ipython_dir.resolve())}


def added_by_papermill(cell: Any) -> bool:
    """Whether papermill added `cell` to an executed copy (parameters, error marker)."""
    return bool(PAPERMILL_TAGS & set(cell.get("metadata", {}).get("tags", [])))


def cell_name(index: int, source: str) -> str:
    """A cell as its author finds it: its index in the source notebook and its first line."""
    lines = source.strip().splitlines()
    return f"cell {index} ({(lines[0] if lines else '')!r})"


def failing_cell(notebook: Path, executed: Path) -> str | None:
    """Describe the first cell that raised, or the one still running when the run stopped.

    The cell is named as its author sees it: its index in `notebook`, not in the executed
    copy (where papermill adds cells), and its first line.
    """
    try:
        source_cells = nbformat.read(notebook, as_version=4).cells
        executed_cells = nbformat.read(executed, as_version=4).cells
    except (OSError, ValueError) as exc:
        return f"executed copy {executed} is unreadable ({exc})"
    authored = [index for index, cell in enumerate(source_cells) if not added_by_papermill(cell)]
    ran = [cell for cell in executed_cells if not added_by_papermill(cell)]
    for index, cell in zip(authored, ran, strict=False):
        if cell.cell_type != "code":
            continue
        where = cell_name(index, cell.source)
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{where} raised {output['ename']}: {output['evalue']}"
        if cell.metadata.get("papermill", {}).get("status") == "running":
            return f"{where} was still running"
    return None


def stop_process_tree(process: subprocess.Popen) -> None:
    """Kill papermill, its kernel and everything a cell started; reap papermill.

    The kernel runs in a session of its own (jupyter_client), and so does a `!command`
    (pexpect), so papermill's process group alone misses them. Stopped processes cannot
    fork, so the tree is stopped as it is walked and nothing escapes before the kill. The
    tree's process groups are killed too: they hold what a cell left running in the
    background after its parent exited.
    """
    root = psutil.Process(process.pid)
    tree: set[psutil.Process] = set()
    while new := {root, *root.children(recursive=True)} - tree:
        for proc in new:
            with contextlib.suppress(psutil.Error):
                proc.suspend()
        tree |= new
    groups = set()
    for proc in tree:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(proc.pid))
    groups.discard(os.getpgrp())
    for group in groups:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    process.wait()
    psutil.wait_procs(tree, timeout=10)


def run_stoppable(command: list[str], timeout_s: int, env: dict[str, str] | None = None,
                  **popen: Any) -> str:
    """Run a papermill `command`, with `env` added to this environment: "ok", "failed" or
    "timeout".

    On a timeout, or a Ctrl-C (which then propagates), its whole process tree is stopped.
    """
    # Keep TensorFlow's C++ start-up chatter out of the executed copies.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    # In a session of its own, papermill does not see a Ctrl-C meant for the caller.
    process = subprocess.Popen(command, env=env, start_new_session=True, **popen)
    try:
        return "ok" if process.wait(timeout=timeout_s) == 0 else "failed"
    except subprocess.TimeoutExpired:
        return "timeout"
    finally:
        if process.returncode is None:  # not reaped yet, so its pid is still papermill's
            stop_process_tree(process)


def _execute(notebook: Path, executed: Path, parameters: dict[str, Any], timeout_s: int,
             prepare_only: bool, env: dict[str, str]) -> str:
    command = [
        sys.executable, "-m", "papermill", str(notebook), str(executed),
        "--cwd", str(notebook.parent), "--kernel", KERNEL_NAME,
        "--parameters_yaml", json.dumps(parameters),  # JSON is valid YAML
        "--progress-bar" if not prepare_only else "--prepare-only",
    ]
    try:
        return run_stoppable(command, timeout_s, env)
    except KeyboardInterrupt:
        return "interrupted"


def run(notebooks: list[Path], profile: Profile, data_dir: Path, build_dir: Path,
        sample_images_dir: Path, prepare_only: bool = False,
        extra_parameters: dict[str, Any] | None = None,
        timeout_s: int | None = None) -> list[Result]:
    """Execute `notebooks` in turn under `profile`.

    `extra_parameters` go over the profile's overrides and `timeout_s` replaces its limit.
    Raises RunnerError before any kernel starts if the run cannot go ahead, and Interrupted
    on Ctrl-C, once the interrupted notebook's processes are gone.
    """
    missing = [str(nb) for nb in notebooks if not nb.is_file()]
    if missing:
        raise RunnerError(f"no such notebook: {', '.join(missing)}")
    # Check every notebook and folder before spending minutes on the first notebook.
    planned = []
    for notebook in notebooks:
        output_dir = build_dir / profile.name / notebook.stem
        # One feature cache for every profile and lesson: its key tells their features apart.
        parameters = notebook_parameters(notebook, profile, data_dir, output_dir,
                                         sample_images_dir, extra_parameters,
                                         feature_cache_dir=build_dir / "feature_cache")
        planned.append((notebook, output_dir, parameters))
    for _, output_dir, _ in planned:
        prepare_folder(output_dir)
    prepare_data(profile, [notebook.stem for notebook in notebooks], data_dir)
    limit = profile.timeout_s if timeout_s is None else timeout_s
    env = kernel_environment(profile, build_dir)

    results = []
    for number, (notebook, output_dir, parameters) in enumerate(planned, start=1):
        # Nothing of an earlier run may pass for this run's: not its metrics file, and not
        # the checkpoints a lesson would resume from instead of training the code as it is.
        clear_folder(output_dir)
        executed = output_dir / notebook.name
        print(f"[{number}/{len(planned)}] {notebook} -> {executed} ({profile.name})", flush=True)
        start = time.monotonic()
        status = _execute(notebook, executed, parameters, limit, prepare_only, env)
        result = Result(notebook, status, time.monotonic() - start, executed,
                        metrics=record.load_metrics(output_dir))
        if status != "ok":
            cell = failing_cell(notebook, executed) if executed.is_file() else (
                "papermill wrote no executed copy (see its messages above)")
            stopped = {"timeout": f"timed out after {limit} s; ", "interrupted": "interrupted; "}
            result.failure = stopped.get(status, "") + (cell or "no cell raised")
        results.append(result)
        if status == "interrupted":
            raise Interrupted(results)
    return results


def _scalars(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Numeric leaves of a nested metrics dict, as (dotted key, value)."""
    found = []
    for key, value in sorted(metrics.items()):
        if isinstance(value, dict):
            found += _scalars(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found.append((f"{prefix}{key}", value))
    return found


def summary_table(results: list[Result]) -> str:
    rows = [("notebook", "status", "wall time", "metrics")]
    for r in results:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in _scalars(r.metrics or {})) or "-"
        rows.append((r.notebook.name, r.status, f"{r.seconds:.0f} s", metrics))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True))
             + " | " + row[3] for row in rows]
    lines.insert(1, "-" * (sum(widths) + 3 * len(widths) + len("metrics")))
    failures = [f"FAILED {r.notebook}: {r.failure}\n  executed copy kept at {r.executed}"
                for r in results if r.status != "ok"]
    return "\n".join(lines + failures)


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU here (asked in a child process: TensorFlow is heavy)."""
    out = subprocess.run(
        [sys.executable, "-c",
         "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return out.returncode == 0 and out.stdout.strip() not in ("", "0")


def interrupt(signum: int, frame: Any) -> None:
    """A signal handler that stops a run the way Ctrl-C does."""
    raise KeyboardInterrupt


def positive_seconds(text: str) -> int:
    """An argparse type: a time limit in whole seconds."""
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: every solutions/*.ipynb)")
    parser.add_argument("--profile", default="smoke", choices=sorted(profiles.PROFILES))
    parser.add_argument("-p", "--parameters", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"),
                        help="set a parameter of every notebook, over the profile's value")
    parser.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                        help="time limit per notebook (default: the profile's)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="TFDS data dir for the offline slice (smoke)")
    parser.add_argument("--build-dir", type=Path, default=Path("build"))
    parser.add_argument("--sample-images-dir", type=Path, default=Path("sample_images"))
    parser.add_argument("--prepare-only", action="store_true",
                        help="only write parameterised copies (for nbval)")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted(Path("solutions").glob("*.ipynb"))
    if not notebooks:
        parser.error("no notebooks given and none found in solutions/")
    profile = profiles.get(args.profile)
    if profile.needs_gpu and not args.prepare_only and not gpu_visible():
        print(f"warning: TensorFlow sees no GPU here, and the {profile.name} profile needs one: "
              "on this CPU a single epoch takes hours (getting_started measures it). Run "
              "`make install GPU=1` on a GPU machine, or use PROFILE=smoke or rehearsal.",
              file=sys.stderr, flush=True)
    # A CI cancel or a closed terminal sends SIGTERM: stop everything, as for Ctrl-C.
    signal.signal(signal.SIGTERM, interrupt)
    try:
        results = run(notebooks, profile, args.data_dir, args.build_dir,
                      args.sample_images_dir, prepare_only=args.prepare_only,
                      extra_parameters={name: parameter_value(value)
                                        for name, value in args.parameters},
                      timeout_s=args.timeout)
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # run() has stopped whatever it started
        print()
        print(summary_table(exc.results if isinstance(exc, Interrupted) else []))
        return 130
    print()
    print(summary_table(results))
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
