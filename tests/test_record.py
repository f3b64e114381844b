"""A lesson's record: written whole or not at all, and a damaged one named, not fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from captioning_course import metrics, record


@pytest.fixture(autouse=True)
def nothing_scored(monkeypatch):
    """As in a lesson that scores no captions, whatever other tests scored in this process."""
    monkeypatch.setattr(metrics, "scoring_used", lambda: None)


def test_metrics_round_trip_and_leave_no_temporary_file(tmp_path):
    path = record.save_metrics(tmp_path / "out", {"loss": {"last": 0.5}, "ok": True})
    assert path == tmp_path / "out" / record.METRICS_FILE
    assert record.load_metrics(tmp_path / "out") == {"loss": {"last": 0.5}, "ok": True}
    assert [p.name for p in path.parent.iterdir()] == [record.METRICS_FILE]


def test_no_record_is_none(tmp_path):
    assert record.load_metrics(tmp_path) is None


def test_a_failed_write_leaves_the_previous_record(tmp_path, monkeypatch):
    record.save_metrics(tmp_path, {"run": 1})

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        record.save_metrics(tmp_path, {"run": 2})
    assert record.load_metrics(tmp_path) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == [record.METRICS_FILE]


def test_a_process_killed_mid_write_leaves_the_previous_record(tmp_path):
    record.save_metrics(tmp_path, {"run": 1})
    # The new text is written but not yet on disk nor renamed when the process dies.
    killed = subprocess.run([sys.executable, "-c",
                             "import os, sys\n"
                             "from captioning_course import record\n"
                             "os.fsync = lambda fd: os._exit(9)\n"
                             "record.save_metrics(sys.argv[1], {'run': 2})",
                             str(tmp_path)])
    assert killed.returncode == 9
    assert record.load_metrics(tmp_path) == {"run": 1}


@pytest.mark.parametrize("text, damage", [
    ('{"loss": 0.5', "metrics.json is damaged: Expecting ',' delimiter"),
    ("", "metrics.json is damaged: Expecting value"),
    ("[1, 2]", "metrics.json is damaged: it holds a list, not a dict of figures"),
    (b"\xff\xfe", "metrics.json is damaged: 'utf-8' codec can't decode"),
], ids=["cut short", "empty", "a list", "not text"])
def test_a_damaged_record_is_named(tmp_path, text, damage):
    path = tmp_path / record.METRICS_FILE
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(record.DamagedMetrics) as raised:
        record.load_metrics(tmp_path)
    assert str(raised.value).startswith(damage)


def test_a_record_of_scored_captions_says_how_they_were_scored(tmp_path, monkeypatch):
    scoring = {"tokenizer": "python regex", "metrics": ["CIDEr"], "left_out": {}}
    monkeypatch.setattr(metrics, "scoring_used", lambda: scoring)
    record.save_metrics(tmp_path, {"CIDEr": 0.5})
    assert json.loads((tmp_path / record.METRICS_FILE).read_text()) == {
        "CIDEr": 0.5, "scoring": scoring}
    with pytest.raises(ValueError, match="'scoring' is the record's own entry"):
        record.save_metrics(tmp_path, {"scoring": 1})
