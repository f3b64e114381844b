"""The record a lesson leaves behind: key figures as JSON in its output folder.

The runner prints them in its summary table and the tests assert on them, so a number
reported anywhere about a lesson is one that the lesson itself measured. A lesson that
scored captions also gets how they were scored (`metrics.scoring`), which depends on the
machine.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from captioning_course import metrics as caption_metrics

METRICS_FILE = "metrics.json"
SCORING = "scoring"  # the entry the record adds; a lesson's own figures must not use it


class DamagedMetrics(ValueError):
    """A metrics file that holds no record: not JSON, or not a dict of figures."""


def save_metrics(output_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write `metrics` to OUTPUT_DIR/metrics.json and return the path.

    The file is replaced whole or not at all: a crash mid-write leaves the previous one.
    """
    scoring = caption_metrics.scoring_used()
    if scoring is not None:
        if SCORING in metrics:
            raise ValueError(f"{SCORING!r} is the record's own entry: name the figure otherwise")
        metrics = {**metrics, SCORING: scoring}
    text = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    path = Path(output_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # In the same folder, so that the rename is atomic; opened as a new file, so that it
    # gets the permissions of any file written here.
    temporary = path.with_name(f".{METRICS_FILE}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("x") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def load_metrics(output_dir: str | Path) -> dict[str, Any] | None:
    """The metrics a run recorded, or None if it recorded none.

    Raises DamagedMetrics, naming the damage, when the file holds no record.
    """
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError too
        raise DamagedMetrics(f"{METRICS_FILE} is damaged: {exc}") from None
    if not isinstance(metrics, dict):
        raise DamagedMetrics(f"{METRICS_FILE} is damaged: it holds a {type(metrics).__name__}, "
                             "not a dict of figures")
    return metrics
