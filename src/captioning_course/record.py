"""The record a lesson leaves behind: key figures as JSON in its output folder.

The runner prints them in its summary table and the tests assert on them, so a number
reported anywhere about a lesson is one that the lesson itself measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"


def save_metrics(output_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write `metrics` to OUTPUT_DIR/metrics.json and return the path."""
    path = Path(output_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return path


def load_metrics(output_dir: str | Path) -> dict[str, Any] | None:
    """The metrics a run recorded, or None if it recorded none."""
    path = Path(output_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
