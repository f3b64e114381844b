"""The feature cache's format on disk: shards of one tf.train.Example per image, and the
manifest that describes them; writing them, and reading them back as a dataset.

    NAME/cache.json              the key, the field specs, the shards and their sizes
    NAME/shard-00000.tfrecord    one tf.train.Example per image, each field a
    NAME/shard-00001.tfrecord    tf.io.serialize_tensor of its value

`features` decides when a cache is reused or written, and where.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

MANIFEST = "cache.json"
FORMAT = 1  # bumped when the layout changes, so that an older cache is recomputed, not misread
SHARD_BYTES = 256 * 10**6  # big enough for fast sequential reads, small enough to copy around
PARALLEL_SHARDS = 4
SHARD_NAME = re.compile(r"shard-\d{5}\.tfrecord")


@dataclasses.dataclass(frozen=True)
class CachedFeatures:
    """A feature cache on disk and the dataset that reads it."""

    # One dict per example: "features" (float16, the encoder's output shape for one image) and
    # every other field of the input examples, with its dtype and rank.
    dataset: tf.data.Dataset
    path: Path  # the cache folder
    examples: int
    size_bytes: int  # on disk
    extraction_seconds: float | None  # None when the cache was reused


def input_fields(examples: tf.data.Dataset) -> dict[str, dict]:
    """The dtype and shape of every field but "image", as the manifest stores them."""
    if not isinstance(examples, tf.data.Dataset):
        raise TypeError(f"examples must be a tf.data.Dataset of dicts, not {type(examples)}")
    spec = examples.element_spec
    if not isinstance(spec, dict) or "image" not in spec:
        raise ValueError("examples must be a tf.data.Dataset of dicts with an 'image' field; "
                         f"its elements are {spec}")
    if "features" in spec:
        raise ValueError("the examples have a 'features' field, which the cache uses for the "
                         "encoder's output; rename it")
    fields = {}
    for field, field_spec in spec.items():
        if field == "image":
            continue
        # tf.io.serialize_tensor stores dense tensors only; nested dicts would need flattening.
        if type(field_spec) is not tf.TensorSpec:
            raise ValueError(f"field {field!r} of the examples is a {type(field_spec).__name__}; "
                             "only dense tensors can be cached next to the features")
        fields[field] = _spec(field_spec.dtype, field_spec.shape)
    return fields


def _spec(dtype: tf.DType, shape: tf.TensorShape) -> dict:
    return {"dtype": dtype.name, "shape": None if shape.rank is None else shape.as_list()}


def write_shards(examples: tf.data.Dataset, encode: Callable, fields: dict, partial: Path, *,
             batch_size: int, total: int | None, progress_total: int | None,
             description: str) -> dict:
    """Encode every example into shards in `partial`; their count, field specs and shards."""
    names = list(fields)

    def serialize_fields(example: dict) -> dict:
        # Serialised before batching, every field keeps its exact dtype and shape, even an
        # empty (0, 4) box array, and variable-length fields need no ragged batching.
        serialized = {field: tf.io.serialize_tensor(example[field]) for field in names}
        return {"image": example["image"], **serialized}

    batches = (examples
               .map(serialize_fields, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(batch_size)
               .prefetch(tf.data.AUTOTUNE))
    shards: list[dict] = []
    writer = None
    written_in_shard = records_per_shard = 0
    count = 0
    feature_shape = None
    try:
        with tqdm(total=progress_total, desc=description, unit="image") as progress:
            for batch in batches:
                images = batch["image"]
                features = _encoded(encode, images)
                if feature_shape is None:
                    feature_shape = features.shape[1:]
                elif features.shape[1:] != feature_shape:
                    raise ValueError(f"encode returned features of shape {features.shape[1:]} "
                                     f"per image after {feature_shape}")
                values = {field: batch[field].numpy() for field in names}
                records = [_record(features[i], {f: values[f][i] for f in names})
                           for i in range(len(features))]
                if records_per_shard == 0:
                    per_record = sum(map(len, records)) / len(records)
                    records_per_shard = max(1, int(SHARD_BYTES // per_record))
                for record in records:
                    if writer is None:
                        shards.append({"file": f"shard-{len(shards):05d}.tfrecord"})
                        writer = tf.io.TFRecordWriter(str(partial / shards[-1]["file"]))
                    writer.write(record)
                    written_in_shard += 1
                    if written_in_shard == records_per_shard:
                        writer.close()
                        writer, written_in_shard = None, 0
                count += len(records)
                progress.update(len(records))
                if total is not None and count > total:
                    raise ValueError(f"total is {total} but the examples hold at least {count}: "
                                     "a stale total means a stale key; update both")
    finally:
        if writer is not None:
            writer.close()
    if count == 0:
        raise ValueError("no examples to encode: the dataset is empty")
    if total is not None and count != total:
        raise ValueError(f"total is {total} but the examples hold {count}: a stale total "
                         "means a stale key; update both")
    for shard in shards:
        path = partial / shard["file"]
        fsync(path)
        shard["bytes"] = path.stat().st_size
    return {
        "examples": count,
        "fields": {"features": _spec(tf.float16, tf.TensorShape(feature_shape)), **fields},
        "shards": shards,
    }


def _encoded(encode: Callable, images: tf.Tensor) -> np.ndarray:
    """encode(images) as float16, checked to give one row per image and to fit in float16."""
    output = np.asarray(encode(images))
    if output.ndim == 0 or output.shape[0] != images.shape[0]:
        raise ValueError(f"encode returned shape {output.shape} for images of shape "
                         f"{tuple(images.shape)}: the first dimension must be the batch size")
    with np.errstate(over="ignore"):  # reported below, with the remedy
        features = output.astype(np.float16)
    # float16 stops at 65504: larger features would be cached as infinities, and train as NaN.
    if not np.isfinite(features).all() and np.any(np.isinf(features) & np.isfinite(output)):
        raise ValueError(f"encode returned values up to {np.abs(output).max():g}, beyond "
                         "float16's range (65504); scale the features down before caching")
    return features


def _record(features: np.ndarray, fields: dict[str, bytes]) -> bytes:
    """One tf.train.Example: the serialised tensor of each field."""
    values = {"features": tf.io.serialize_tensor(features).numpy(), **fields}
    return tf.train.Example(features=tf.train.Features(feature={
        field: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        for field, value in values.items()
    })).SerializeToString()


def fsync(path: Path) -> None:
    # On disk before the rename: after a power cut the cache is then complete or absent.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(path: Path, manifest: dict) -> None:
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    fsync(path)


def open_cache(path: str | Path) -> CachedFeatures:
    """The cache in `path` as it is, whatever its key: for reading a cache one just wrote."""
    path = Path(path)
    return open_dataset(path, json.loads((path / MANIFEST).read_text()), extraction_seconds=None)


def open_dataset(final: Path, manifest: dict, *,
                 extraction_seconds: float | None) -> CachedFeatures:
    """The dataset reading the cache in `final`: a record of each of `PARALLEL_SHARDS` shards in
    turn, the same order every epoch."""
    specs = {field: (tf.as_dtype(spec["dtype"]), tf.TensorShape(spec["shape"]))
             for field, spec in manifest["fields"].items()}
    wanted = {field: tf.io.FixedLenFeature([], tf.string) for field in specs}

    def parse(record: tf.Tensor) -> dict:
        serialized = tf.io.parse_single_example(record, wanted)
        return {field: tf.ensure_shape(tf.io.parse_tensor(serialized[field], out_type=dtype),
                                       shape)
                for field, (dtype, shape) in specs.items()}

    files = tf.data.Dataset.from_tensor_slices(
        [str(final / shard["file"]) for shard in manifest["shards"]])
    # A persistent disk reaches its rate only with several reads in flight, and records drawn
    # from several shards in turn give a shuffle buffer smaller than the cache a wider mix.
    dataset = (files.interleave(tf.data.TFRecordDataset, cycle_length=PARALLEL_SHARDS,
                                num_parallel_calls=PARALLEL_SHARDS, deterministic=True)
               .map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .apply(tf.data.experimental.assert_cardinality(manifest["examples"])))
    size = sum(shard["bytes"] for shard in manifest["shards"])
    size += (final / MANIFEST).stat().st_size
    return CachedFeatures(dataset=dataset, path=final, examples=manifest["examples"],
                          size_bytes=size, extraction_seconds=extraction_seconds)
