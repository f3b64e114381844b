"""The feature cache: a faithful round trip, reuse under the same key only, no half-done cache,
one extraction at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from captioning_course import feature_shards, features
from captioning_course.features import cached_features, model_fingerprint

NAME = "tiny_train"
# Left in place after an extraction: removing it would let two extractions hold it at once.
LOCK = f".{NAME}.lock"
BATCH = 4
# 10 images in batches of 4: the 2nd batch is mid-way, the 3rd a short one.
CAPTION_COUNTS = [2, 1, 3, 0, 2, 5, 1, 1, 4, 2]
BOX_COUNTS = [1, 0, 3, 2, 0, 1, 4, 2, 1, 0]


def tiny_examples() -> list[dict]:
    rng = np.random.default_rng(3)
    return [{
        "image": rng.uniform(0, 1, (16, 16, 3)).astype(np.float32),
        "captions": np.array([f"caption {j} of image {i}".encode()
                              for j in range(CAPTION_COUNTS[i])], dtype=object),
        "boxes": rng.uniform(0, 1, (BOX_COUNTS[i], 4)).astype(np.float32),
        "labels": rng.integers(0, 80, BOX_COUNTS[i]).astype(np.int64),
        "id": np.int64(1000 + i),
    } for i in range(len(CAPTION_COUNTS))]


EXAMPLES = tiny_examples()
SIGNATURE = {
    "image": tf.TensorSpec((16, 16, 3), tf.float32),
    "captions": tf.TensorSpec((None,), tf.string),
    "boxes": tf.TensorSpec((None, 4), tf.float32),
    "labels": tf.TensorSpec((None,), tf.int64),
    "id": tf.TensorSpec((), tf.int64),
}


def dataset(examples: list[dict] = EXAMPLES) -> tf.data.Dataset:
    # A generator, like a TFDS pipeline: its length is unknown until it ends.
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=SIGNATURE)


def tiny_cnn(seed: int = 0) -> keras.Model:
    """16x16 images to a (2, 2, 3) grid of non-negative features, like a ReLU CNN's."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(3, 3, padding="same", activation="relu"),
        keras.layers.AveragePooling2D(8),
    ])


class Encoder:
    """model.predict_on_batch, counting its calls; `fail` raises on the call numbered `on`."""

    def __init__(self, model: keras.Model, fail: BaseException | None = None, on: int = 2):
        self.model, self.fail, self.on, self.calls = model, fail, on, 0

    def __call__(self, images):
        self.calls += 1
        if self.fail is not None and self.calls == self.on:
            raise self.fail
        return self.model.predict_on_batch(images)


def key_for(model: keras.Model, **changes) -> dict:
    return {"dataset": "tiny", "version": "1.0.0", "split": "train", "examples": 10,
            "image_size": 16, "preprocessing": "uniform 0-1",
            "encoder": model_fingerprint(model), **changes}


def build(tmp_path, encode, key, **kwargs):
    kwargs = {"name": NAME, "folder": tmp_path, "batch_size": BATCH, **kwargs}
    return cached_features(dataset(), encode, key=key, **kwargs)


def read(cached: features.CachedFeatures) -> list[dict]:
    return [{field: value.numpy() for field, value in example.items()}
            for example in cached.dataset]


def assert_cache_holds(cached: features.CachedFeatures, model: keras.Model) -> None:
    expected = model.predict_on_batch(np.stack([e["image"] for e in EXAMPLES]))
    got = sorted(read(cached), key=lambda example: example["id"])  # EXAMPLES' order
    assert len(got) == cached.examples == len(EXAMPLES)
    for example, original, grid in zip(got, EXAMPLES, expected, strict=True):
        assert set(example) == set(SIGNATURE) - {"image"} | {"features"}
        assert example["features"].dtype == np.float16
        np.testing.assert_allclose(example["features"], grid, rtol=2e-3, atol=1e-4)
        for field in ("captions", "boxes", "labels", "id"):
            assert example[field].dtype == original[field].dtype, field
            np.testing.assert_array_equal(example[field], original[field], err_msg=field)
            assert example[field].shape == original[field].shape, field  # (0, 4) stays (0, 4)


def folder_contents(tmp_path) -> dict[str, bytes]:
    return {str(p.relative_to(tmp_path)): p.read_bytes()
            for p in sorted(tmp_path.rglob("*")) if p.is_file() and p.name != LOCK}


