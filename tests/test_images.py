"""Input handling of the captioner: every common format, clear errors for bad input."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from captioning_course import images
from captioning_course.images import image_files, read_image
from conftest import REPO

PHOTO = REPO / "sample_images" / "chelsea.jpg"
PNG = REPO / "sample_images" / "chelsea_alpha.png"
HEIC_BYTES = struct.pack(">I", 24) + b"ftypheic" + bytes(4) + b"mif1heic" + bytes(64)


@pytest.mark.parametrize("suffix,mode", [
    (".jpg", "RGB"), (".png", "RGB"), (".png", "RGBA"), (".png", "LA"), (".bmp", "RGB"),
    (".gif", "P"), (".jpg", "L"), (".png", "I;16"), (".webp", "RGB"), (".webp", "RGBA"),
    (".tif", "RGB"), (".tiff", "I;16"), (".tif", "F"), (".tif", "1"), (".jpg", "CMYK"),
    (".JPG", "RGB"), (".JPEG", "L"), (".TIF", "CMYK"),
])
def test_reads_common_formats_as_rgb(tmp_path, suffix, mode):
    path = tmp_path / f"photo_{mode.replace(';', '')}{suffix}"
    Image.open(PHOTO).convert(mode).save(path)
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


def test_exif_orientation_turns_a_phone_photo_upright(tmp_path):
    # Stored landscape, 60 wide and 40 high, with a red marker in its top-left corner; the
    # camera's Orientation=6 says "turn 90 degrees clockwise to view", so upright the photo is
    # 40 wide and 60 high and the marker sits in the top-right corner.
    stored = np.zeros((40, 60, 3), dtype=np.uint8)
    stored[:12, :12] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "IMG_0001.JPG", exif=exif, quality=95)
    pixels = read_image(tmp_path / "IMG_0001.JPG")
    assert pixels.shape == (60, 40, 3)
    assert pixels[5, 34, 0] > 200 and pixels[5, 34, 1] < 60  # top right: red
    assert pixels[5, 5].max() < 60 and pixels[54, 5].max() < 60  # left corners: black


def test_sixteen_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    gray = np.array([[0, 32768, 65535]] * 2, dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "scan16.png")
    assert Image.open(tmp_path / "scan16.png").mode.startswith("I")
    pixels = read_image(tmp_path / "scan16.png")
    assert pixels.shape == (2, 3, 3)
    assert list(pixels[0, :, 0]) == [0, 128, 255]  # not clipped to white
    assert (pixels == pixels[:, :, :1]).all()  # gray on all three channels


def test_dark_sixteen_bit_png_stays_dark(tmp_path):
    Image.fromarray(np.array([[0, 2570]], dtype=np.uint16)).save(tmp_path / "night.png")
    assert list(read_image(tmp_path / "night.png")[0, :, 2]) == [0, 10]  # not stretched to 255


@pytest.mark.parametrize("top", [1.0, 1000.0])
def test_float_tiff_is_scaled_from_its_range(tmp_path, top):
    gray = np.array([[0.0, top / 2, top]] * 2, dtype=np.float32)
    Image.fromarray(gray).save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    assert list(read_image(tmp_path / "float.tif")[0, :, 1]) == [0, 128, 255]


@pytest.mark.parametrize("suffix", [".webp", ".tiff"])
def test_webp_and_tiff_keep_their_colours(tmp_path, suffix):
    Image.new("RGB", (16, 16), (200, 30, 40)).save(tmp_path / f"red{suffix}")
    red, green, blue = (int(v) for v in read_image(tmp_path / f"red{suffix}")[8, 8])
    assert abs(red - 200) < 8 and abs(green - 30) < 8 and abs(blue - 40) < 8


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("RGB", (16, 16), (255, 0, 0)).convert("CMYK").save(tmp_path / "print.jpg")
    assert Image.open(tmp_path / "print.jpg").mode == "CMYK"
    red, green, blue = read_image(tmp_path / "print.jpg")[8, 8]
    assert red > 230 and green < 30 and blue < 30


def png_claiming(width: int, height: int) -> bytes:
    """A 4x4 PNG whose IHDR header claims width x height: a decompression bomb, in miniature."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR: signature, length, b"IHDR", w, h
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # over type and data
    return bytes(data)


