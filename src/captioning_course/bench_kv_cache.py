"""`make bench`'s decoding cost against caption length: the Transformer lesson's compiled greedy
decoding, re-running the prefix at every word and with the key/value cache.

Re-running the prefix makes word t cost t positions, so a caption of T words costs about T^2/2
and the time per word grows with T; with the cache each word attends from itself alone, so the
time per word stays nearly flat (its attention still spans the cache's T fixed slots). The
lesson's own classes and decoding steps are taken from its solution, built at its full defaults
with untrained weights (the cost of a word does not depend on them), and decoded on random
features of its encoder's grid with `[END]` banned, so that every caption runs to its full
length.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

from captioning_course.labs import run_definitions

LESSON = Path("solutions/image_captioning_transformer.ipynb")
LENGTHS = (16, 32, 64)
BATCH = 32
REPEATS = 5
# The lesson's full defaults: MobileNetV3Small's 7x7 grid of 576 channels, its model sizes.
REGIONS, CHANNELS = 49, 576
SETTINGS = {"units": 256, "num_layers": 2, "num_heads": 2}
VOCABULARY_SIZE = 5000
DEFINITIONS = ("SeqEmbedding", "scaled_dot_product_attention", "CausalSelfAttention",
               "CrossAttention", "FeedForward", "DecoderLayer", "TokenOutput", "Captioner",
               "decoding_step", "first_state", "attend_with_cache", "cached_decoding_step",
               "empty_cache")


def seconds_per_word(decoder, features) -> float:
    decoder.greedy(features)  # compiles
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        decoded = decoder.greedy(features)
        decoded.ids.numpy()  # waits for the result
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) / (BATCH * decoder.max_length)


def bench() -> dict[str, Any]:
    """Milliseconds per word of each decoder at each caption length, and their ratio."""
    import keras
    import tensorflow as tf
    from keras import layers, ops

    from captioning_course.decoding import CaptionDecoder

    lesson = run_definitions(LESSON, DEFINITIONS,
                             {"keras": keras, "layers": layers, "ops": ops, "tf": tf})
    # AutoGraph reads a function's source from its file, here a notebook; the steps need no
    # conversion (their loops run over layers, in Python).
    plain = {name: tf.autograph.experimental.do_not_convert(lesson[name])
             for name in ("decoding_step", "first_state", "cached_decoding_step", "empty_cache")}
    special = ["", "[UNK]", "[START]", "[END]"]
    vocabulary = special + [f"word{i}" for i in range(VOCABULARY_SIZE - len(special))]
    features = tf.random.stateless_normal((BATCH, REGIONS, CHANNELS), seed=(0, 0))
    points = []
    for length in LENGTHS:
        lesson["caption_length"] = length + 1  # with [START]: the steps read it as a global
        model = lesson["Captioner"](vocabulary, max_length=length + 1, **SETTINGS)
        model((features, tf.zeros((BATCH, length), "int32")))  # builds the weights
        point = {"words": length}
        decoders = {
            "recomputed": (partial(plain["decoding_step"], model=model), plain["first_state"]),
            "cached": (partial(plain["cached_decoding_step"], model=model),
                       partial(plain["empty_cache"], model=model)),
        }
        for name, (step, initial_state) in decoders.items():
            decoder = CaptionDecoder(step, initial_state, vocabulary=vocabulary,
                                     max_length=length, start="[START]", end="[END]",
                                     banned=special, models=[model])
            point[f"{name}_ms_per_word"] = 1000 * seconds_per_word(decoder, features)
        point["speedup"] = point["recomputed_ms_per_word"] / point["cached_ms_per_word"]
        points.append(point)
    return {"batch": BATCH, "points": points}


def table(results: dict[str, Any]) -> str:
    lines = [f"Transformer greedy decoding, batch of {results['batch']}: ms per word",
             f"{'words':>6} {'recomputed':>11} {'cached':>8} {'speedup':>8}"]
    lines += [f"{p['words']:6} {p['recomputed_ms_per_word']:11.3f} {p['cached_ms_per_word']:8.3f} "
              f"{p['speedup']:7.1f}x" for p in results["points"]]
    return "\n".join(lines)