def left_behind(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name != LOCK)


def shard_files(cached: features.CachedFeatures) -> list:
    return sorted(cached.path.glob("shard-*.tfrecord"))


@pytest.fixture(autouse=True)
def small_shards(monkeypatch):
    # A few records per shard, so that every test crosses shard boundaries.
    monkeypatch.setattr(feature_shards, "SHARD_BYTES", 1000)


@pytest.fixture(scope="module")
def cnn() -> keras.Model:
    return tiny_cnn(0)


def test_round_trip_then_reuse(tmp_path, capsys, cnn):
    encode = Encoder(cnn)
    first = build(tmp_path, encode, key_for(cnn))
    assert encode.calls == 3
    assert first.path == tmp_path / NAME and first.extraction_seconds is not None
    assert "Computing the CNN features in" in capsys.readouterr().out
    assert len(shard_files(first)) > 1
    assert first.size_bytes == sum(p.stat().st_size for p in first.path.iterdir())
    spec = first.dataset.element_spec
    assert spec["features"] == tf.TensorSpec((2, 2, 3), tf.float16)
    assert spec["captions"].shape.as_list() == [None] and spec["captions"].dtype == tf.string
    assert spec["boxes"].shape.as_list() == [None, 4]
    assert spec["labels"].shape.as_list() == [None] and spec["labels"].dtype == tf.int64
    assert spec["id"].shape.rank == 0
    assert int(first.dataset.cardinality()) == len(EXAMPLES)
    assert_cache_holds(first, cnn)

    again = build(tmp_path, encode, key_for(cnn))
    assert encode.calls == 3, "a reused cache must not run the encoder"
    assert again.extraction_seconds is None
    assert (again.path, again.examples, again.size_bytes) == (first.path, 10, first.size_bytes)
    out = capsys.readouterr().out
    assert out.startswith(f"Reusing CNN features of 10 images from {first.path} (")
    assert out.count("\n") == 1
    assert_cache_holds(again, cnn)
    assert left_behind(tmp_path) == [NAME]  # no temporary folder


def test_the_reader_takes_a_record_of_each_of_several_shards_in_turn(tmp_path, cnn,
                                                                   monkeypatch):
    monkeypatch.setattr(feature_shards, "PARALLEL_SHARDS", 2)
    cached = build(tmp_path, Encoder(cnn), key_for(cnn))
    shard_of = {}
    id_only = {"id": tf.io.FixedLenFeature([], tf.string)}
    for shard in shard_files(cached):
        for record in tf.data.TFRecordDataset(str(shard)):
            example = tf.io.parse_single_example(record, id_only)
            shard_of[int(tf.io.parse_tensor(example["id"], tf.int64))] = shard.name
    assert len(set(shard_of.values())) > feature_shards.PARALLEL_SHARDS  # the cycle must wrap round
    order = [int(example["id"]) for example in read(cached)]
    first_round = [shard_of[i] for i in order[:feature_shards.PARALLEL_SHARDS]]
    assert first_round == sorted(set(shard_of.values()))[:feature_shards.PARALLEL_SHARDS]
    assert order == [int(example["id"]) for example in read(cached)]  # the same every epoch


def test_a_changed_key_rebuilds_and_names_the_change(tmp_path, capsys, cnn):
    build(tmp_path, Encoder(cnn), key_for(cnn))
    capsys.readouterr()
    other = tiny_cnn(1)
    encode = Encoder(other)
    rebuilt = build(tmp_path, encode, key_for(other, version="1.1.0", augment=False),
                    description="grid features")
    assert encode.calls == 3 and rebuilt.extraction_seconds is not None
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        f"Recomputing the grid features in {tmp_path / NAME}: "
        'version changed ("1.0.0" -> "1.1.0"), encoder changed, augment added (false).')
    assert_cache_holds(rebuilt, other)
    assert left_behind(tmp_path) == [NAME]


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), RuntimeError("GPU fell over")],
                         ids=["ctrl-c", "error"])
