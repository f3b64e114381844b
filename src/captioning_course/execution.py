"""Executing a notebook headless: papermill in a process of its own, stopped with all it started.

The runner and the grader run every notebook through `execute`, with the course kernel and
a time limit; a timeout or Ctrl-C stops papermill, its kernel and whatever a cell started.
What went wrong is named as the notebook's author sees it: the cell's index in the source
notebook and its first line. Given a `Sandbox`, papermill and its kernel run inside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import nbformat
import psutil

from captioning_course.kernel import KERNEL_NAME
from captioning_course.sandbox import Sandbox

# Tags of the cells papermill adds to an executed copy; the author never sees them.
PAPERMILL_TAGS = {"injected-parameters", "papermill-error-cell-tag"}
# The exit code of the papermill process when a cell raised; any other failure means that
# papermill itself stopped (a dead kernel, an unreadable notebook...).
CELL_RAISED = 3
STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: str  # "ok", "failed" (a cell raised), "timeout", "interrupted" or "stopped"
    reason: str = ""  # for "stopped": why papermill stopped, e.g. "DeadKernelError: ..."


def execute(notebook: Path, executed: Path, parameters: dict[str, Any], *, cwd: Path,
            timeout_s: int, env: dict[str, str] | None = None, allow_errors: bool = False,
            log: Path | None = None, prepare_only: bool = False,
            sandbox: Sandbox | None = None) -> Outcome:
    """Run `notebook` into `executed` with the course kernel, `parameters` injected.

    The kernel works in `cwd`, with `env` added to this environment. With `allow_errors`
    every cell runs whatever the earlier ones raised, and the run is "ok" once all have.
    papermill's messages go to `log`, else to this terminal with a progress bar. With
    `prepare_only` the parameters are only injected. On a timeout or a Ctrl-C the whole
    process tree is stopped before this returns.

    With a `sandbox`, `env` is the kernel's whole environment beside PATH and the locale, and
    every path given must be one the sandbox shows.
    """
    with tempfile.TemporaryDirectory() as scratch:
        reason_file = Path(scratch) / "reason"
        # Absolute: in a sandbox, papermill starts in `cwd`.
        arguments = {"input": str(notebook.resolve()), "output": str(executed.resolve()),
                     "cwd": str(cwd.resolve()),
                     "parameters": parameters, "allow_errors": allow_errors,
                     "prepare_only": prepare_only, "progress_bar": log is None and not prepare_only,
                     "reason_file": str(reason_file)}
        command = [sys.executable, "-m", "captioning_course.execution", json.dumps(arguments)]
        with log.open("w") if log is not None else contextlib.nullcontext() as messages:
            try:
                code = _run_stoppable(command, timeout_s, env, messages, cwd,
                                      None if sandbox is None
                                      else sandbox.allowing_writes_to(Path(scratch)))
            except KeyboardInterrupt:
                return Outcome("interrupted")
        reason = reason_file.read_text() if reason_file.is_file() else ""
    if code is None:
        return Outcome("timeout")
    if code in (0, CELL_RAISED):
        return Outcome("ok" if code == 0 else "failed")
    if not reason:  # papermill could not say why: killed, or its Python failed
        reason = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        reason += f"; see {log}" if log is not None else ""
    return Outcome("stopped", reason)


def _run_stoppable(command: list[str], timeout_s: int, env: dict[str, str] | None,
                   messages: IO[str] | None, cwd: Path, sandbox: Sandbox | None) -> int | None:
    """The exit code of `command`, or None when it ran out of time and was stopped."""
    # Keep TensorFlow's C++ start-up chatter out of the executed copies.
    quiet = {"TF_CPP_MIN_LOG_LEVEL": "1", "PYTHONUNBUFFERED": "1"}
    if sandbox is None:
        env, limits = {**os.environ, **quiet, **(env or {})}, None
    else:
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
               "LANG": "C.UTF-8", **quiet, **(env or {})}
        command, limits = sandbox.command(command, env, cwd.resolve()), sandbox.set_limits
    output = {} if messages is None else {"stdout": messages, "stderr": subprocess.STDOUT}
    # In a session of its own, papermill does not see a Ctrl-C meant for the caller.
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                               start_new_session=True, preexec_fn=limits, **output)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if process.returncode is None:  # not reaped yet, so its pid is still papermill's
            stop_process_tree(process)


def _papermill(arguments: dict[str, Any]) -> int:
    """In the papermill process: run the notebook; the exit code tells `execute` how it went."""
    import logging
    import traceback

    import papermill
    from papermill.exceptions import PapermillExecutionError

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # as papermill's CLI does
    try:
        papermill.execute_notebook(
            arguments["input"], arguments["output"], parameters=arguments["parameters"],
            kernel_name=KERNEL_NAME, cwd=arguments["cwd"], progress_bar=arguments["progress_bar"],
            prepare_only=arguments["prepare_only"], allow_errors=arguments["allow_errors"])
    except PapermillExecutionError:
        if arguments["allow_errors"]:
            return 0  # every cell ran; the executed copy holds each one's outcome
        traceback.print_exc()
        return CELL_RAISED
    except Exception as exc:
        traceback.print_exc()
        Path(arguments["reason_file"]).write_text(f"{type(exc).__name__}: {first_line(exc)}")
        return 1
    return 0


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """While the block runs, SIGTERM (a CI cancel, a closed terminal) stops it as Ctrl-C does."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _stopping_signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while the block runs, and deliver them once it ends.

    Blocking them with pthread_sigmask would not do: a signal sent to the process goes to
    any thread that does not block it (bench's memory sampler, say), and Python then runs
    the handler in the main thread all the same. So the main thread's handlers are swapped
    for one that takes note; Python runs handlers nowhere else, so another thread needs none.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: held.append(signum))
                for signum in STOPPING_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)


