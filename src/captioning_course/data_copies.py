"""The offline slice in the layouts of the real datasets, for the lessons' own loading code.

A lesson's default path reads COCO through TFDS's registered `coco_captions` builder, or
downloads Flickr8k's two archives and unpacks them. Neither host is reachable offline, so
these functions write the slice's images and captions in those exact layouts; a lesson then
reads them with its default code, only pointed at other bytes:

- `prepare_coco_captions(folder)`: a prepared `coco_captions` dataset (config 2014, TFDS's
  version and features, Karpathy's train/val/test splits) in the TFDS data dir `folder`, as
  a copy of COCO prepared elsewhere would be. `tfds.load("coco_captions", data_dir=folder)`
  reads it through the registered builder. COCO's 80 category names label the boxes; each
  shape is labelled with one of them (`SHAPE_CATEGORIES`).
- `prepare_flickr8k_archives(folder)`: `Flickr8k_Dataset.zip` (the photos, in the authors'
  misspelt `Flicker8k_Dataset/`) and `Flickr8k_text.zip` (`Flickr8k.token.txt` and the
  train, dev and test lists), to be served from `folder.as_uri()`.

Each copy records the slice parameters it was made from and is made again when they change.
`COCO_CAPTIONS_COPY` and `FLICKR8K_ARCHIVES` are the profile values that stand for them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

from captioning_course.data_slice import SPLITS, SliceParams, make_example

# COCO 2014's 80 categories, in the order of its annotation files (TFDS's label ids).
COCO_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)
SHAPE_CATEGORIES = {"circle": "sports ball", "square": "tv", "triangle": "kite"}
COCO_NAME = "coco_captions"
MADE_FROM = "made_from_slice.json"  # the slice parameters a copy was made from

FLICKR8K_ZIPS = ("Flickr8k_Dataset.zip", "Flickr8k_text.zip")
FLICKR8K_PHOTOS = "Flicker8k_Dataset"  # sic: the authors' spelling
FLICKR8K_TOKENS = "Flickr8k.token.txt"
FLICKR8K_LISTS = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
                  "test": "Flickr_8k.testImages.txt"}


def _made_from(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MADE_FROM).read_text())
    except (OSError, ValueError):
        return None


def _up_to_date(folder: Path, params: SliceParams, what: str) -> bool:
    """Whether `folder` holds a copy made from `params`; a stale one is removed, and said so."""
    found = _made_from(folder)
    if found == dataclasses.asdict(params):
        print(f"{what}: reusing {folder}")
        return True
    if folder.exists():
        print(f"{what}: {folder} was made from another slice or is incomplete; making it again")
        shutil.rmtree(folder)
    return False


def _mark_made(folder: Path, params: SliceParams) -> None:
    """Written last: a copy without it is incomplete."""
    partial = folder / f".{MADE_FROM}.{os.getpid()}"
    partial.write_text(json.dumps(dataclasses.asdict(params)))
    partial.replace(folder / MADE_FROM)


def _coco_example(params: SliceParams, split: str, index: int) -> dict:
    example = make_example(params, split, index)
    objects = example["objects"]
    objects["label"] = [SHAPE_CATEGORIES[kind] for kind in objects["label"]]
    return example


def prepare_coco_captions(folder: str | Path, params: SliceParams) -> Path:
    """A prepared `coco_captions` dataset of the slice in the TFDS data dir `folder`."""
    import tensorflow_datasets as tfds

    folder = Path(folder)
    if _up_to_date(folder, params, COCO_NAME):
        return folder
    builder = tfds.builder(COCO_NAME, data_dir=str(folder))

    # The registered builder downloads COCO's zips and Karpathy's split file here; the copy
    # gives it the slice instead, and TFDS writes it as it writes COCO.
    def split_generators(dl_manager):
        builder.info.features["objects"]["label"].names = list(COCO_CATEGORIES)
        return {split: ((example["image/filename"], example) for example in
                        (_coco_example(params, split, i) for i in range(params.split_size(split))))
                for split in SPLITS}

    builder._split_generators = split_generators
    builder.download_and_prepare(
        download_dir=str(folder / "downloads"),
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    shutil.rmtree(folder / "downloads", ignore_errors=True)
    _mark_made(folder, params)
    print(f"{COCO_NAME}: wrote the slice as {builder.data_dir}")
    return folder


def flickr8k_photo_name(split: str, index: int) -> str:
    """A name in Flickr's form (photo id, underscore, secret), unique across the splits."""
    return f"{1_000_000 * (SPLITS.index(split) + 1) + index}_{index * 7919 % 16**10:010x}.jpg"


def flickr8k_caption(text: str) -> str:
    """A caption as the Flickr8k files give it: capitalised, the final stop spaced off."""
    return f"{text[0].upper()}{text[1:]} ."


def prepare_flickr8k_archives(folder: str | Path, params: SliceParams) -> Path:
    """Flickr8k's two archives, made of the slice, in `folder`."""
    from PIL import Image

    folder = Path(folder)
    if _up_to_date(folder, params, "Flickr8k archives"):
        return folder
    folder.mkdir(parents=True)
    tokens, lists = [], {split: [] for split in SPLITS}
    with zipfile.ZipFile(folder / FLICKR8K_ZIPS[0], "w") as photos:
        for split in SPLITS:
            for index in range(params.split_size(split)):
                example = make_example(params, split, index)
                name = flickr8k_photo_name(split, index)
                jpeg = io.BytesIO()
                Image.fromarray(example["image"]).save(jpeg, format="JPEG", quality=90)
                photos.writestr(f"{FLICKR8K_PHOTOS}/{name}", jpeg.getvalue())
                lists[split].append(name)
                tokens += [f"{name}#{number}\t{flickr8k_caption(text)}"
                           for number, text in enumerate(example["captions"]["text"])]
    with zipfile.ZipFile(folder / FLICKR8K_ZIPS[1], "w") as texts:
        texts.writestr(FLICKR8K_TOKENS, "\n".join(tokens) + "\n")
        for split, list_file in FLICKR8K_LISTS.items():
            texts.writestr(list_file, "\n".join(lists[split]) + "\n")
    _mark_made(folder, params)
    print(f"Flickr8k archives: wrote the slice as {', '.join(FLICKR8K_ZIPS)} in {folder}")
    return folder


@dataclasses.dataclass(frozen=True)
class SliceCopy:
    """A profile value (`profiles.Source`): the slice in a real dataset's layout, made by
    `write` in DATA_DIR/`folder`; the parameter is set to that folder, or to its URL."""

    folder: str
    write: Callable[[Path, SliceParams], Path]
    as_url: bool = False

    def value(self, data_dir: Path, output_dir: Path) -> str:
        path = (Path(data_dir) / self.folder).resolve()
        return path.as_uri() + "/" if self.as_url else str(path)

    def prepare(self, data_dir: Path, data_slice: SliceParams) -> None:
        self.write(Path(data_dir) / self.folder, data_slice)


COCO_CAPTIONS_COPY = SliceCopy("coco", prepare_coco_captions)  # a TFDS data dir
FLICKR8K_ARCHIVES = SliceCopy("flickr8k_archives", prepare_flickr8k_archives, as_url=True)
