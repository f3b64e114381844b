"""What a run prepares before its kernel starts: data made by one run at a time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from captioning_course import parameters
from captioning_course.profiles import Profile


class SlowCopy:
    """A Source that notes how many runs are writing it at once."""

    def __init__(self):
        self.writing, self.most_at_once, self.made = 0, 0, 0
        self.count = threading.Lock()

    def value(self, data_dir: Path, output_dir: Path) -> str:
        return str(data_dir / "copy")

    def prepare(self, data_dir: Path, data_slice) -> None:
        with self.count:
            self.writing += 1
            self.most_at_once = max(self.most_at_once, self.writing)
        if not (data_dir / "copy").exists():
            time.sleep(0.5)
            (data_dir / "copy").write_text("made")
            self.made += 1
        with self.count:
            self.writing -= 1


def test_two_runs_prepare_the_same_data_one_after_the_other(tmp_path):
    copy = SlowCopy()
    profile = Profile(name="plain", description="", timeout_s=60, data_slice=None,
                      overrides={"lesson": {"DATA_DIR": copy}})
    runs = [threading.Thread(target=parameters.prepare_data, args=(profile, ["lesson"], tmp_path))
            for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert (copy.most_at_once, copy.made) == (1, 1)
