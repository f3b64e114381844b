"""Headless runner: execute lesson notebooks with papermill under a profile.

    python -m captioning_course.runner [--profile smoke|full] [NOTEBOOK ...]

Each notebook runs in its own folder (so `../sample_images` resolves) in a separate
papermill process with a wall-clock limit. Executed copies and whatever the lesson writes
to OUTPUT_DIR go to BUILD_DIR/PROFILE/STEM/; the sources are never written. The run ends
with a table of status, wall time and the metrics each lesson recorded, and exits non-zero
if any notebook failed, naming the failing cell and keeping the executed copy.

With --prepare-only, the notebooks are only parameterised (for `make nbval`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import papermill

from captioning_course import data_slice, profiles, record
from captioning_course.kernel import KERNEL_NAME
from captioning_course.profiles import Profile

# Path parameters the runner fills in for every notebook that declares them, as absolute
# paths, so an executed or prepared copy works from any folder.
PATH_PARAMETERS = ("DATA_DIR", "OUTPUT_DIR", "SAMPLE_IMAGES_DIR")


class UnknownParameterError(ValueError):
    """A profile sets a parameter that the notebook's `parameters` cell does not declare."""


@dataclasses.dataclass
class Result:
    notebook: Path
    status: str  # "ok", "failed" or "timeout"
    seconds: float
    executed: Path
    metrics: dict[str, Any] | None = None
    failure: str | None = None


def notebook_parameters(
    notebook: Path, profile: Profile, data_dir: Path, output_dir: Path,
    sample_images_dir: Path,
) -> dict[str, Any]:
    """The values papermill injects into `notebook` under `profile`."""
    declared = papermill.inspect_notebook(str(notebook))
    if not declared:
        raise UnknownParameterError(f"{notebook} has no cell tagged 'parameters'")
    parameters = profile.overrides_for(notebook.stem)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise UnknownParameterError(
            f"profile {profile.name!r} sets {', '.join(unknown)} but {notebook} declares no "
            f"such parameter (it declares {', '.join(sorted(declared))})"
        )
    paths = {"OUTPUT_DIR": output_dir, "SAMPLE_IMAGES_DIR": sample_images_dir}
    if profile.data_slice is not None:
        paths["DATA_DIR"] = data_dir
    for name, path in paths.items():
        if name in declared:
            parameters[name] = str(path.resolve())
    return parameters


def failing_cell(executed: Path) -> str | None:
    """Describe the first cell that raised, or the cell still running when time ran out."""
    try:
        nb = nbformat.read(executed, as_version=4)
    except (OSError, ValueError) as exc:
        return f"executed copy {executed} is unreadable ({exc})"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
        where = f"cell {index} (In [{cell.get('execution_count') or ' '}]: {first_line!r})"
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{where} raised {output['ename']}: {output['evalue']}"
        if cell.metadata.get("papermill", {}).get("status") == "running":
            return f"{where} was still running"
    return None


def _execute(notebook: Path, executed: Path, parameters: dict[str, Any], timeout_s: int,
             prepare_only: bool) -> str:
    command = [
        sys.executable, "-m", "papermill", str(notebook), str(executed),
        "--cwd", str(notebook.parent), "--kernel", KERNEL_NAME,
        "--parameters_yaml", json.dumps(parameters),  # JSON is valid YAML
        "--progress-bar" if not prepare_only else "--prepare-only",
    ]
    # Keep TensorFlow's C++ start-up chatter out of the executed copies.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        return "ok" if process.wait(timeout=timeout_s) == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the kernel is in the same session
        process.wait()
        return "timeout"


def run(notebooks: list[Path], profile: Profile, data_dir: Path, build_dir: Path,
        sample_images_dir: Path, prepare_only: bool = False) -> list[Result]:
    missing = [str(nb) for nb in notebooks if not nb.is_file()]
    if missing:
        raise FileNotFoundError(f"no such notebook: {', '.join(missing)}")
    # Check every notebook's parameters before spending minutes on the first one.
    planned = []
    for notebook in notebooks:
        output_dir = build_dir / profile.name / notebook.stem
        parameters = notebook_parameters(notebook, profile, data_dir, output_dir,
                                         sample_images_dir)
        planned.append((notebook, output_dir, parameters))
    if profile.data_slice is not None:  # prepared copies point at it too
        data_slice.prepare(data_dir, profile.data_slice)

    results = []
    for number, (notebook, output_dir, parameters) in enumerate(planned, start=1):
        output_dir.mkdir(parents=True, exist_ok=True)
        # A metrics file from an earlier run must never pass for this run's.
        (output_dir / record.METRICS_FILE).unlink(missing_ok=True)
        executed = output_dir / notebook.name
        print(f"[{number}/{len(planned)}] {notebook} -> {executed} ({profile.name})", flush=True)
        start = time.monotonic()
        status = _execute(notebook, executed, parameters, profile.timeout_s, prepare_only)
        result = Result(notebook, status, time.monotonic() - start, executed,
                        metrics=record.load_metrics(output_dir))
        if status != "ok":
            result.failure = failing_cell(executed) if executed.is_file() else (
                "papermill wrote no executed copy (see its messages above)")
            if status == "timeout":
                result.failure = f"timed out after {profile.timeout_s} s; {result.failure}"
        results.append(result)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: every solutions/*.ipynb)")
    parser.add_argument("--profile", default="smoke", choices=sorted(profiles.PROFILES))
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
    try:
        results = run(notebooks, profiles.get(args.profile), args.data_dir, args.build_dir,
                      args.sample_images_dir, prepare_only=args.prepare_only)
    except (UnknownParameterError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(summary_table(results))
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
