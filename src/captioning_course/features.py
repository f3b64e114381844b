"""An on-disk cache of a frozen CNN encoder's features, computed once and shared by the lessons.

COCO's 82,783 training images give 64 regions x 1536 channels each: 16 GB in float16, more
than memory. So the features of a split are computed once, written to disk in float16 as
TFRecord shards next to the other fields of each example (captions, boxes...), and streamed
by tf.data while a lesson trains its decoder.

A cache is only as good as its key, so `cached_features` takes one from the caller: a
JSON-serialisable dict of everything that changes the features (dataset, version, split,
example count, image size, preprocessing, `model_fingerprint(cnn)`...). A cache with another
key is recomputed, with one line naming the entries that changed; it is never reused in
silence. An extraction is written under a temporary name and renamed only when complete, so
an interrupted one (a crash, a kernel restart, Ctrl-C) is never mistaken for a cache, and
the previous cache stays until its replacement is complete. Extractions of one cache take
turns under a file lock, FOLDER/.NAME.lock, which works across the machines sharing the
folder: a second one waits for the first and then reuses its features, and what an
interrupted one left behind is removed by the next.

Beside the cache, FOLDER/NAME (laid out as `feature_shards` says), FOLDER/.NAME.lock is
locked while an extraction of NAME runs; it stays.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
import numpy as np
import tensorflow as tf

from captioning_course.feature_shards import (
    FORMAT,
    MANIFEST,
    SHARD_NAME,
    CachedFeatures,
    input_fields,
    open_dataset,
    write_manifest,
    write_shards,
)

if TYPE_CHECKING:
    import keras

# A key value longer than this (a fingerprint, a long list) is named, not shown, in messages.
_SHOWN_VALUE_CHARS = 24
# A cnn_features setting longer than this as JSON is keyed by its digest.
_COMPACT_CHARS = 200


def model_fingerprint(model: keras.Model) -> str:
    """sha256 hex of `model`'s architecture and of every weight: its bytes, dtype and shape.

    The architecture is the model's config as JSON (sort_keys), with two changes that keep the
    fingerprint of the same network stable across runs: layer names are replaced by their order
    of appearance, since Keras numbers unnamed layers per process ("rescaling_1" when a
    notebook cell runs twice), and the compile settings are left out, as they do not change
    what the model computes.
    """
    config = json.loads(model.to_json())
    digest = hashlib.sha256()
    digest.update(json.dumps(_canonical_config(config), sort_keys=True).encode())
    for variable in model.weights:
        array = np.ascontiguousarray(variable.numpy())
        digest.update(f"{array.dtype.str} {array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def cached_features(
    examples: tf.data.Dataset,
    encode: Callable[[tf.Tensor], Any],
    *,
    name: str,
    key: dict,
    folder: str | Path,
    batch_size: int,
    total: int | None = None,
    description: str = "CNN features",
) -> CachedFeatures:
    """The features `encode` gives for the "image" of each example, cached in `folder/name`.

    `examples` is a dataset of dicts of tensors: "image" (float32 height x width x 3, already
    prepared for the encoder) and any other fields (captions, boxes, labels, scalars...), which
    are stored unchanged next to the features. `encode` maps a batch of images to an array of
    shape (batch, ...), e.g. `tf.function(model)` (a model's `predict_on_batch` would, under a
    distribution strategy, run the batch on every replica). `key` is a JSON-serialisable
    dict of everything that changes the features; `total`, the number of examples if known,
    sets the progress bar's length and is checked against the examples written.

    The cache in `folder/name` is reused when its key equals `key` and its files are intact;
    otherwise the features are computed again, and the new cache replaces the old one only once
    it is complete. Prints one line saying which of these happened and why.
    """
    _check_name(name)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
    if total is not None and (not isinstance(total, int) or total < 0):
        raise ValueError(f"total must be the number of examples or None, not {total!r}")
    fields = input_fields(examples)
    stored_key = _json_round_trip(key)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder for feature caches")
    final = folder / name
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"{final} is a file, not a feature cache folder")

    # A reusable cache is read without the lock, so that a folder one cannot write serves too.
    manifest, reason = _reusable(final, stored_key, fields, total)
    if manifest is not None:
        return _reused(final, manifest, description)
    _check_replaceable(final)
    cardinality = int(examples.cardinality())  # known for many datasets, e.g. after take(n)
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError("the examples repeat forever: cache one pass over them, before repeat()")
    if total is not None and cardinality >= 0 and cardinality != total:
        raise ValueError(f"total is {total} but the examples hold {cardinality}: a stale total "
                         "means a stale key; update both")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(folder / f".{name}.lock")
        _acquire(lock, f"Waiting for another process, here or on another machine, to finish "
                       f"computing the {description} in {final}.")
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write a feature cache in {folder}: {exc.strerror}") \
            from exc
    try:
        _remove_leftovers(folder, name)
        # Most often made, while this one waited, by the extraction it waited for.
        manifest, reason = _reusable(final, stored_key, fields, total)
        if manifest is not None:
            return _reused(final, manifest, description)
        if reason is None:
            print(f"Computing the {description} in {final}; later runs with the same settings "
                  "reuse them.")
        else:
            print(f"Recomputing the {description} in {final}: {reason}.")
        partial = _temporary(final, "partial")
        partial.mkdir()
        start = time.perf_counter()
        progress_total = total if total is not None else (
            cardinality if cardinality >= 0 else None)
        try:
            contents = write_shards(examples, encode, fields, partial, batch_size=batch_size,
                                total=total, progress_total=progress_total,
                                description=description)
            manifest = {"format": FORMAT, "key": stored_key, "description": description,
                        **contents}
            write_manifest(partial / MANIFEST, manifest)  # last: its presence marks a whole cache
            _swap_in(partial, final)
        except BaseException:  # KeyboardInterrupt too: a half-written cache must not stay behind
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return open_dataset(final, manifest, extraction_seconds=time.perf_counter() - start)
    finally:
        lock.release()


def cnn_features(
    examples: tf.data.Dataset,
    cnn: keras.Model,
    *,
    name: str,
    settings: dict,
    folder: str | Path,
    batch_size: int,
    total: int | None = None,
) -> CachedFeatures:
    """`cached_features` of a frozen Keras CNN, as the lessons call it.

    The key is `settings` (everything the lesson did to get the images: dataset, split, count,
    size, preprocessing...) and `model_fingerprint(cnn)`, so new weights recompute the
    features too. A setting whose JSON is long (the captions of a split) enters the key as its
    sha256. The CNN runs as one `tf.function`, on one device.
    """
    key = {**{setting: _compact(value) for setting, value in settings.items()},
           "cnn": model_fingerprint(cnn)}
    return cached_features(examples, tf.function(cnn), name=name, key=key, folder=folder,
                           batch_size=batch_size, total=total)


def _compact(value: Any) -> Any:
    text = json.dumps(value, sort_keys=True)
    if len(text) <= _COMPACT_CHARS:
        return value
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _reused(final: Path, manifest: dict, description: str) -> CachedFeatures:
    cached = open_dataset(final, manifest, extraction_seconds=None)
    print(f"Reusing {description} of {_images(cached.examples)} from {final} "
          f"({_human_size(cached.size_bytes)}).")
    return cached


def _acquire(lock: filelock.FileLock, waiting: str) -> None:
    """Take `lock`, printing `waiting` first when another process holds it."""
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        print(waiting, flush=True)
        lock.acquire()


def _check_name(name: str) -> None:
    # The name becomes one folder inside `folder`; hidden names are where partial caches live.
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty folder name, not {name!r}")
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if any(sep in name for sep in separators) or name in (".", ".."):
        raise ValueError(f"name {name!r} must be a plain folder name, without a path separator")
    if name.startswith("."):
        raise ValueError(f"name {name!r} must not start with '.': hidden names are kept for "
                         "the temporary folders of an extraction")


def _json_round_trip(key: dict) -> dict:
    # Compared with what the manifest gives back: tuples become lists, numbers stay numbers.
    if not isinstance(key, dict):
        raise TypeError(f"key must be a dict of what changes the features, not {type(key)}")
    try:
        return json.loads(json.dumps(key, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"key must be JSON-serialisable: {exc}") from exc


def _reusable(final: Path, key: dict, fields: dict, total: int | None
              ) -> tuple[dict | None, str | None]:
    """(the manifest, None) for a reusable cache, else (None, why not; None if there is none)."""
    if not final.is_dir():
        return None, None
    damaged = "the cache is incomplete or damaged"
    try:
        manifest = json.loads((final / MANIFEST).read_text())
    except FileNotFoundError:
        return None, f"{damaged} (it has no {MANIFEST})"
    except (OSError, ValueError) as exc:
        return None, f"{damaged} ({MANIFEST} is unreadable: {exc})"
    try:
        if manifest["format"] != FORMAT:
            return None, f"the cache has format {manifest['format']}, not {FORMAT}"
        if manifest["key"] != key:
            return None, _key_changes(manifest["key"], key)
        stored = {field: spec for field, spec in manifest["fields"].items() if field != "features"}
        if stored != fields:
            return None, _field_changes(stored, fields)
        if not isinstance(manifest["examples"], int) or "features" not in manifest["fields"]:
            return None, f"{damaged} ({MANIFEST} lacks the example count or the features)"
        if total is not None and manifest["examples"] != total:
            # The key missed what changed the examples (a new dataset version?): recount them.
            return None, f"it holds {manifest['examples']} examples, not the total of {total}"
        for shard in manifest["shards"]:
            path = final / shard["file"]
            if not path.is_file():
                return None, f"{damaged} ({shard['file']} is missing)"
            if path.stat().st_size != shard["bytes"]:
                return None, (f"{damaged} ({shard['file']} has {path.stat().st_size} bytes "
                              f"instead of {shard['bytes']})")
    except (KeyError, TypeError, AttributeError) as exc:
        return None, f"{damaged} ({MANIFEST} is not a cache manifest: {exc!r})"
    return manifest, None


def _key_changes(old: Any, new: dict) -> str:
    if not isinstance(old, dict):
        return "the key changed"

    def shown(value: Any) -> str:
        return json.dumps(value, sort_keys=True)

    def short(*values: Any) -> bool:
        return all(len(shown(v)) <= _SHOWN_VALUE_CHARS for v in values)

    changes = []
    for entry, value in new.items():
        if entry not in old:
            changes.append(f"{entry} added ({shown(value)})" if short(value)
                           else f"{entry} added")
        elif old[entry] != value:
            changes.append(f"{entry} changed ({shown(old[entry])} -> {shown(value)})"
                           if short(old[entry], value) else f"{entry} changed")
    changes += [f"{entry} removed" for entry in old if entry not in new]
    return ", ".join(changes)


def _field_changes(old: dict, new: dict) -> str:
    changes = [f"field {field} added" for field in new if field not in old]
    changes += [f"field {field} removed" for field in old if field not in new]
    changes += [f"field {field} changed ({_shown_spec(old[field])} -> {_shown_spec(new[field])})"
                for field in new if field in old and old[field] != new[field]]
    return ", ".join(changes)


def _shown_spec(spec: Any) -> str:
    try:
        return f"{spec['dtype']} {tuple(spec['shape'])}".replace("None", "?")
    except (KeyError, TypeError):
        return "unknown"


def _check_replaceable(final: Path) -> None:
    """Refuse to replace a folder that holds anything but a feature cache's files."""
    if not final.is_dir():
        return
    foreign = sorted(p.name for p in final.iterdir()
                     if p.name != MANIFEST and not SHARD_NAME.fullmatch(p.name))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ValueError(f"{final} exists and is not a feature cache (it holds {shown}); "
                         "choose another name or folder")


