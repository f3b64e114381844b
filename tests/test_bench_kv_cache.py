"""`make bench`'s decoding cost against caption length runs the Transformer lesson's own
decoding steps, with and without the key/value cache."""

from __future__ import annotations

from captioning_course import bench_kv_cache
from conftest import REPO


def test_both_decoders_are_timed_per_word_at_every_length(monkeypatch):
    monkeypatch.setattr(bench_kv_cache, "LESSON",
                        REPO / "solutions" / "image_captioning_transformer.ipynb")
    monkeypatch.setattr(bench_kv_cache, "LENGTHS", (2, 4))
    monkeypatch.setattr(bench_kv_cache, "BATCH", 2)
    monkeypatch.setattr(bench_kv_cache, "REPEATS", 1)
    monkeypatch.setattr(bench_kv_cache, "VOCABULARY_SIZE", 12)
    results = bench_kv_cache.bench()
    assert [point["words"] for point in results["points"]] == [2, 4]
    for point in results["points"]:
        assert point["recomputed_ms_per_word"] > 0 and point["cached_ms_per_word"] > 0
        assert point["speedup"] == (point["recomputed_ms_per_word"]
                                    / point["cached_ms_per_word"])
    assert "ms per word" in bench_kv_cache.table(results)