@pytest.mark.parametrize("earlier_cache", [False, True], ids=["first", "replacing"])
def test_an_interrupted_extraction_leaves_nothing_behind(tmp_path, capsys, cnn, failure,
                                                          earlier_cache):
    other = tiny_cnn(1)
    if earlier_cache:
        build(tmp_path, Encoder(other), key_for(other))
    before = folder_contents(tmp_path)

    with pytest.raises(type(failure)):
        build(tmp_path, Encoder(cnn, fail=failure, on=2), key_for(cnn))
    assert folder_contents(tmp_path) == before  # the earlier cache intact, or nothing at all
    assert left_behind(tmp_path) == ([NAME] if earlier_cache else [])
    if earlier_cache:
        capsys.readouterr()
        kept = build(tmp_path, Encoder(other), key_for(other))
        assert kept.extraction_seconds is None
        assert_cache_holds(kept, other)

    encode = Encoder(cnn)
    complete = build(tmp_path, encode, key_for(cnn))
    assert encode.calls == 3 and complete.extraction_seconds is not None
    assert_cache_holds(complete, cnn)


def test_leftovers_of_interrupted_extractions_are_removed_by_the_next(tmp_path, cnn):
    own = [tmp_path / f".{NAME}.partial-0123abcd", tmp_path / f".{NAME}.old-89abcdef"]
    # Another cache's: one named "other", and one named "tiny_train.partial-ab".
    others = [tmp_path / ".other.partial-0123abcd", tmp_path / f".{NAME}.partial-ab.old-0123abcd"]
    for leftover in (*own, *others):
        leftover.mkdir()
        (leftover / "shard-00000.tfrecord").write_bytes(b"half")

    build(tmp_path, Encoder(cnn), key_for(cnn))
    assert [p.exists() for p in own] == [False, False]
    assert [p.exists() for p in others] == [True, True]


# Extracts the features of six tiny images as ROLE, with a fake encoder that notes each call.
# The first one to start waits, once extracting, until the test lets it finish.
EXTRACTION = """
import sys, time
from pathlib import Path
import numpy as np
import tensorflow as tf
from captioning_course.features import cached_features

signals, role = Path(sys.argv[1]), sys.argv[2]

def encode(images):
    with open(signals / "encoded", "a") as calls:
        calls.write(role + "\\n")
    (signals / f"{role} is extracting").touch()
    while role == "first" and not (signals / "finish").exists():
        time.sleep(0.05)
    return np.asarray(images)[:, :2, :2, :] * 2

images = np.linspace(0, 1, 6 * 4 * 4 * 3, dtype=np.float32).reshape(6, 4, 4, 3)
examples = tf.data.Dataset.from_tensor_slices({"image": images, "id": np.arange(6)})
cached = cached_features(examples, encode, name="shared", key={"encoder": "fake"},
                         folder=signals / "caches", batch_size=2, total=6)
np.save(signals / f"{role}.npy", np.stack([e["features"].numpy() for e in cached.dataset]))
"""


def test_a_second_extraction_of_one_cache_waits_for_the_first_and_reuses_it(tmp_path):
    def start(role: str) -> subprocess.Popen:
        with (tmp_path / f"{role}.log").open("w") as log:
            return subprocess.Popen([sys.executable, "-c", EXTRACTION, str(tmp_path), role],
                                    stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})

    def wait_for(what: str, happened) -> None:
        deadline = time.monotonic() + 120
        while not happened():
            assert time.monotonic() < deadline, f"{what} never happened; " + "\n".join(
                (tmp_path / f"{role}.log").read_text() for role in started)
            time.sleep(0.1)

    started = {}
    try:
        started["first"] = start("first")
        wait_for("the first extraction", (tmp_path / "first is extracting").exists)
        started["second"] = start("second")
        wait_for("the second one's wait",
                 lambda: "Waiting for another process" in (tmp_path / "second.log").read_text())
        (tmp_path / "finish").touch()
        assert [process.wait(timeout=120) for process in started.values()] == [0, 0]
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
    assert (tmp_path / "encoded").read_text().split() == ["first"] * 3  # 6 images, batches of 2
    second = (tmp_path / "second.log").read_text()
    assert "Reusing CNN features of 6 images from" in second and "Computing" not in second
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), np.load(tmp_path / "second.npy"))
    assert sorted(p.name for p in (tmp_path / "caches").iterdir()) == [".shared.lock", "shared"]


@pytest.mark.parametrize("damage", ["delete shard", "truncate shard", "delete manifest",
                                    "garble manifest"])
