"""The slice in the real datasets' layouts, written into empty folders as on a fresh clone."""

from __future__ import annotations

import zipfile

import tensorflow_datasets as tfds

from captioning_course import data_copies
from captioning_course.data_copies import (
    COCO_CAPTIONS_COPY,
    FLICKR8K_ARCHIVES,
    FLICKR8K_LISTS,
    FLICKR8K_PHOTOS,
    FLICKR8K_TOKENS,
    FLICKR8K_ZIPS,
)
from conftest import TINY_SLICE


def test_coco_copy_is_read_by_the_registered_builder(tmp_path):
    COCO_CAPTIONS_COPY.prepare(tmp_path, TINY_SLICE)
    builder = tfds.builder("coco_captions", data_dir=COCO_CAPTIONS_COPY.value(tmp_path, tmp_path))
    assert builder.info.splits["train"].num_examples == TINY_SLICE.train
    labels = builder.info.features["objects"]["label"].names
    assert labels == list(data_copies.COCO_CATEGORIES)
    [example] = tfds.as_numpy(builder.as_dataset(split="val").take(1))
    assert set(labels[i] for i in example["objects"]["label"]) <= set(
        data_copies.SHAPE_CATEGORIES.values())


def test_flickr8k_archives_hold_the_authors_layout(tmp_path):
    FLICKR8K_ARCHIVES.prepare(tmp_path, TINY_SLICE)
    url = FLICKR8K_ARCHIVES.value(tmp_path, tmp_path)
    assert url.startswith("file://") and url.endswith("/")
    folder = tmp_path / FLICKR8K_ARCHIVES.folder
    with zipfile.ZipFile(folder / FLICKR8K_ZIPS[0]) as photos:
        names = photos.namelist()
    assert all(name.startswith(f"{FLICKR8K_PHOTOS}/") for name in names)
    assert len(names) == TINY_SLICE.train + TINY_SLICE.val + TINY_SLICE.test
    with zipfile.ZipFile(folder / FLICKR8K_ZIPS[1]) as texts:
        assert set(texts.namelist()) == {FLICKR8K_TOKENS, *FLICKR8K_LISTS.values()}
        train = texts.read(FLICKR8K_LISTS["train"]).decode().split()
        tokens = texts.read(FLICKR8K_TOKENS).decode().splitlines()
    assert len(train) == TINY_SLICE.train
    assert {line.split("#")[0] for line in tokens} == {name.split("/")[1] for name in names}


def test_a_copy_is_reused_and_remade_when_the_slice_changes(tmp_path, capsys):
    FLICKR8K_ARCHIVES.prepare(tmp_path, TINY_SLICE)
    FLICKR8K_ARCHIVES.prepare(tmp_path, TINY_SLICE)
    assert "reusing" in capsys.readouterr().out
    other = type(TINY_SLICE)(train=TINY_SLICE.train + 1, val=2, test=2, seed=TINY_SLICE.seed)
    FLICKR8K_ARCHIVES.prepare(tmp_path, other)
    assert "made from another slice" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / FLICKR8K_ARCHIVES.folder / FLICKR8K_ZIPS[1]) as texts:
        assert len(texts.read(FLICKR8K_LISTS["train"]).decode().split()) == other.train
