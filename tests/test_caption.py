"""The command line that captions photos with an exported captioner."""

from __future__ import annotations

from captioning_course import caption
from conftest import one_line_error


def test_a_folder_without_an_export_is_refused_in_one_line(tmp_path, capsys):
    assert caption.main([str(tmp_path), "photo.jpg"]) == 2
    assert "is not an exported captioner" in one_line_error(capsys)
