"""The environment `make install` builds: pins honoured, python3 kernel inside .venv."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

from conftest import REPO

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)")


def requirement_lines() -> list[str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_every_requirement_is_pinned_and_installed_at_that_version():
    lines = requirement_lines()
    assert lines
    for line in lines:
        match = PIN.match(line)
        assert match, f"not pinned exactly: {line!r}"
        name, version = match.groups()
        assert metadata.version(name) == version, f"{name} installed {metadata.version(name)}"


def test_python3_kernel_runs_in_this_environment():
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert Path(spec.argv[0]).parent == Path(sys.executable).parent, spec.argv
