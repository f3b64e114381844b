"""`make bench`'s feature cache past memory reads the cache the way the main lesson trains on
it: a synthetic cache through the cache's writer, batched by the lesson's own functions."""

from __future__ import annotations

import numpy as np

from captioning_course import bench_feature_cache
from captioning_course.feature_shards import open_cache
from conftest import REPO


def test_the_lesson_s_batches_come_from_a_synthetic_cache_of_the_real_shape(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(bench_feature_cache, "LESSON",
                        REPO / "solutions" / "image_captioning.ipynb")
    written = bench_feature_cache.write_cache(tmp_path, 40)
    reopened = open_cache(written.path)
    assert reopened.examples == 40 and reopened.size_bytes == written.size_bytes
    assert reopened.size_bytes > 40 * np.prod(bench_feature_cache.GRID) * 2  # float16 grids

    batches = bench_feature_cache.lesson_batches(reopened)
    (grids, tokens), targets = next(iter(batches))
    size = bench_feature_cache.BATCH_SIZE
    assert grids.shape == (size, *bench_feature_cache.GRID) and grids.dtype == np.float32
    assert tokens.shape == targets.shape == (size, bench_feature_cache.CAPTION_LENGTH)
    np.testing.assert_array_equal(targets[:, :-1], tokens[:, 1:])  # the next word
    assert sum(int(grids.shape[0]) for (grids, _), _ in batches) == 40
