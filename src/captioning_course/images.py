"""Reading a student's photo, whatever its format, as the RGB array a captioner expects.

Read: JPEG, PNG, GIF (first frame), BMP, WebP, TIFF (first page) and HEIC/HEIF (the primary
image, as iPhones save photos, through pillow-heif); 8-bit, 16-bit or floating point; grayscale,
palette, RGB, RGBA or CMYK. Phone photos are turned upright from their EXIF orientation, or for
HEIC from the rotation and mirror of the HEIF container, which libheif applies (pillow-heif then
resets the EXIF tag, so that nothing is turned twice). Refused with a ValueError naming the
file: images above MAX_PIXELS, and damaged, truncated, empty or non-image files.
"""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff",
                  ".heic", ".heif")
# 50 megapixels already take 150 MB as RGB; anything larger is a huge scan or a decompression bomb.
MAX_PIXELS = 50_000_000
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as a viewer would
_FORMATS = "JPEG, PNG, GIF, BMP, WebP, TIFF or HEIC"


class ImageTooLargeError(ValueError):
    """An image whose header claims more than MAX_PIXELS pixels; it is refused before decoding."""


class FolderNotImageError(IsADirectoryError, ValueError):
    """A folder given where an image file is expected; `except ValueError` catches it too."""


def read_image(path: str | Path) -> np.ndarray:
    """Decode a JPEG, PNG, GIF (first frame), BMP, WebP, TIFF (first page) or HEIC/HEIF photo.

    Returns a (height, width, 3) uint8 array, upright: grayscale becomes RGB, 16-bit and float
    pixels are scaled to 0-255, CMYK is converted and transparent pixels are put on white. A
    HEIC/HEIF gives its primary image, the photo a phone shows.

    Raises FileNotFoundError naming a missing path, FolderNotImageError (a ValueError) for a
    folder, ImageTooLargeError (a ValueError) above MAX_PIXELS, and ValueError naming the file
    and the reason for files that are not a readable image.
    """
    path = Path(path)
    if path.is_dir():
        raise FolderNotImageError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        return _to_rgb(_decode(path))
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow gives no width and height
        pixels = f"{int(claimed[1]):,} pixels" if claimed else "too many pixels"
        raise _too_large(path, pixels) from exc
    # Pillow's plugins report damaged data as OSError, SyntaxError, EOFError, struct.error,
    # ValueError...; whichever it is, the student needs the file name and the reason.
    except Exception as exc:
        if path.stat().st_size == 0:
            reason = "the file is empty (0 bytes)"
        elif isinstance(exc, UnidentifiedImageError):
            heif_error = _heif_header_error(path)
            reason = (f"damaged or truncated data: {heif_error}" if heif_error
                      else f"unknown format (not {_FORMATS})")
        elif isinstance(exc, OSError) and exc.strerror:  # the system's refusal, not bad bytes
            reason = exc.strerror
        else:
            reason = "damaged or truncated data: " + _one_line(exc)
        raise ValueError(f"{path} is not a readable image: {reason}") from exc


def image_files(folder: str | Path) -> list[Path]:
    """The photos in `folder`, sorted: suffix in IMAGE_SUFFIXES, in any case.

    Phones write ".JPG" and ".HEIC" as readily as ".jpg". Other files (SOURCES.md), subfolders
    and hidden files (the "._IMG_0001.JPG" companions macOS writes on USB sticks) are skipped.
    """
    folder = Path(folder)
    if folder.is_file():
        raise NotADirectoryError(f"{folder} is a file, not a folder of images")
    if not folder.is_dir():
        raise FileNotFoundError(f"no image folder at {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith(".") and p.is_file())


def _decode(path: Path) -> Image.Image:
    """The first frame of `path` (a HEIF's primary image), fully decoded and turned upright."""
    _register_heif_opener()
    # tensorflow_datasets turns this on for the whole process when it draws thumbnails; a cut-off
    # photo would then decode with a gray band instead of raising.
    load_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size  # from the header: nothing is decoded yet
                if width * height > MAX_PIXELS:
                    raise _too_large(path, f"{width}x{height} pixels")
                if image.format != "HEIF":  # a HEIF stays at its primary image, maybe not the first
                    image.seek(0)
                image.load()
                return ImageOps.exif_transpose(image)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = load_truncated


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I") or image.mode == "F":
        gray = _scale_to_uint8(image)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        image = Image.alpha_composite(canvas, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _scale_to_uint8(image: Image.Image) -> np.ndarray:
    """16-bit, 32-bit and float grayscale to 0-255; Pillow's own convert clips them at 255."""
    values = np.asarray(image, dtype=np.float32)
    values = np.where(np.isfinite(values), values, 0.0)
    top = float(values.max(initial=0.0))
    if image.mode == "F":
        full_scale = 1.0 if top <= 1.0 else top
    else:  # "I;16*" cannot exceed 65535; an "I" from a 32-bit TIFF can
        full_scale = max(65535.0, top)
    return np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)


@functools.cache
def _register_heif_opener() -> None:
    # Not at import: pillow-heif loads libheif and its HEVC codecs, and `plots` imports this module.
    import pillow_heif

    pillow_heif.register_heif_opener()


def _heif_header_error(path: Path) -> str | None:
    """libheif's reason for refusing a HEIC/HEIF header, which Pillow only calls unidentified."""
    import pillow_heif

    if not pillow_heif.get_file_mimetype(path).startswith(("image/heic", "image/heif")):
        return None
    try:
        pillow_heif.open_heif(path)
    except Exception as exc:  # libheif's refusals come as ValueError, RuntimeError...
        return _one_line(exc)
    return None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _too_large(path: Path, claimed: str) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{path} is too large: its header claims {claimed}, above the limit of "
        f"{MAX_PIXELS:,} pixels (MAX_PIXELS); save a smaller copy first")
