"""Input handling of the captioner: every common format, clear errors for bad input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pillow_heif
import pytest
from PIL import Image, ImageFile

from captioning_course import images
from captioning_course.images import image_files, read_image
from conftest import REPO

PHOTO = REPO / "sample_images" / "chelsea.jpg"
PNG = REPO / "sample_images" / "chelsea_alpha.png"
HEIC_BRAND_ONLY = struct.pack(">I", 24) + b"ftypheic" + bytes(4) + b"mif1heic" + bytes(64)


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


def photo_crop(height: int, width: int) -> np.ndarray:
    """A corner of the cat photo: detailed enough that a turned or mirrored copy differs."""
    return np.asarray(Image.open(PHOTO).convert("RGB"))[100:100 + height, 150:150 + width].copy()


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def save_heic(path, pixels: np.ndarray, *, container: int = 1, exif: int | None = None) -> None:
    """`pixels` as a HEIC whose container turns them as EXIF orientation `container` does, with
    an EXIF tag that says the same, as an iPhone writes it, or `exif` if given."""
    # pillow-heif writes the orientation of the EXIF bytes it is given as irot and imir boxes
    # and keeps the tag; rewriting the tag in place leaves the container as it is. Its own
    # encode, unlike Image.save, needs no opener registered: read_image must register it.
    photo = Image.fromarray(pixels)
    pillow_heif.encode(photo.mode, photo.size, photo.tobytes(), path, quality=90,
                       exif=exif_orientation(container))
    if exif is not None:
        data = path.read_bytes()
        assert data.count(exif_orientation(container)) == 1
        path.write_bytes(data.replace(exif_orientation(container), exif_orientation(exif)))


def assert_close(pixels: np.ndarray, expected: np.ndarray) -> None:
    assert pixels.dtype == np.uint8 and pixels.shape == expected.shape
    assert np.abs(pixels.astype(int) - expected).mean() < 4  # HEVC is lossy


@pytest.fixture(scope="module")
def heic_photo() -> bytes:
    """A HEIC without EXIF, so that its last bytes are the image data, decoded only on load."""
    buffer = io.BytesIO()
    pillow_heif.encode("RGB", (96, 64), photo_crop(64, 96).tobytes(), buffer, quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("name,mode", [
    ("IMG_0001.HEIC", "RGB"), ("IMG_0002.heic", "L"), ("photo.heif", "RGB"),
    ("IMG_0003.jpg", "RGB"),  # renamed, but its ftyp box says HEIC
])
def test_heic_is_read_as_rgb_with_its_pixels(tmp_path, name, mode):
    stored = Image.fromarray(photo_crop(64, 96)).convert(mode)
    save_heic(tmp_path / name, np.asarray(stored))
    assert_close(read_image(tmp_path / name), np.asarray(stored.convert("RGB")))


# Orientation 6 says "turn 90 degrees clockwise to view", 2 "mirror left to right". libheif turns
# the photo by the container's irot and imir boxes, which a camera writes from its EXIF tag.
@pytest.mark.parametrize("container,exif,orientation", [
    (6, None, 6),  # an iPhone photo: turned once, not by the container and again by the tag
    (2, None, 2),
    (6, 3, 6),  # a stale tag: HEIF readers follow the container
])
def test_heic_orientation_is_applied_once(tmp_path, container, exif, orientation):
    stored = photo_crop(40, 60)
    save_heic(tmp_path / "IMG_0001.HEIC", stored, container=container, exif=exif)
    upright = {6: np.rot90(stored, k=-1), 2: stored[:, ::-1]}[orientation]
    assert_close(read_image(tmp_path / "IMG_0001.HEIC"), upright)


def test_heic_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)  # fully transparent black
    rgba[:16, :16] = (255, 0, 0, 255)  # an opaque red corner
    save_heic(tmp_path / "alpha.heic", rgba)
    pixels = read_image(tmp_path / "alpha.heic")
    red, green, blue = (int(v) for v in pixels[4, 4])
    assert red > 230 and green < 30 and blue < 30
    assert pixels[28, 28].min() > 225  # white, not the black under the transparency


def test_heic_gives_its_primary_image(tmp_path):
    burst = pillow_heif.from_pillow(Image.new("RGB", (16, 16), (255, 0, 0)))
    burst.add_from_pillow(Image.new("RGB", (16, 16), (0, 0, 255)))
    burst.save(tmp_path / "burst.heic", primary_index=1)
    red, green, blue = read_image(tmp_path / "burst.heic")[8, 8]
    assert blue > 200 and red < 50


def heic_claiming(width: int, height: int) -> bytes:
    """A 64x64 HEIC whose ispe header claims width x height; decoding it would fail."""
    buffer = io.BytesIO()
    pillow_heif.encode("RGB", (64, 64), bytes(64 * 64 * 3), buffer)  # no clap box to crop it
    data = buffer.getvalue()
    assert data.count(b"ispe") == 1
    at = data.index(b"ispe") + 8  # after the type, the version and the flags
    return data[:at] + struct.pack(">II", width, height) + data[at + 8:]


@pytest.mark.parametrize("width,height,claimed", [
    (9000, 6000, "9000x6000 pixels"), (20000, 20000, "400,000,000 pixels"),
])
def test_heic_pixel_limit_is_checked_before_decoding(tmp_path, width, height, claimed):
    (tmp_path / "huge.heic").write_bytes(heic_claiming(width, height))
    with pytest.raises(images.ImageTooLargeError, match=f"huge.heic is too large: .*{claimed}"):
        read_image(tmp_path / "huge.heic")


@pytest.mark.parametrize("cut,reason", [
    (slice(0), "the file is empty"),
    (slice(200), "damaged or truncated data: Invalid input: No 'meta' box"),  # cut in the header
    (slice(-100), "damaged or truncated data: Invalid input: Unexpected end of file"),
])
def test_damaged_heic_raises_value_error(tmp_path, heic_photo, cut, reason):
    path = tmp_path / "photo.heic"
    path.write_bytes(heic_photo[cut])
    with pytest.raises(ValueError, match=f"photo.heic is not a readable image: {reason}") as caught:
        read_image(path)
    assert "\n" not in str(caught.value)


def test_heic_brand_without_a_heif_inside_is_damaged(tmp_path):
    (tmp_path / "IMG_0001.HEIC").write_bytes(HEIC_BRAND_ONLY)
    with pytest.raises(ValueError, match="IMG_0001.HEIC is not a readable image: damaged or "
                                         "truncated data: .*[Nn]o meta box"):
        read_image(tmp_path / "IMG_0001.HEIC")


def test_heic_cut_in_its_exif_raises_value_error(tmp_path):
    path = tmp_path / "IMG_0001.HEIC"
    save_heic(path, photo_crop(40, 60))
    path.write_bytes(path.read_bytes()[:-100])  # the EXIF comes last, and is read on opening
    with pytest.raises(ValueError, match="IMG_0001.HEIC is not a readable image: damaged or "
                                         "truncated data: .*Unexpected end of file") as caught:
        read_image(path)
    assert "\n" not in str(caught.value)


def test_truncated_heic_raises_even_if_pillow_was_told_to_allow_it(tmp_path, heic_photo,
                                                                   monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    (tmp_path / "cut.heic").write_bytes(heic_photo[:-100])
    with pytest.raises(ValueError, match="cut.heic is not a readable image: damaged or trunc"):
        read_image(tmp_path / "cut.heic")


def test_heic_suffix_on_a_real_jpeg_is_read(tmp_path):
    (tmp_path / "actually.heic").write_bytes(PHOTO.read_bytes())
    assert read_image(tmp_path / "actually.heic").shape == (300, 451, 3)


def test_image_files_lists_photos_of_every_suffix_case(tmp_path):
    for name in ["b.JPG", "a.webp", "c.tif", "d.TIFF", "e.heic", "f.png", "h.HEIF", "notes.md",
                 "._b.JPG", "._e.heic", "g.jpeg.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()
    names = [p.name for p in image_files(tmp_path)]
    assert names == sorted(["a.webp", "b.JPG", "c.tif", "d.TIFF", "e.heic", "f.png", "h.HEIF"])


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