def test_a_damaged_cache_is_rebuilt(tmp_path, capsys, cnn, damage):
    cached = build(tmp_path, Encoder(cnn), key_for(cnn))
    shard = shard_files(cached)[1]
    manifest = cached.path / "cache.json"
    if damage == "delete shard":
        shard.unlink()
    elif damage == "truncate shard":
        shard.write_bytes(shard.read_bytes()[:-10])
    elif damage == "delete manifest":
        manifest.unlink()
    else:
        manifest.write_text(manifest.read_text()[:40])
    capsys.readouterr()

    encode = Encoder(cnn)
    rebuilt = build(tmp_path, encode, key_for(cnn))
    assert encode.calls == 3 and rebuilt.extraction_seconds is not None
    out = capsys.readouterr().out
    assert out.startswith(f"Recomputing the CNN features in {cached.path}: the cache is "
                          "incomplete or damaged (")
    if damage.endswith("shard"):
        assert shard.name in out
    assert_cache_holds(rebuilt, cnn)


def test_fields_added_to_the_examples_rebuild_the_cache(tmp_path, capsys, cnn):
    build(tmp_path, Encoder(cnn), key_for(cnn))
    capsys.readouterr()
    without_ids = dataset().map(lambda e: {k: v for k, v in e.items() if k != "id"})
    encode = Encoder(cnn)
    rebuilt = cached_features(without_ids, encode, name=NAME, key=key_for(cnn),
                              folder=tmp_path, batch_size=BATCH)
    assert encode.calls == 3 and "id" not in rebuilt.dataset.element_spec
    assert capsys.readouterr().out.startswith(
        f"Recomputing the CNN features in {tmp_path / NAME}: field id removed.")


def test_a_cache_of_another_size_than_total_is_rebuilt(tmp_path, capsys, cnn):
    build(tmp_path, Encoder(cnn), key_for(cnn), total=10)
    capsys.readouterr()
    # The same key for fewer examples: a key that misses a change, caught by the count.
    encode = Encoder(cnn)
    rebuilt = cached_features(dataset(EXAMPLES[:9]), encode, name=NAME, key=key_for(cnn),
                              folder=tmp_path, batch_size=BATCH, total=9)
    assert encode.calls == 3 and rebuilt.examples == len(read(rebuilt)) == 9
    assert "it holds 10 examples, not the total of 9" in capsys.readouterr().out


def test_fingerprint_follows_weights_not_layer_names():
    first, second = tiny_cnn(0), tiny_cnn(0)
    assert first.name != second.name  # Keras numbers unnamed models: "sequential_1"...
    assert model_fingerprint(first) == model_fingerprint(second)
    assert len(model_fingerprint(first)) == 64

    kernel = second.layers[0].kernel
    changed = kernel.numpy()
    changed[0, 0, 0, 0] += 1e-3
    kernel.assign(changed)
    assert model_fingerprint(first) != model_fingerprint(second)
    assert model_fingerprint(first) != model_fingerprint(tiny_cnn(1))

    wider = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.AveragePooling2D(4)])
    narrower = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.AveragePooling2D(8)])
    assert model_fingerprint(wider) != model_fingerprint(narrower)  # no weights at all


@pytest.mark.parametrize("total,message", [
    (5, "total is 5 but the examples hold at least 8"),
    (12, "total is 12 but the examples hold 10"),
])
def test_a_wrong_total_is_refused(tmp_path, cnn, total, message):
    with pytest.raises(ValueError, match=message):
        build(tmp_path, Encoder(cnn), key_for(cnn), total=total)
    assert left_behind(tmp_path) == []


def test_a_wrong_total_of_a_sized_dataset_is_refused_before_encoding(tmp_path, cnn):
    encode = Encoder(cnn)
    sized = dataset().apply(tf.data.experimental.assert_cardinality(10))
    with pytest.raises(ValueError, match="total is 9 but the examples hold 10"):
        cached_features(sized, encode, name=NAME, key=key_for(cnn), folder=tmp_path,
                        batch_size=BATCH, total=9)
    assert encode.calls == 0
    assert build(tmp_path, encode, key_for(cnn), total=10).examples == 10


@pytest.mark.parametrize("name", ["", "a/b", "../up", ".hidden", "..", "."])
def test_a_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, cnn, name):
    with pytest.raises(ValueError, match="name"):
        build(tmp_path, Encoder(cnn), key_for(cnn), name=name)
    assert list(tmp_path.iterdir()) == []