def stop_process_tree(process: subprocess.Popen) -> None:
    """Kill papermill, its kernel and everything a cell started; reap papermill.

    The kernel runs in a session of its own (jupyter_client), and so does a `!command`
    (pexpect), so papermill's process group alone misses them. Stopped processes cannot
    fork, so the tree is stopped as it is walked and nothing escapes before the kill. The
    tree's process groups are killed too: they hold what a cell left running in the
    background after its parent exited. A Ctrl-C or SIGTERM arriving meanwhile (a second
    one, often) waits until the tree is gone: cut short, the stop would leave suspended
    processes behind.
    """
    with _stopping_signals_held():
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


def added_by_papermill(cell: Any) -> bool:
    """Whether papermill added `cell` to an executed copy (parameters, error marker)."""
    return bool(PAPERMILL_TAGS & set(cell.get("metadata", {}).get("tags", [])))


def first_line(text: object) -> str:
    """The first line of a message (an exception's, a cell's), surrounding blanks left out."""
    return (str(text).strip().splitlines() or [""])[0]


def cell_name(index: int, source: str) -> str:
    """A cell as its author finds it: its index in the source notebook and its first line."""
    return f"cell {index} ({first_line(source)!r})"


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
    for where, cell in _authored_code_cells(source_cells, executed_cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{where} raised {output['ename']}: {output['evalue']}"
        if _still_running(cell):
            return f"{where} was still running"
    return None


def running_cell(source: nbformat.NotebookNode, executed: nbformat.NotebookNode) -> str | None:
    """The cell of `source` still running in `executed` when its run stopped, named as
    `failing_cell` names it."""
    return next((where for where, cell in _authored_code_cells(source.cells, executed.cells)
                 if _still_running(cell)), None)


def _authored_code_cells(source_cells: list, executed_cells: list) -> Iterator[tuple[str, Any]]:
    """Each code cell of an executed copy that its author wrote, with the cell's name."""
    authored = [index for index, cell in enumerate(source_cells) if not added_by_papermill(cell)]
    ran = [cell for cell in executed_cells if not added_by_papermill(cell)]
    for index, cell in zip(authored, ran, strict=False):
        if cell.get("cell_type") == "code":
            yield cell_name(index, cell.get("source", "")), cell


def _still_running(cell: Any) -> bool:
    return cell.get("metadata", {}).get("papermill", {}).get("status") == "running"


if __name__ == "__main__":
    sys.exit(_papermill(json.loads(sys.argv[1])))
