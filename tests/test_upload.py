"""The upload button hands the lesson the uploaded photo as a file and prints the photo
reader's one-line error for a file that is not a photo."""

from __future__ import annotations

import datetime
import io

import numpy as np
from PIL import Image

from captioning_course.images import read_image
from captioning_course.upload import photo_upload


def upload(widget, name: str, content: bytes) -> None:
    """Upload `content` as `name`, as the browser does; outside a kernel, what the widget's
    output would show goes to standard output."""
    button, _ = widget.children
    button.value = ({"name": name, "type": "", "size": len(content),
                     "content": memoryview(content),
                     "last_modified": datetime.datetime.now(datetime.UTC)},)


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 200, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_an_uploaded_photo_reaches_describe_as_a_readable_file():
    seen = []
    widget = photo_upload(lambda path: seen.append((path.name, read_image(path).shape)))
    upload(widget, "holiday.png", png_bytes(7, 5))
    assert seen == [("holiday.png", (5, 7, 3))]


def test_a_file_that_is_not_a_photo_gets_the_reader_s_error_in_one_line(capsys):
    widget = photo_upload(read_image)
    upload(widget, "notes.jpg", b"not a photo")
    shown = capsys.readouterr().out.rsplit("\r", 1)[-1]  # after clear_output's escapes
    assert shown.startswith("error: notes.jpg is not a readable image") and shown.count("\n") == 1
