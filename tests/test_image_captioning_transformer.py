"""The Transformer lesson: it learns, starts from the marginal entropy, reloads exactly, and
reads Flickr8k as its authors ship it."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image

from captioning_course.feature_shards import open_cache
from conftest import (
    REPO,
    assert_beats_the_image_blind_baseline,
    assert_every_sample_photo_captioned,
    notebook_definitions,
    printed_text,
    recorded_metrics,
)

LESSON = REPO / "solutions" / "image_captioning_transformer.ipynb"


@pytest.fixture(scope="module")
def metrics(smoke_run):
    return recorded_metrics(smoke_run, LESSON.stem)


def test_model_clearly_beats_the_image_blind_baseline(metrics):
    assert_beats_the_image_blind_baseline(metrics)


def test_the_first_loss_is_the_marginal_entropy_not_the_uniform_one(metrics):
    entropy = metrics["entropy"]
    assert entropy["marginal"] < 0.95 * entropy["uniform"]  # so the comparison means something
    assert entropy["initial_loss"] == pytest.approx(entropy["marginal"], rel=0.05)


def test_early_stopping_keeps_the_best_epoch(metrics):
    val_loss = metrics["history"]["val_loss"]
    assert val_loss[metrics["best_epoch"] - 1] == min(val_loss)
    assert min(val_loss) < val_loss[0]
    assert len(metrics["epoch_captions"]) == len(val_loss)
    assert all(set(captions) == {"0.0", "0.5", "1.0"} for captions in metrics["epoch_captions"])


def test_the_reloaded_captioner_writes_the_same_captions(metrics):
    assert metrics["reload_matches"] is True


def test_compiled_decoding_writes_the_loop_captions(metrics):
    agreement = metrics["compiled_agrees_with_loop"]
    assert agreement["of"] > 0 and agreement["same"] == agreement["of"]


def test_decoding_with_the_key_value_cache_writes_the_same_captions_faster(metrics):
    cache = metrics["kv_cache"]
    assert cache["of"] > 0 and cache["same"] == cache["of"]
    seconds = cache["seconds"]
    assert cache["speedup"] == seconds["recomputed"] / seconds["cached"]


def test_every_sample_photo_is_captioned(metrics):
    assert_every_sample_photo_captioned(metrics)


def cached_training_features(result, photos: int = 64) -> np.ndarray:
    """The float16 features of the first training photos, read back from the feature cache
    that the run's record names: in a used clone, caches of other runs lie beside it."""
    folder = result.metrics["feature_caches"]["train"]
    return np.stack([record["features"].numpy()
                     for record in open_cache(folder).dataset.take(photos)])


def test_untrained_inception_resnet_features_keep_their_spread(smoke_run):
    """Why the smoke profile changes the encoder (profiles.py): untrained InceptionResNetV2's
    features survive float16; about half are zeros, as after any ReLU."""
    result = smoke_run[LESSON.stem]
    assert result.status == "ok", result.failure
    features = cached_training_features(result).astype("float32")
    assert features.std() > 1e-3 and np.mean(features == 0) < 0.9


def test_rehearsal_runs_the_full_sizes_and_untrained_mobilenet_features_vanish(rehearsal_run):
    """The rehearsal keeps MobileNetV3Small; untrained, its features are all zeros in float16,
    which is why the smoke profile, which must learn, changes the encoder."""
    result = rehearsal_run[LESSON.stem]
    assert result.status == "ok", result.failure
    assert "MobileNetV3Small: a 7x7 grid of 576 channels" in printed_text(result.executed)
    assert np.mean(cached_training_features(result) == 0) > 0.99
    assert result.metrics["reload_matches"] is True


# Flickr8k, offline: archives in the authors' layout, served from a file:// URL.
PHOTOS = {"train": ["1000_a.jpg", "1001_b.jpg", "1002_c.jpg"], "val": ["2000_d.jpg"],
          "test": ["3000_e.jpg"]}
LIST_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
              "test": "Flickr_8k.testImages.txt"}


def make_flickr8k_archives(folder, *, leave_out=()):
    folder.mkdir(parents=True)
    names = [name for split in PHOTOS.values() for name in split]
    with zipfile.ZipFile(folder / "Flickr8k_Dataset.zip", "w") as archive:
        for number, name in enumerate(names):
            if name in leave_out:
                continue
            photo = folder / name
            Image.new("RGB", (40 + number, 30), (10 * number, 80, 160)).save(photo)
            archive.write(photo, f"Flicker8k_Dataset/{name}")
    tokens = "".join(f"{name}#{i}\t{name[5]} caption number {i} .\n"
                     for name in names for i in range(5))
    with zipfile.ZipFile(folder / "Flickr8k_text.zip", "w") as archive:
        archive.writestr("Flickr8k.token.txt", tokens)
        for split, list_file in LIST_FILES.items():
            archive.writestr(list_file, "\n".join(PHOTOS[split]) + "\n")
    return folder.as_uri() + "/"


@pytest.fixture(scope="module")
def flickr8k():
    return notebook_definitions(LESSON, "download_flickr8k", "FLICKR8K_LISTS", "flickr8k_split",
                                "read_photo", "load_split")


def test_flickr8k_is_downloaded_unpacked_and_split_by_the_authors_lists(flickr8k, tmp_path):
    url = make_flickr8k_archives(tmp_path / "server")
    photos, texts = flickr8k["download_flickr8k"](tmp_path / "data" / "flickr8k", url)
    for split, names in PHOTOS.items():
        paths, captions = flickr8k["flickr8k_split"](photos, texts, split)
        assert [path.rsplit("/", 1)[-1] for path in paths] == names
        assert all(len(group) == 5 for group in captions)
        assert captions[0][4] == f"{names[0][5]} caption number 4 ."


def test_flickr8k_is_not_downloaded_twice(flickr8k, tmp_path):
    url = make_flickr8k_archives(tmp_path / "server")
    first = flickr8k["download_flickr8k"](tmp_path / "flickr8k", url)
    for archive in (tmp_path / "server").glob("*.zip"):
        archive.unlink()  # a second download would now fail
    assert flickr8k["download_flickr8k"](tmp_path / "flickr8k", url) == first


def test_a_photo_missing_from_the_archive_is_named(flickr8k, tmp_path):
    url = make_flickr8k_archives(tmp_path / "server", leave_out=("1001_b.jpg",))
    photos, texts = flickr8k["download_flickr8k"](tmp_path / "flickr8k", url)
    with pytest.raises(FileNotFoundError, match=r"1 photos .*'train'.*1001_b\.jpg"):
        flickr8k["flickr8k_split"](photos, texts, "train")


def test_load_split_reads_flickr8k_photos_as_pixels_with_their_captions(flickr8k, tmp_path):
    url = make_flickr8k_archives(tmp_path / "server")
    flickr8k["flickr8k_folders"] = flickr8k["download_flickr8k"](tmp_path / "flickr8k", url)
    photos, captions = flickr8k["load_split"]("train", 2)
    assert photos.element_spec.shape.as_list() == [None, None, 3]  # what tf.image.resize needs
    pixels = list(photos.as_numpy_iterator())
    assert [p.shape for p in pixels] == [(30, 40, 3), (30, 41, 3)]
    assert pixels[1].dtype == np.uint8 and len(captions) == 2
