"""Input handling of the captioner: every common format, clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from captioning_course.images import image_files, read_image
from conftest import REPO

PHOTO = REPO / "sample_images" / "chelsea.jpg"


@pytest.mark.parametrize("suffix,mode", [
    (".jpg", "RGB"), (".png", "RGB"), (".png", "RGBA"), (".png", "LA"), (".bmp", "RGB"),
    (".gif", "P"), (".jpg", "L"), (".png", "I;16"),
])
def test_reads_common_formats_as_rgb(tmp_path, suffix, mode):
    path = tmp_path / f"photo_{mode.replace(';', '')}{suffix}"
    Image.open(PHOTO).convert(mode if mode != "LA" else "LA").save(path)
    pixels = read_image(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (300, 451, 3)


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    rgba[0, 0] = (255, 0, 0, 255)  # one opaque red pixel
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    pixels = read_image(tmp_path / "alpha.png")
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[3, 3]) == (255, 255, 255)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    red, green, blue = read_image(tmp_path / "anim.gif")[4, 4]
    assert red > 200 and blue < 50


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here.jpg"):
        read_image(tmp_path / "nothing_here.jpg")


@pytest.mark.parametrize("content", [b"", b"this is a text file, not a photo\n",
                                     PHOTO.read_bytes()[:200]])
def test_bytes_that_are_not_an_image_raise_value_error(tmp_path, content):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="fake.jpg is not a readable image"):
        read_image(path)


def test_sample_images_are_all_readable():
    files = image_files(REPO / "sample_images")
    assert len(files) >= 5 and not any(f.suffix == ".md" for f in files)
    modes = {Image.open(f).mode for f in files}
    assert {"L", "RGBA"} <= modes  # the grayscale and alpha cases are exercised
    for path in files:
        assert read_image(path).shape[2] == 3