def _temporary(final: Path, kind: str) -> Path:
    """A hidden folder beside `final`: the "partial" cache being written, or the "old" one
    being replaced."""
    return final.with_name(f".{final.name}.{kind}-{secrets.token_hex(4)}")


def _remove_leftovers(folder: Path, name: str) -> None:
    """Remove what interrupted extractions of `name` left: under its lock, none is running."""
    leftover = re.compile(rf"\.{re.escape(name)}\.(partial|old)-[0-9a-f]{{8}}")
    for entry in folder.iterdir():
        if leftover.fullmatch(entry.name) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _swap_in(partial: Path, final: Path) -> None:
    """Rename the complete `partial` to `final`, replacing an older cache only then."""
    old = None
    if final.exists():
        old = _temporary(final, "old")
        final.rename(old)
    try:
        partial.rename(final)
    except BaseException:
        if old is not None and not final.exists():
            old.rename(final)  # put the previous cache back rather than leave none
        raise
    if old is not None:
        # Already out of the way: a failure here leaves a leftover, which a later run removes.
        shutil.rmtree(old, ignore_errors=True)


def _canonical_config(config: Any) -> Any:
    """`config` with layer names replaced by their order of appearance, compile settings out."""
    names: dict[str, str] = {}

    def add(name: Any) -> None:
        if isinstance(name, str):
            names.setdefault(name, f"layer{len(names)}")

    def collect(node: Any) -> None:
        # A model's config lists its layers under "layers"; a nested model is one of them.
        if isinstance(node, dict):
            inner = node.get("config")
            if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
                add(inner.get("name"))
                for layer in inner["layers"]:
                    if isinstance(layer, dict) and isinstance(layer.get("config"), dict):
                        add(layer["config"].get("name"))
                    collect(layer)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    def rename(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: rename(v) for k, v in node.items() if k != "compile_config"}
        if isinstance(node, list):
            return [rename(item) for item in node]
        if isinstance(node, str):
            return names.get(node, node)
        return node

    collect(config)
    return rename(config)


def _images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def _human_size(size: int) -> str:
    if size >= 10**9:
        return f"{size / 10**9:.1f} GB"
    if size >= 10**6:
        return f"{size / 10**6:.0f} MB"
    if size >= 10**3:
        return f"{size / 10**3:.0f} kB"
    return f"{size} bytes"
