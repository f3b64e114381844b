"""The course kernel: one name that every Jupyter of the user finds, running this clone's `.venv`.

    python -m captioning_course.kernel                  (what `make install` runs)
    python -m captioning_course.kernel --inside-only    (`make test`'s Python 3.10 environment)

The kernel is registered twice under the same name, pointing at this interpreter:

- in the user's Jupyter data folder (`--user`), where any JupyterLab looks, including the one
  Vertex AI Workbench serves from its own Python;
- inside `.venv` (`--sys-prefix`). Tools that run from `.venv` (papermill, nbval, `make lab`)
  prefer it to the user's, so the tests of one clone never run another clone's code, even
  after `make install` in that other clone re-pointed the user-wide kernel.

Every notebook's kernelspec names this kernel, so JupyterLab selects it when a lab is opened.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KERNEL_NAME = "captioning-course"
DISPLAY_NAME = "Python (captioning course)"
KERNELSPEC = {"display_name": DISPLAY_NAME, "language": "python", "name": KERNEL_NAME}
# TensorFlow's C++ notices (oneDNN, CUDA drivers looked for, tf.data's buffer hints) would show
# as red text under the students' cells; errors still do.
KERNEL_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def registered_python(kernels_dir: Path) -> str | None:
    """The interpreter the course kernel in `kernels_dir` runs, or None if none is there."""
    spec = kernels_dir / KERNEL_NAME / "kernel.json"
    try:
        return json.loads(spec.read_text())["argv"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def install(inside_only: bool = False) -> str:
    """Register the kernel inside this environment and, unless `inside_only`, for the user;
    say where it points."""
    from ipykernel.kernelspec import install as install_kernelspec
    from jupyter_core.paths import jupyter_data_dir

    spec = {"kernel_name": KERNEL_NAME, "display_name": DISPLAY_NAME, "env": KERNEL_ENV}
    if inside_only:
        install_kernelspec(prefix=sys.prefix, **spec)
        return f"kernel {KERNEL_NAME!r} ({DISPLAY_NAME}) runs {sys.executable} inside {sys.prefix}"
    user_kernels = Path(jupyter_data_dir()) / "kernels"  # honours JUPYTER_DATA_DIR
    before = registered_python(user_kernels)
    for where in ({"prefix": sys.prefix}, {"user": True}):
        install_kernelspec(**where, **spec)
    now = registered_python(user_kernels)
    kernel = f"kernel {KERNEL_NAME!r} ({DISPLAY_NAME})"
    if before is None:
        return f"{kernel} registered for this user: it runs {now}"
    if before == now:
        return f"{kernel} runs {now}"
    return f"{kernel} now runs {now} (it ran {before}, from another clone, before)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inside-only", action="store_true",
                        help="register it inside this environment only, leaving the user's "
                             "kernel where it points (for a second environment of the course)")
    print(install(parser.parse_args(argv).inside_only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