def test_empty_examples_are_refused(tmp_path, cnn):
    with pytest.raises(ValueError, match="no examples to encode"):
        cached_features(dataset([]), Encoder(cnn), name=NAME, key=key_for(cnn),
                        folder=tmp_path, batch_size=BATCH)
    assert left_behind(tmp_path) == []


def test_an_encoder_that_loses_the_batch_dimension_is_refused(tmp_path, cnn):
    def first_image_only(images):
        return cnn.predict_on_batch(images)[:1]

    with pytest.raises(ValueError, match=r"shape \(1, 2, 2, 3\) for images of shape "
                                         r"\(4, 16, 16, 3\)"):
        build(tmp_path, first_image_only, key_for(cnn))
    assert left_behind(tmp_path) == []


def test_features_beyond_float16_are_refused(tmp_path, cnn):
    with pytest.raises(ValueError, match="float16's range"):
        build(tmp_path, lambda images: cnn.predict_on_batch(images) + 1e5, key_for(cnn))


def test_a_folder_that_is_a_file_is_refused(tmp_path, cnn):
    (tmp_path / "features").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="is a file"):
        build(tmp_path / "features", Encoder(cnn), key_for(cnn))


def test_a_folder_that_is_not_a_cache_is_never_replaced(tmp_path, cnn):
    precious = tmp_path / NAME / "thesis.tex"
    precious.parent.mkdir()
    precious.write_text("four years of work")
    with pytest.raises(ValueError, match="is not a feature cache"):
        build(tmp_path, Encoder(cnn), key_for(cnn))
    assert precious.read_text() == "four years of work"


def test_the_key_must_be_json(tmp_path, cnn):
    with pytest.raises(ValueError, match="JSON"):
        build(tmp_path, Encoder(cnn), key_for(cnn, image_size=np.int64(16)))


def test_the_manifest_records_key_fields_and_shards(tmp_path, cnn):
    key = key_for(cnn, crop=(0.1, 0.9))  # a tuple: stored and compared as its JSON list
    cached = build(tmp_path, Encoder(cnn), key)
    manifest = json.loads((cached.path / "cache.json").read_text())
    assert manifest["key"] == json.loads(json.dumps(key)) and manifest["examples"] == 10
    assert manifest["fields"] == {
        "features": {"dtype": "float16", "shape": [2, 2, 3]},
        "boxes": {"dtype": "float32", "shape": [None, 4]},
        "captions": {"dtype": "string", "shape": [None]},
        "id": {"dtype": "int64", "shape": []},
        "labels": {"dtype": "int64", "shape": [None]},
    }
    assert [(s["file"], s["bytes"]) for s in manifest["shards"]] == [
        (p.name, p.stat().st_size) for p in shard_files(cached)]
    assert build(tmp_path, Encoder(cnn), key).extraction_seconds is None


def test_cnn_features_reuses_only_for_the_same_settings_and_weights(tmp_path, capsys, cnn):
    settings = {"dataset": "tiny", "split": "train", "image_size": 16}

    def extract(model, **changes):
        return features.cnn_features(dataset(), model, name=NAME, settings={**settings, **changes},
                                     folder=tmp_path, batch_size=BATCH)

    assert_cache_holds(extract(cnn), cnn)
    assert extract(cnn).extraction_seconds is None  # the same settings and weights: reused
    assert extract(cnn, image_size=32).extraction_seconds is not None
    other = tiny_cnn(1)
    assert_cache_holds(extract(other, image_size=32), other)  # new weights: computed again
    assert "cnn" in capsys.readouterr().out


def test_cnn_features_keys_a_long_setting_by_its_digest(tmp_path, cnn):
    captions = [f"caption number {i} of a long list" for i in range(100)]

    def extract(listed):
        return features.cnn_features(dataset(), cnn, name=NAME, folder=tmp_path, batch_size=BATCH,
                                     settings={"split": "train", "captions": listed})

    cached = extract(captions)
    key = json.loads((cached.path / feature_shards.MANIFEST).read_text())["key"]
    assert key["captions"].startswith("sha256:") and key["split"] == "train"
    assert key["cnn"] == model_fingerprint(cnn)
    assert extract(captions).extraction_seconds is None
    assert extract([*captions[:-1], "another caption"]).extraction_seconds is not None
