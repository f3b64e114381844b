"""A sandbox for code the course does not trust: a student's notebook, run by the grader.

The notebook's papermill process, its kernel and whatever a cell starts run in bubblewrap:

- the whole system read-only; the instructor's home, the class's folder and the grades'
  folder replaced by empty ones; in them, only what the run needs (the course, its Python,
  the data) shown again, read-only;
- one folder of its own writable (the run's output folder and executed copy), an empty /tmp
  and an empty HOME inside it;
- a network namespace of its own: a loopback and nothing else;
- an environment holding only what it is given;
- limits on memory, processes and open files, set as resource limits, which bubblewrap and
  everything it starts inherit.

Run by root, the sandbox's processes become `nobody` once bubblewrap has mounted what they
see: root is exempt from the process limit and could undo the mounts.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import captioning_course

NOBODY = 65534
# The folder inside the sandbox that HOME names; it lives on the sandbox's own /tmp.
HOME = "/tmp/home"
INSTALL_HINT = ("install bubblewrap (Debian and Ubuntu: sudo apt-get install bubblewrap), or "
                "grade with --no-sandbox to give the students' code your own rights")


class SandboxUnavailable(Exception):
    """No sandbox can be made on this machine."""


@dataclasses.dataclass(frozen=True)
class Limits:
    memory_bytes: int = 6 * 2**30
    processes: int = 256
    open_files: int = 1024

    @property
    def memory(self) -> str:
        return f"{self.memory_bytes / 2**30:g} GB"


@dataclasses.dataclass(frozen=True)
class Sandbox:
    """What a sandboxed command may see and do."""

    writable: tuple[Path, ...]
    readable: tuple[Path, ...]  # shown read-only, even inside a hidden folder
    hidden: tuple[Path, ...]  # replaced by empty folders
    limits: Limits = Limits()

    def allowing_writes_to(self, *folders: Path) -> Sandbox:
        return dataclasses.replace(self, writable=self.writable + folders)

    def command(self, command: list[str], env: dict[str, str], cwd: Path) -> list[str]:
        """`command` wrapped in bubblewrap, with `env` as its whole environment."""
        as_root = os.geteuid() == 0
        mounts: list[tuple[Path, list[str]]] = []
        for folder in self.hidden:
            mounts.append((folder, ["--perms", "0555", "--tmpfs", str(folder)]))
        for path in self.readable:
            mounts.append((path, ["--ro-bind", str(path), str(path)]))
        for folder in self.writable:
            if as_root:  # `nobody` must be able to write there
                _give_to_nobody(folder)
            mounts.append((folder, ["--bind", str(folder), str(folder)]))
        # bubblewrap makes the folders leading to a mount on an empty folder 0700, which
        # `nobody` could not cross.
        empty = (Path("/tmp"), *self.hidden)
        leading = {parent for target, _ in mounts for parent in target.parents
                   if any(parent != root and parent.is_relative_to(root) for root in empty)}
        mounts += [(folder, ["--perms", "0755", "--dir", str(folder)]) for folder in leading]
        # A folder's mount before those inside it, which land on top of it.
        mounts.sort(key=lambda mount: len(mount[0].parts))
        # /tmp lives in memory, which RLIMIT_DATA does not count: its size is capped apart.
        argv = [_bwrap(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--perms", "1777", "--size", str(self.limits.memory_bytes), "--tmpfs", "/tmp",
                "--perms", "0777", "--dir", HOME]
        for _, arguments in mounts:
            argv += arguments
        argv += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--die-with-parent", "--new-session", "--clearenv", "--chdir", str(cwd)]
        for name, value in {**env, "HOME": HOME}.items():
            argv += ["--setenv", name, value]
        if as_root:
            argv += ["--cap-add", "CAP_SETUID,CAP_SETGID", "--", "setpriv",
                     f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        else:
            argv += ["--unshare-user"]
        return [*argv, "--", *command]

    def refusal(self, ename: str, evalue: str) -> str | None:
        """What the sandbox refused, if it is what raised `ename: evalue` in a sandboxed run."""
        if ename == "MemoryError":
            return f"memory limit {self.limits.memory} reached"
        if "Resource temporarily unavailable" in evalue:  # fork(), thread start: EAGAIN
            return f"process limit {self.limits.processes} reached"
        if "Too many open files" in evalue:
            return f"open-file limit {self.limits.open_files} reached"
        if (ename in ("ConnectionRefusedError", "gaierror") or "Network is unreachable" in evalue
                or "Temporary failure in name resolution" in evalue):
            return "network is not available while grading"
        if "Read-only file system" in evalue or ename == "PermissionError":
            return "only the file's own output folder can be written while grading"
        if any(f"'{folder}" in evalue for folder in self.hidden):
            return "the instructor's files, the class and the grades are hidden while grading"
        variable = re.fullmatch(r"'(\w+)'", evalue) if ename == "KeyError" else None
        if variable and variable[1] in os.environ:
            return f"environment variable {variable[1]} is not passed while grading"
        return None

    def set_limits(self) -> None:
        """Run in the child before bubblewrap starts: the limits all its processes inherit."""
        # RLIMIT_DATA caps the memory a process allocates, mmap's included, but not what
        # it maps read-only (libraries), so TensorFlow starts well under it.
        for limit, value in ((resource.RLIMIT_DATA, self.limits.memory_bytes),
                             (resource.RLIMIT_NPROC, self.limits.processes),
                             (resource.RLIMIT_NOFILE, self.limits.open_files)):
            resource.setrlimit(limit, (value, value))


def _bwrap() -> str:
    found = shutil.which("bwrap")
    if found is None:
        raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
    return found


def _give_to_nobody(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)


def check_available() -> None:
    """Raise SandboxUnavailable, saying what to do, unless a sandbox can be made here."""
    probe = Sandbox(writable=(), readable=(Path(sys.prefix),), hidden=())
    argv = probe.command([sys.executable, "-c", "pass"], {}, Path("/"))
    done = subprocess.run(argv, capture_output=True, text=True, preexec_fn=probe.set_limits)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise SandboxUnavailable(f"bubblewrap cannot make a sandbox here ({why}); user "
                                 f"namespaces may be disabled: {INSTALL_HINT}")


def grading_sandbox(folder: Path, out: Path, data_dir: Path, sample_images_dir: Path,
                   extra_parameters: dict[str, Any], limits: Limits) -> tuple[Sandbox, dict]:
    """The sandbox every file of the class runs in, and what its kernels' environment adds.

    It shows the Python, the course and the data (the instructor's TFDS and Keras folders
    included, for the full course's COCO and ImageNet weights), and hides the instructor's
    home, the class and the grades. Each run adds its own output folder as writable.
    """
    homes = {Path.home(), Path(pwd.getpwuid(os.getuid()).pw_dir)}
    package = Path(captioning_course.__file__).resolve().parent
    # The course: the repository the package is installed from (src/captioning_course), shown
    # whole even where it lies in a hidden folder or in /tmp, which the sandbox replaces.
    course = package.parents[1] if package.parent.name == "src" else package
    readable = {Path(sys.base_prefix), Path(sys.prefix), course, data_dir, sample_images_dir}
    env = {}
    for variable, folder_in_home in (("TFDS_DATA_DIR", "tensorflow_datasets"),
                                     ("KERAS_HOME", ".keras")):
        shared = Path.home() / folder_in_home
        if shared.is_dir():
            readable.add(shared)
            env[variable] = str(shared.resolve())
    for value in extra_parameters.values():  # `-p DATA_DIR /mnt/coco`, say
        path = Path(str(value).removeprefix("file://"))
        if path.is_absolute() and path.exists():
            readable.add(path)
    resolved = {path.resolve() for path in readable if path.exists()}
    hidden = {path.resolve() for path in (*homes, folder, out)}
    return Sandbox(writable=(), readable=tuple(sorted(resolved)), hidden=tuple(sorted(hidden)),
                   limits=limits), env
