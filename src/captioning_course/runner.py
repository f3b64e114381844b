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

With --nbval (`make nbval`), the notebooks are only parameterised, then validated by nbval:
every cell must run without error, each within the notebook's time limit rather than the test
suite's per-test one, which pyproject sets for the project's own tests and would otherwise stop
the full course's feature extraction and training cells.

This module is the command line and its table; `execution` runs one notebook and
`parameters` prepares what it needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from captioning_course import execution, record
from captioning_course.parameters import SetupError as RunnerError
from captioning_course.parameters import (
    add_run_arguments,
    kernel_environment,
    notebook_parameters,
    prepare_data,
    prepare_folder,
    run_arguments,
    warn_without_gpu,
)
from captioning_course.profiles import Profile


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
    metrics_damage: str | None = None  # why the lesson's metrics.json could not be read


def clear_folder(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


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

    results = []
    for number, (notebook, output_dir, parameters) in enumerate(planned, start=1):
        # Nothing of an earlier run may pass for this run's: not its metrics file, and not
        # the checkpoints a lesson would resume from instead of training the code as it is.
        clear_folder(output_dir)
        executed = output_dir / notebook.name
        print(f"[{number}/{len(planned)}] {notebook} -> {executed} ({profile.name})", flush=True)
        start = time.monotonic()
        outcome = execution.execute(notebook, executed, parameters, cwd=notebook.parent,
                                    timeout_s=limit, prepare_only=prepare_only,
                                    env=kernel_environment(profile, notebook.stem, build_dir))
        # papermill stopping on its own is the lesson's failure too: its kernel died, say.
        status = "failed" if outcome.status == "stopped" else outcome.status
        result = Result(notebook, status, time.monotonic() - start, executed)
        try:
            result.metrics = record.load_metrics(output_dir)
        except record.DamagedMetrics as exc:  # the lesson's row says so; the others go on
            result.metrics_damage = str(exc)
        if status != "ok":
            cell = execution.failing_cell(notebook, executed) if executed.is_file() else (
                "papermill wrote no executed copy (see its messages above)")
            stopped = {"timeout": f"timed out after {limit} s; ", "interrupted": "interrupted; ",
                       "stopped": f"papermill stopped: {outcome.reason}; "}
            result.failure = stopped.get(outcome.status, "") + (cell or "no cell raised")
        results.append(result)
        if status == "interrupted":
            raise Interrupted(results)
    return results


def nbval(folder: Path, limit_s: int) -> int:
    """pytest's exit code for `pytest --nbval-lax` on the notebooks under `folder`, each cell
    allowed `limit_s` seconds by both pytest-timeout and nbval."""
    return subprocess.call([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider",
                            "-o", "addopts=", "-o", f"timeout={limit_s}",
                            f"--nbval-cell-timeout={limit_s}", str(folder)])


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
        metrics = (", ".join(f"{k}={v:.4g}" for k, v in _scalars(r.metrics or {}))
                   or r.metrics_damage or "-")
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
    add_run_arguments(parser)
    parser.add_argument("--build-dir", type=Path, default=Path("build"))
    parser.add_argument("--nbval", action="store_true",
                        help="write parameterised copies and validate them with nbval")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted(Path("solutions").glob("*.ipynb"))
    if not notebooks:
        parser.error("no notebooks given and none found in solutions/")
    profile, extra_parameters = run_arguments(args)
    if not args.nbval:  # nbval's copies are only prepared here
        warn_without_gpu(profile)
    try:
        with execution.sigterm_as_ctrl_c():
            results = run(notebooks, profile, args.data_dir, args.build_dir,
                          args.sample_images_dir, prepare_only=args.nbval,
                          extra_parameters=extra_parameters,
                          timeout_s=args.timeout)
    except RunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # run() has stopped whatever it started
        print()
        print(summary_table(exc.results if isinstance(exc, Interrupted) else []))
        return 130
    if args.nbval:
        return nbval(args.build_dir / profile.name, args.timeout or profile.timeout_s)
    print()
    print(summary_table(results))
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
