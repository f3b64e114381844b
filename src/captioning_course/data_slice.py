"""The offline data slice: a small captioning dataset with the schema of TFDS's `coco_captions`.

Each image shows one or two coloured shapes on a plain background. Every image gets five
truthful captions that name each shape's colour and kind (always as adjacent words, e.g.
"red circle"), and each shape's bounding box is stored in `objects` exactly as COCO stores
its boxes, so attention maps can be checked against the truth.

The dataset is written with TFDS, so a notebook reads it with the same call it uses for COCO:

    tfds.load("shapes_captions", split="train", data_dir=DATA_DIR)

Generation is a pure function of its parameters: each example is drawn from its own random
generator seeded by (seed, split, index), so the same parameters give byte-identical records.

Command line (what `make data` runs):

    python -m captioning_course.data_slice --data-dir data [--train 800 --val 100 --test 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

NAME = "shapes_captions"
VERSION = "1.0.0"

SPLITS = ("train", "val", "test")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
}
BACKGROUNDS = {"black": (20, 20, 20), "white": (240, 240, 240), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
GRID = 3  # positions are the cells of a GRID x GRID layout
WHERE = {
    (0, 0): "in the top left corner",
    (0, 1): "at the top",
    (0, 2): "in the top right corner",
    (1, 0): "on the left",
    (1, 1): "in the center",
    (1, 2): "on the right",
    (2, 0): "in the bottom left corner",
    (2, 1): "at the bottom",
    (2, 2): "in the bottom right corner",
}
CAPTIONS_PER_IMAGE = 5


@dataclasses.dataclass(frozen=True)
class SliceParams:
    """Everything the generated records depend on; stored beside the data to detect stale copies."""

    train: int = 800
    val: int = 100
    test: int = 100
    seed: int = 0
    image_size: int = 128

    def __post_init__(self) -> None:
        for split in SPLITS:
            if getattr(self, split) < 1:
                raise ValueError(f"split size {split}={getattr(self, split)} must be at least 1")
        if self.image_size < 48:
            raise ValueError(f"image_size={self.image_size} is too small to draw shapes (min 48)")

    def split_size(self, split: str) -> int:
        return getattr(self, split)


@dataclasses.dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    size: str
    cell: tuple[int, int]  # (row, column) in the grid
    box: tuple[float, float, float, float]  # (ymin, xmin, ymax, xmax) in [0, 1], as TFDS BBox

    def phrase(self, rng: np.random.Generator, with_size: bool = False) -> str:
        """The noun phrase that names this shape: colour and kind are always adjacent."""
        words = [self.colour, self.kind]
        if with_size:
            words.insert(0, str(rng.choice(SIZE_WORDS[self.size])))
        return " ".join(words)


def _draw_shape(rng: np.random.Generator, colour: str, kind: str, cell: tuple[int, int],
                image_size: int) -> Shape:
    cell_px = image_size / GRID
    size = str(rng.choice(list(SIZE_WORDS)))
    extent = cell_px * (rng.uniform(0.35, 0.5) if size == "small" else rng.uniform(0.7, 0.85))
    slack = (cell_px - extent) / 2 * 0.8  # keeps the shape inside its cell
    cy = (cell[0] + 0.5) * cell_px + rng.uniform(-slack, slack)
    cx = (cell[1] + 0.5) * cell_px + rng.uniform(-slack, slack)
    half = extent / 2
    box_px = (cy - half, cx - half, cy + half, cx + half)
    box = tuple(float(np.clip(v / image_size, 0.0, 1.0)) for v in box_px)
    return Shape(colour=colour, kind=kind, size=size, cell=cell, box=box)  # type: ignore[arg-type]


def _render(shapes: list[Shape], background: str, image_size: int,
            rng: np.random.Generator) -> np.ndarray:
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        ymin, xmin, ymax, xmax = (v * image_size for v in shape.box)
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse((xmin, ymin, xmax, ymax), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((xmin, ymin, xmax, ymax), fill=fill)
        else:  # triangle pointing up
            draw.polygon([((xmin + xmax) / 2, ymin), (xmin, ymax), (xmax, ymax)], fill=fill)
    pixels = np.asarray(image, dtype=np.float32)
    # Mild sensor-like noise, so the images are not perfectly flat like clip art.
    pixels += rng.normal(0.0, 4.0, size=pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _relation(a: Shape, b: Shape) -> str:
    """Where `a` is relative to `b`; cells differ, so one of these is always true."""
    if a.cell[1] != b.cell[1]:
        return "to the left of" if a.cell[1] < b.cell[1] else "to the right of"
    return "above" if a.cell[0] < b.cell[0] else "below"


def _one_shape_captions(s: Shape, bg: str, rng: np.random.Generator) -> list[str]:
    templates = [
        lambda: f"a {s.phrase(rng, True)} on a {bg} background",
        lambda: f"a {s.phrase(rng)} {WHERE[s.cell]}",
        lambda: f"there is a {s.phrase(rng, True)} {WHERE[s.cell]}",
        lambda: f"a {bg} picture with a {s.phrase(rng)} {WHERE[s.cell]}",
        lambda: f"one {s.phrase(rng)} on {bg}",
        lambda: f"a single {s.phrase(rng, True)} against a plain {bg} backdrop",
        lambda: f"{WHERE[s.cell]} of the image is a {s.phrase(rng)}",
    ]
    return _pick(templates, rng)


def _two_shape_captions(first: Shape, second: Shape, bg: str,
                        rng: np.random.Generator) -> list[str]:
    def ordered() -> tuple[Shape, Shape]:
        return (first, second) if rng.random() < 0.5 else (second, first)

    def both(template):  # the order in which the shapes are named varies per caption
        return lambda: template(*ordered())

    templates = [
        both(lambda a, b: f"a {a.phrase(rng)} and a {b.phrase(rng)}"),
        both(lambda a, b: f"a {a.phrase(rng)} {WHERE[a.cell]} and a {b.phrase(rng)} "
                          f"{WHERE[b.cell]}"),
        both(lambda a, b: f"two shapes on a {bg} background a {a.phrase(rng, True)} and a "
                          f"{b.phrase(rng, True)}"),
        both(lambda a, b: f"a {a.phrase(rng)} {_relation(a, b)} a {b.phrase(rng)}"),
        both(lambda a, b: f"a {a.phrase(rng, True)} and a {b.phrase(rng, True)} on {bg}"),
        both(lambda a, b: f"there is a {a.phrase(rng)} {WHERE[a.cell]} and a "
                          f"{b.phrase(rng)}"),
        both(lambda a, b: f"a {bg} image showing a {a.phrase(rng)} with a {b.phrase(rng)}"),
    ]
    return _pick(templates, rng)


def _pick(templates: list, rng: np.random.Generator) -> list[str]:
    chosen = rng.choice(len(templates), size=CAPTIONS_PER_IMAGE, replace=False)
    return [templates[int(i)]() for i in chosen]


def make_example(params: SliceParams, split: str, index: int) -> dict:
    """One record in `coco_captions` layout, a pure function of (params, split, index)."""
    split_number = SPLITS.index(split)
    rng = np.random.default_rng([params.seed, split_number, index])
    background = str(rng.choice(list(BACKGROUNDS)))
    count = int(rng.integers(1, 3))
    cells = rng.choice(GRID * GRID, size=count, replace=False)
    # Two shapes never share both colour and kind, so every caption names them unambiguously.
    kinds = [(str(c), str(k)) for c in COLOURS for k in SHAPES]
    picked = rng.choice(len(kinds), size=count, replace=False)
    shapes = [
        _draw_shape(rng, *kinds[int(p)], cell=divmod(int(cell), GRID),
                    image_size=params.image_size)
        for p, cell in zip(picked, cells, strict=True)
    ]
    pixels = _render(shapes, background, params.image_size, rng)
    if count == 1:
        captions = _one_shape_captions(shapes[0], background, rng)
    else:
        captions = _two_shape_captions(shapes[0], shapes[1], background, rng)

    image_id = split_number * 1_000_000 + index
    area = [
        int(round((s.box[2] - s.box[0]) * (s.box[3] - s.box[1]) * params.image_size ** 2))
        for s in shapes
    ]
    return {
        "image": pixels,
        "image/filename": f"{split}_{index:06d}.jpg",
        "image/id": image_id,
        "captions": {
            "id": [image_id * 10 + k for k in range(len(captions))],
            "text": captions,
        },
        "objects": {
            "id": [image_id * 10 + k for k in range(len(shapes))],
            "area": area,
            "bbox": [np.asarray(s.box, dtype=np.float32) for s in shapes],
            "is_crowd": [False] * len(shapes),
            "label": [s.kind for s in shapes],
        },
    }


@functools.cache
def _builder_class():
    """The TFDS builder, defined on first use so importing this module stays cheap."""
    import tensorflow_datasets as tfds

    class ShapesCaptions(tfds.core.GeneratorBasedBuilder):
        """Synthetic coloured-shape scenes with five captions each (coco_captions schema)."""

        VERSION = tfds.core.Version(VERSION)

        def __init__(self, *, params: SliceParams = SliceParams(), **kwargs):
            self.params = params
            super().__init__(**kwargs)

        def _info(self):
            features = tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"),
                "image/filename": tfds.features.Text(),
                "image/id": np.int64,
                "captions": tfds.features.Sequence({"text": np.str_, "id": np.int64}),
                "objects": tfds.features.Sequence({
                    "id": np.int64,
                    "area": np.int64,
                    "bbox": tfds.features.BBoxFeature(),
                    "is_crowd": np.bool_,
                    "label": tfds.features.ClassLabel(names=list(SHAPES)),
                }),
            })
            return tfds.core.DatasetInfo(
                builder=self,
                description=__doc__.split("\n\n")[0],
                features=features,
                metadata=tfds.core.MetadataDict(dataclasses.asdict(self.params)),
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in SPLITS}

        def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
            for index in range(self.params.split_size(split)):
                yield f"{split}_{index:06d}", make_example(self.params, split, index)

    assert ShapesCaptions.name == NAME  # TFDS derives the name from the class name
    return ShapesCaptions


def dataset_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / NAME / VERSION


def stored_params(data_dir: str | Path) -> dict | None:
    """The parameters a prepared slice was generated with, or None if there is no complete slice."""
    metadata = dataset_dir(data_dir) / "metadata.json"
    if not (dataset_dir(data_dir) / "dataset_info.json").is_file() or not metadata.is_file():
        return None
    return json.loads(metadata.read_text())


def prepare(data_dir: str | Path, params: SliceParams = SliceParams()) -> Path:
    """Generate the slice under `data_dir` unless an identical one is already there.

    A slice generated with other parameters (or an older generator) is regenerated, and
    the difference is printed, so a stale copy is never read by mistake.
    """
    import tensorflow_datasets as tfds

    wanted = dataclasses.asdict(params)
    found = stored_params(data_dir)
    if found == wanted:
        print(f"{NAME}: reusing {dataset_dir(data_dir)} ({_describe(params)})")
        return dataset_dir(data_dir)
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if dataset_dir(data_dir).exists():
        changed = {k: (found or {}).get(k) for k in wanted if (found or {}).get(k) != wanted[k]}
        print(f"{NAME}: {dataset_dir(data_dir)} was made with other parameters or is "
              f"incomplete (stored values {changed}); regenerating it")
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    builder = _builder_class()(params=params, data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            download_mode=mode, try_download_gcs=False
        )
    )
    print(f"{NAME}: wrote {dataset_dir(data_dir)} ({_describe(params)})")
    return dataset_dir(data_dir)


def _describe(params: SliceParams) -> str:
    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(params).items())


def main(argv: list[str] | None = None) -> int:
    defaults = SliceParams()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="TFDS data dir to write into")
    for field in dataclasses.fields(SliceParams):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int,
                            default=getattr(defaults, field.name),
                            help=f"default {getattr(defaults, field.name)}")
    args = parser.parse_args(argv)
    params = SliceParams(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SliceParams)})
    prepare(args.data_dir, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
