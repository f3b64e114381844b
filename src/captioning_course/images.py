"""Reading a student's photo, whatever its format, as the RGB array a captioner expects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as a viewer would


def read_image(path: str | Path) -> np.ndarray:
    """Decode JPEG, PNG (with or without alpha), GIF (first frame), BMP or grayscale files.

    Returns a (height, width, 3) uint8 array. Raises FileNotFoundError naming a missing path
    and ValueError when the bytes are not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        with Image.open(path) as image:
            image.seek(0)  # the first frame of an animated GIF
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
                rgb = Image.alpha_composite(canvas, rgba).convert("RGB")
            else:
                rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path} is not a readable image (JPEG, PNG, GIF or BMP): {exc}") from exc
    return np.asarray(rgb, dtype=np.uint8)


def image_files(folder: str | Path) -> list[Path]:
    """The image files in `folder`, sorted by name (other files, like SOURCES.md, are skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no image folder at {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
