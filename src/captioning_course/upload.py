"""An upload button that captions the student's own photo, for the end of every lesson.

The lesson says what to do with a photo (`describe(path)`: caption it, show where the model
looked); this widget only brings the photo from the student's computer to a file the photo
reader can open, and prints the reader's one-line error for a file that is not a photo.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import ipywidgets as widgets

# What phones and cameras write; HEIC is listed by its suffix, since browsers give it no type.
ACCEPTED = "image/*,.heic,.heif"


def photo_upload(describe: Callable[[Path], object]) -> widgets.VBox:
    """An upload button and the output of `describe(path)` for each photo uploaded with it."""
    button = widgets.FileUpload(accept=ACCEPTED, multiple=False, description="Your photo")
    output = widgets.Output()

    def on_upload(change) -> None:
        if not change["new"]:
            return
        [uploaded] = change["new"]
        name = Path(uploaded["name"]).name or "photo"
        output.clear_output(wait=True)
        with output, tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_bytes(bytes(uploaded["content"]))
            try:
                describe(path)
            except (FileNotFoundError, ValueError) as error:
                print(f"error: {str(error).replace(str(path), name)}")

    button.observe(on_upload, names="value")
    return widgets.VBox([button, output])
