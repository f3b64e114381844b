"""What a lesson's run under a profile needs before its kernel starts.

The values papermill injects (the profile's, then the command line's, typed as papermill's
`-p` types them, each checked against the notebook's `parameters` cell), the folders the run
writes in, the data and weights files the profile's values stand for, the kernel's
environment, and whether the machine has the GPU the profile needs. The runner and the
grader share all of it, so that a lab is graded exactly as its lesson runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import nbformat
import papermill

from captioning_course import data_slice, gpu_on_cpu, profiles
from captioning_course.kernel import DISPLAY_NAME
from captioning_course.profiles import Profile, Source

# The words papermill's `-p` reads as Python constants rather than strings.
CONSTANTS = {"True": True, "False": False, "None": None}


class SetupError(Exception):
    """The run cannot go ahead as asked; found before any kernel starts."""


class UnknownParameterError(SetupError):
    """A parameter is set that the notebook's `parameters` cell does not declare."""


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


def positive_seconds(text: str) -> int:
    """An argparse type: a time limit in whole seconds."""
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds, got {text!r}")
    return int(text)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What every command that runs lessons takes: --profile, -p NAME VALUE, --timeout,
    --data-dir and --sample-images-dir."""
    parser.add_argument("--profile", default="smoke", choices=sorted(profiles.PROFILES))
    parser.add_argument("-p", "--parameters", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"),
                        help="set a parameter of every notebook, over the profile's value")
    parser.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                        help="time limit per notebook (default: the profile's)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="where the offline data slice, its copies and weights files go")
    parser.add_argument("--sample-images-dir", type=Path, default=Path("sample_images"))


def run_arguments(args: argparse.Namespace) -> tuple[Profile, dict[str, Any]]:
    """The profile and the -p values that `add_run_arguments` parsed."""
    return (profiles.get(args.profile),
            {name: parameter_value(value) for name, value in args.parameters})


def warn_without_gpu(profile: Profile) -> None:
    """Warn, before hours are spent, when `profile` needs a GPU and TensorFlow sees none."""
    if profile.needs_gpu and not gpu_visible():
        print(f"warning: TensorFlow sees no GPU here, and the {profile.name} profile needs one: "
              "on this CPU a single epoch takes hours (getting_started measures it). Run "
              "`make install GPU=1` on a GPU machine, or use PROFILE=smoke or rehearsal.",
              file=sys.stderr, flush=True)


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """The parameters `notebook` declares, once it is clear papermill can run it."""
    try:
        nb = nbformat.read(notebook, as_version=4)
    except (OSError, ValueError) as exc:
        raise SetupError(f"cannot read {notebook} as a notebook ({exc})") from None
    if not any("parameters" in cell.metadata.get("tags", []) for cell in nb.cells):
        raise SetupError(f"{notebook} has no cell tagged 'parameters'")
    # papermill needs a kernel name to read the parameters cell, even with --kernel.
    if not nb.metadata.get("kernelspec", {}).get("name"):
        raise SetupError(
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
        raise SetupError("-p cannot set OUTPUT_DIR; use --build-dir to choose where it goes")
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
        raise SetupError(f"cannot write in folder {folder}: {exc.strerror or exc}") from None


def prepare_data(profile: Profile, lessons: list[str], data_dir: Path) -> None:
    """Make what the profile's values stand for: the data slice, its copies, weights files.

    One run at a time writes them: a second run (a grading beside an execution, say) waits
    for the first, then finds them made.
    """
    from filelock import FileLock

    prepare_folder(data_dir)
    with FileLock(data_dir / ".prepare.lock"):
        if profile.data_slice is not None:  # prepared copies point at it too
            data_slice.prepare(data_dir, profile.data_slice)
        sources = {value for lesson in lessons for value in profile.overrides_for(lesson).values()
                   if isinstance(value, Source)}
        for source in sorted(sources, key=repr):
            source.prepare(data_dir, profile.data_slice or data_slice.SliceParams())


def kernel_environment(profile: Profile, lesson: str, build_dir: Path) -> dict[str, str]:
    """What `lesson`'s kernels need in their environment under `profile`: their start-up."""
    startup = []
    if profile.plays_gpu:
        startup.append(gpu_on_cpu.STARTUP)
    devices = profile.logical_cpus.get(lesson)
    if devices:
        startup.append(gpu_on_cpu.split_cpu_startup(devices))
    if not startup:
        return {}
    # IPython runs the files of its profile's startup folder before the notebook's first cell.
    ipython_dir = build_dir / "ipython-startup" / f"{profile.name}-{lesson}"
    startup_file = ipython_dir / "profile_default" / "startup" / "00-play-the-gpu.py"
    startup_file.parent.mkdir(parents=True, exist_ok=True)
    startup_file.write_text("".join(startup))
    return {"IPYTHONDIR": str(ipython_dir.resolve())}


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU here (asked in a child process: TensorFlow is heavy)."""
    out = subprocess.run(
        [sys.executable, "-c",
         "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return out.returncode == 0 and out.stdout.strip() not in ("", "0")