@pytest.mark.parametrize("side", [20000, 10000])  # Pillow's error, then its warning
def test_decompression_bomb_is_refused_with_its_size(tmp_path, side):
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming(side, side))
    with pytest.raises(images.ImageTooLargeError) as caught:
        read_image(path)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "huge.png is too large" in message and f"{side * side:,} pixels" in message
    assert f"{images.MAX_PIXELS:,}" in message


def test_pixel_limit_is_checked_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(png_claiming(9000, 6000))  # 54 megapixels: below Pillow's own limit
    with pytest.raises(ValueError, match=r"big.png is too large: its header claims 9000x6000"):
        read_image(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"chelsea.jpg .* 451x300 pixels, above the limit of 1,0"):
        read_image(PHOTO)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here.jpg"):
        read_image(tmp_path / "nothing_here.jpg")


def test_folder_is_not_an_image_file(tmp_path):
    (tmp_path / "holiday").mkdir()
    with pytest.raises(ValueError, match="holiday is a folder, not an image file") as caught:
        read_image(tmp_path / "holiday")
    assert isinstance(caught.value, IsADirectoryError)


@pytest.mark.parametrize("content,reason", [
    (b"", "the file is empty"),
    (b"this is a text file, not a photo\n", "unknown format"),
    (PHOTO.read_bytes()[:200], "damaged or truncated"),
    (PHOTO.read_bytes()[:len(PHOTO.read_bytes()) // 2], "damaged or truncated"),
    (PNG.read_bytes()[:len(PNG.read_bytes()) // 2], "damaged or truncated"),
])
def test_bytes_that_are_not_an_image_raise_value_error(tmp_path, content, reason):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"fake.jpg is not a readable image: {reason}") as caught:
        read_image(path)
    assert "\n" not in str(caught.value)


def test_truncated_photo_raises_even_if_pillow_was_told_to_allow_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as tensorflow_datasets does
    path = tmp_path / "cut.jpg"
    path.write_bytes(PHOTO.read_bytes()[:-100])
    with pytest.raises(ValueError, match="cut.jpg is not a readable image: damaged or truncated"):
        read_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # left as it was found


@pytest.mark.parametrize("name,content", [
    ("IMG_0001.HEIC", HEIC_BYTES),  # an iPhone photo
    ("IMG_0002.heif", b"not even heif inside"),
    ("IMG_0003.jpg", HEIC_BYTES),  # renamed, but its ftyp box says HEIC
    ("IMG_0004.png", HEIC_BYTES.replace(b"ftypheic", b"ftypmif1")),
])
def test_heic_is_refused_with_advice(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as caught:
        read_image(path)
    message = str(caught.value)
    assert re.search(rf"{re.escape(name)} is a HEIC/HEIF photo, which is not supported", message)
    assert "convert it to JPEG" in message and "Most Compatible" in message


def test_heic_suffix_on_a_real_jpeg_is_read(tmp_path):
    (tmp_path / "actually.heic").write_bytes(PHOTO.read_bytes())
    assert read_image(tmp_path / "actually.heic").shape == (300, 451, 3)


def test_image_files_lists_photos_of_every_suffix_case(tmp_path):
    for name in ["b.JPG", "a.webp", "c.tif", "d.TIFF", "e.heic", "f.png", "notes.md",
                 "._b.JPG", "g.jpeg.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()
    names = [p.name for p in image_files(tmp_path)]
    assert names == sorted(["a.webp", "b.JPG", "c.tif", "d.TIFF", "e.heic", "f.png"])


def test_image_files_needs_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image folder at .*missing"):
        image_files(tmp_path / "missing")
    with pytest.raises(NotADirectoryError, match="chelsea.jpg is a file, not a folder"):
        image_files(PHOTO)


def test_sample_images_are_all_readable():
    files = image_files(REPO / "sample_images")
    assert len(files) >= 5 and not any(f.suffix == ".md" for f in files)
    modes = {Image.open(f).mode for f in files}
    assert {"L", "RGBA"} <= modes  # the grayscale and alpha cases are exercised
    for path in files:
        assert read_image(path).shape[2] == 3
