"""Executing a notebook without a kernel in sight: how papermill's end is read, the failing
cell named as its author sees it, and a process tree stopped whole, even by a second Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from captioning_course import execution

# A papermill stand-in: a child that starts a grandchild; both would wait for ten minutes.
TREE = ["sh", "-c", "sleep 600 & wait"]


@pytest.fixture
def process_tree():
    """A running child and grandchild, as (the child's Popen, every process of the tree)."""
    process = subprocess.Popen(TREE, start_new_session=True)
    root = psutil.Process(process.pid)
    deadline = time.monotonic() + 30
    while not root.children(recursive=True):
        assert time.monotonic() < deadline, "the grandchild never started"
        time.sleep(0.05)
    tree = [root, *root.children(recursive=True)]
    yield process, tree
    for proc in tree:  # only what a failed test left behind
        with contextlib.suppress(psutil.Error):
            proc.kill()
    process.wait()


def still_running(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    return False


@pytest.fixture
def python_s_ctrl_c():
    """Ctrl-C raises KeyboardInterrupt, as in the runner's own process, whatever handler an
    earlier test of the session left on SIGINT (in a full `make test` run one does)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("sender", ["this thread", "another thread"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.usefixtures("python_s_ctrl_c")
def test_a_signal_during_the_stop_waits_until_the_tree_is_gone(process_tree, monkeypatch,
                                                               signum, sender):
    process, tree = process_tree
    # Started before the stop, this thread does not share a signal mask set during it.
    go, sent = threading.Event(), threading.Event()

    def send():
        go.wait()
        os.kill(os.getpid(), signum)
        sent.set()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    suspend = psutil.Process.suspend

    def suspend_then_signal(proc):
        suspend(proc)
        if not go.is_set():  # the first process stopped, the others not yet
            if sender == "this thread":
                os.kill(os.getpid(), signum)
                sent.set()
            go.set()
            sent.wait(10)
            time.sleep(0.1)  # time for Python to run the handler, here and now

    monkeypatch.setattr(psutil.Process, "suspend", suspend_then_signal)
    handlers = {s: signal.getsignal(s) for s in execution.STOPPING_SIGNALS}
    with execution.sigterm_as_ctrl_c(), pytest.raises(KeyboardInterrupt):
        execution.stop_process_tree(process)
    assert sent.is_set()
    assert [proc for proc in tree if still_running(proc)] == []
    assert process.returncode is not None  # reaped
    assert {s: signal.getsignal(s) for s in execution.STOPPING_SIGNALS} == handlers


def test_a_stop_without_signals_raises_nothing(process_tree):
    process, tree = process_tree
    execution.stop_process_tree(process)
    assert [proc for proc in tree if still_running(proc)] == []


def test_sigterm_stops_like_ctrl_c_only_inside_the_block():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), execution.sigterm_as_ctrl_c():
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("code, outcome", [
    (0, execution.Outcome("ok")),
    (execution.CELL_RAISED, execution.Outcome("failed")),
    (None, execution.Outcome("timeout")),
    (-signal.SIGKILL, execution.Outcome("stopped", "killed by SIGKILL")),
    (1, execution.Outcome("stopped", "exit code 1")),
])
def test_how_papermill_ended_is_read_from_its_exit_code(tmp_path, monkeypatch, code, outcome):
    monkeypatch.setattr(execution, "_run_stoppable", lambda *args: code)
    assert execution.execute(tmp_path / "a.ipynb", tmp_path / "b.ipynb", {}, cwd=tmp_path,
                             timeout_s=5) == outcome


def test_why_papermill_stopped_comes_from_papermill_and_a_log_is_named(tmp_path, monkeypatch):
    def stopped(command, timeout_s, env, messages, cwd, sandbox):
        messages.write("Traceback ...\n")
        reason_file = json.loads(command[-1])["reason_file"]
        Path(reason_file).write_text("DeadKernelError: Kernel died")
        return 1

    log = tmp_path / "papermill.log"
    monkeypatch.setattr(execution, "_run_stoppable", stopped)
    assert execution.execute(tmp_path / "a.ipynb", tmp_path / "b.ipynb", {}, cwd=tmp_path,
                             timeout_s=5, log=log) == execution.Outcome(
        "stopped", "DeadKernelError: Kernel died")
    assert log.read_text() == "Traceback ...\n"
    monkeypatch.setattr(execution, "_run_stoppable", lambda *args: 1)
    assert execution.execute(tmp_path / "a.ipynb", tmp_path / "b.ipynb", {}, cwd=tmp_path,
                             timeout_s=5, log=log).reason == f"exit code 1; see {log}"


def test_ctrl_c_while_papermill_runs_is_an_outcome(tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(execution, "_run_stoppable", interrupted)
    assert execution.execute(tmp_path / "a.ipynb", tmp_path / "b.ipynb", {}, cwd=tmp_path,
                             timeout_s=5) == execution.Outcome("interrupted")


def executed_copy(*cells: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode,
                                                           nbformat.NotebookNode]:
    """A source notebook of `cells`, and its executed copy with papermill's own cells added."""
    source = nbformat.v4.new_notebook(cells=list(cells))
    executed = nbformat.from_dict(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("An Exception was encountered",
                                      metadata={"tags": ["papermill-error-cell-tag"]}),
        cells[0],
        nbformat.v4.new_code_cell("SCALE = 3", metadata={"tags": ["injected-parameters"]}),
        *cells[1:],
    ]))
    return source, executed


def test_the_failing_and_the_running_cell_are_named_by_their_index_in_the_source(tmp_path):
    raising = nbformat.v4.new_code_cell("\nvalues = [1, 2]\nvalues[SCALE]", outputs=[
        nbformat.v4.new_output("error", ename="IndexError", evalue="list index out of range")])
    running = nbformat.v4.new_code_cell("import time\ntime.sleep(600)",
                                        metadata={"papermill": {"status": "running"}})
    source, executed = executed_copy(
        nbformat.v4.new_code_cell("SCALE = 2", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_markdown_cell("# Exercise"), raising, running)
    nbformat.write(source, tmp_path / "source.ipynb")
    nbformat.write(executed, tmp_path / "executed.ipynb")
    assert execution.failing_cell(tmp_path / "source.ipynb", tmp_path / "executed.ipynb") == (
        "cell 2 ('values = [1, 2]') raised IndexError: list index out of range")
    assert execution.running_cell(source, executed) == "cell 3 ('import time')"
    (tmp_path / "executed.ipynb").write_text("{not json")
    assert execution.failing_cell(tmp_path / "source.ipynb", tmp_path / "executed.ipynb") \
        .startswith(f"executed copy {tmp_path / 'executed.ipynb'} is unreadable")
