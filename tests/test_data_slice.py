"""The offline data slice: coco_captions schema, truthful captions, determinism, sizes."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from captioning_course import data_slice
from captioning_course.data_slice import COLOURS, GRID, SHAPES, WHERE, SliceParams
from conftest import TINY_SLICE

SHARED_FEATURES = ("image", "image/filename", "image/id", "captions")
NAMED_SHAPE = re.compile(
    rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b( (?:{'|'.join(WHERE.values())}))?"
)


def load(data_dir, split):
    return tfds.as_numpy(tfds.load(data_slice.NAME, split=split, data_dir=str(data_dir)))


def test_schema_matches_coco_captions(tiny_slice_dir):
    coco = tfds.builder("coco_captions").info.features
    ours = tfds.builder(data_slice.NAME, data_dir=str(tiny_slice_dir)).info.features
    for name in SHARED_FEATURES:
        assert ours[name].to_json() == coco[name].to_json(), name
    # Boxes are stored as COCO stores them; only the label names differ (shapes, not COCO's 80).
    ours_objects, coco_objects = ours["objects"].feature, coco["objects"].feature
    assert sorted(ours_objects.keys()) == sorted(coco_objects.keys())
    for name in ("id", "area", "bbox", "is_crowd"):
        assert ours_objects[name].to_json() == coco_objects[name].to_json(), name
    assert ours_objects["label"].names == list(SHAPES)


def colour_at(image: np.ndarray, box: np.ndarray) -> str:
    """The named colour closest to the pixels at the centre of `box`."""
    height, width, _ = image.shape
    y = int((box[0] + box[2]) / 2 * height)
    x = int((box[1] + box[3]) / 2 * width)
    # The lower middle of the box is inside every shape drawn (circle, square, triangle).
    y = min(int(y + 0.2 * (box[2] - box[0]) * height), height - 1)
    patch = image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda name: np.sum((patch - np.array(COLOURS[name])) ** 2))


def cell_of(box: np.ndarray) -> tuple[int, int]:
    return int((box[0] + box[2]) / 2 * GRID), int((box[1] + box[3]) / 2 * GRID)


@pytest.mark.parametrize("split", data_slice.SPLITS)
def test_captions_describe_the_drawn_scene(tiny_slice_dir, split):
    for example in load(tiny_slice_dir, split):
        labels = [SHAPES[i] for i in example["objects"]["label"]]
        boxes = example["objects"]["bbox"]
        drawn = {(colour_at(example["image"], box), label): cell_of(box)
                 for box, label in zip(boxes, labels, strict=True)}
        assert len(drawn) == len(labels) in (1, 2)
        captions = [text.decode() for text in example["captions"]["text"]]
        assert len(captions) == 5 and len(set(captions)) == 5, captions
        for caption in captions:
            named = NAMED_SHAPE.findall(caption)
            assert {(colour, shape) for colour, shape, _ in named} == set(drawn), caption
            for colour, shape, where in named:
                if where:  # a position said right after a shape is that shape's position
                    assert WHERE[drawn[colour, shape]] == where.strip(), caption


def test_boxes_are_inside_the_image(tiny_slice_dir):
    for example in load(tiny_slice_dir, "train"):
        boxes = example["objects"]["bbox"]
        assert np.all((boxes >= 0) & (boxes <= 1))
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])


def test_split_sizes(tiny_slice_dir):
    info = tfds.builder(data_slice.NAME, data_dir=str(tiny_slice_dir)).info
    for split in data_slice.SPLITS:
        expected = TINY_SLICE.split_size(split)
        assert info.splits[split].num_examples == expected
        assert sum(1 for _ in load(tiny_slice_dir, split)) == expected


def test_image_ids_are_unique_across_splits(tiny_slice_dir):
    ids = [int(ex["image/id"]) for split in data_slice.SPLITS for ex in load(tiny_slice_dir, split)]
    assert len(ids) == len(set(ids))


def record_bytes(data_dir) -> dict[str, bytes]:
    folder = data_slice.dataset_dir(data_dir)
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.tfrecord*"))}


def test_same_seed_gives_byte_identical_records(tiny_slice_dir, tmp_path):
    data_slice.prepare(tmp_path, TINY_SLICE)
    assert record_bytes(tmp_path) == record_bytes(tiny_slice_dir)


def test_other_seed_gives_other_records(tmp_path):
    params = dataclasses.replace(TINY_SLICE, seed=TINY_SLICE.seed + 1)
    first = data_slice.make_example(TINY_SLICE, "train", 0)
    second = data_slice.make_example(params, "train", 0)
    assert not np.array_equal(first["image"], second["image"])


def test_fresh_process_reads_slice_without_this_package(tiny_slice_dir):
    code = (
        "import sys, tensorflow_datasets as tfds\n"
        f"ds = tfds.load({data_slice.NAME!r}, split='train', data_dir={str(tiny_slice_dir)!r})\n"
        "assert 'captioning_course' not in sys.modules\n"
        "print(sum(1 for _ in ds))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == str(TINY_SLICE.train)


def test_stale_slice_is_regenerated_not_reused(tmp_path, capsys):
    data_slice.prepare(tmp_path, TINY_SLICE)
    bigger = dataclasses.replace(TINY_SLICE, train=TINY_SLICE.train + 4)
    data_slice.prepare(tmp_path, bigger)
    assert "regenerating" in capsys.readouterr().out
    assert data_slice.stored_params(tmp_path) == dataclasses.asdict(bigger)
    assert sum(1 for _ in load(tmp_path, "train")) == bigger.train


def test_identical_slice_is_reused(tiny_slice_dir, capsys):
    before = record_bytes(tiny_slice_dir)
    data_slice.prepare(tiny_slice_dir, TINY_SLICE)
    assert "reusing" in capsys.readouterr().out
    assert record_bytes(tiny_slice_dir) == before


@pytest.mark.parametrize("bad", [{"train": 0}, {"test": -1}, {"image_size": 16}])
def test_invalid_parameters_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SliceParams(**bad)
