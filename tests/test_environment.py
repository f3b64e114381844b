"""The environment `make install` builds: pins on every supported Python, the course kernel."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from packaging.requirements import Requirement

from captioning_course.kernel import KERNEL_NAME
from conftest import OLDEST_PYTHON, REPO

SUPPORTED = [(3, minor) for minor in range(10, 14)]  # TensorFlow 2.21's Pythons


def requirements() -> list[Requirement]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]


def test_every_requirement_is_pinned_and_installed_at_that_version():
    applicable = [r for r in requirements() if r.marker is None or r.marker.evaluate()]
    assert applicable
    for requirement in requirements():
        assert re.fullmatch(r"==[^,*]+", str(requirement.specifier)), (
            f"not pinned exactly: {requirement}")
    for requirement in applicable:
        pinned = str(requirement.specifier)[2:]
        installed = metadata.version(requirement.name)
        assert installed == pinned, f"{requirement.name} installed {installed}, pinned {pinned}"


def test_each_package_has_one_pin_per_python():
    for version in SUPPORTED:
        environment = {"python_version": f"{version[0]}.{version[1]}"}
        names = [r.name.lower() for r in requirements()
                 if r.marker is None or r.marker.evaluate(environment)]
        assert len(names) == len(set(names)), f"two pins of one package for Python {version}"


def test_course_kernel_inside_venv_runs_this_environment():
    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    assert Path(spec.argv[0]).parent == Path(sys.executable).parent, spec.argv


def supported_pythons() -> dict[tuple[int, int], str]:
    """Each supported Python version found on PATH or in pyenv, with its interpreter."""
    candidates = [shutil.which(f"python{major}.{minor}") for major, minor in SUPPORTED]
    pyenv = Path.home() / ".pyenv" / "versions"
    candidates += [str(p) for p in sorted(pyenv.glob("3.*/bin/python3.*")) if p.name[-1].isdigit()]
    found = {}
    for candidate in filter(None, candidates):
        out = subprocess.run([candidate, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True)
        if out.returncode == 0:
            version = tuple(int(part) for part in out.stdout.split())
            if version in SUPPORTED:
                found.setdefault(version, candidate)
    return found


# What the oldest supported Python's environment has installed, printed as JSON.
INSTALLED_VERSIONS = """
import json, sys
from importlib import metadata
print(json.dumps({name: metadata.version(name) for name in sys.argv[1:]}))
"""


def test_the_oldest_python_runs_its_own_pins():
    """`make test` runs the rehearsal there: it must be Python 3.10 with the 3.10 pins."""
    environment = {"python_version": "3.10"}
    pins = {r.name: str(r.specifier)[2:] for r in requirements()
            if r.marker is None or r.marker.evaluate(environment)}
    done = subprocess.run([str(OLDEST_PYTHON), "-c", INSTALLED_VERSIONS, *pins], check=True,
                          capture_output=True, text=True)
    assert json.loads(done.stdout) == pins
    version = subprocess.run([str(OLDEST_PYTHON), "-c", "import sys; print(*sys.version_info[:2])"],
                             check=True, capture_output=True, text=True).stdout.split()
    assert version == ["3", "10"]


@pytest.mark.slow
def test_pins_resolve_on_the_newest_supported_python(tmp_path):
    """A pin bump that drops a supported Python fails here, not on a student's machine."""
    found = supported_pythons()
    if not found:
        pytest.skip("no Python 3.10 to 3.13 besides this one on the machine")
    version = max(found)
    venv = tmp_path / "venv"
    subprocess.run([found[version], "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    # An older pip's resolver can take many minutes on these pins; a current one, seconds.
    subprocess.run([*pip, "install", "--quiet", "--upgrade", "pip"], check=True,
                   capture_output=True)
    out = subprocess.run([*pip, "install", "--dry-run", "--ignore-installed", "--quiet",
                          "-r", str(REPO / "requirements.txt")], capture_output=True, text=True)
    problems = [line for line in out.stderr.splitlines() if "ERROR" in line]
    assert out.returncode == 0, f"Python {version}: {problems or out.stderr[-2000:]}"


def test_make_install_names_the_python_to_install_when_none_fits(tmp_path):
    """With only an unsupported python3 on PATH, one line says what to install."""
    (tmp_path / "python3").symlink_to("/bin/false")  # answers like a Python of no use
    out = subprocess.run(["make", "-B", "-s", "install"], cwd=REPO, capture_output=True,
                         text=True, env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
                         executable=shutil.which("make"))
    assert out.returncode != 0
    assert "make install needs Python 3.10 to 3.13" in out.stdout + out.stderr


def test_the_linter_writes_code_for_the_oldest_python_the_course_supports():
    """ruff's upgrade rules rewrite code for its target: a newer one would break Python 3.10."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    oldest = re.search(r">=\s*3\.(\d+)", project["project"]["requires-python"])[1]
    assert project["tool"]["ruff"]["target-version"] == f"py3{oldest}"
