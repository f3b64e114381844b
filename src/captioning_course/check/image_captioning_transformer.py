"""The self-checks of image_captioning_transformer: the causal mask, scaled dot-product
attention compared with Keras's MultiHeadAttention given the same weights, the output layer's
first bias and one decoding step with a key/value cache (exercises 1 to 4)."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from captioning_course.check.core import (
    as_arrays,
    close,
    fail,
    fix_weights,
    judge,
    one_line,
    print_pass,
    run_answer,
    run_in_a_graph,
)

MASK_EXERCISE = "Exercise 1 (causal_mask)"
ATTENTION_EXERCISE = "Exercise 2 (scaled_dot_product_attention)"
BIAS_EXERCISE = "Exercise 3 (log_frequency_bias)"
CACHE_EXERCISE = "Exercise 4 (attend_with_cache)"


def _boolean_mask(exercise: str, result, shape: tuple) -> np.ndarray:
    if result is None:
        fail(exercise, "causal_mask returns None: return the (length, length) booleans")
    array = np.asarray(result)
    if array.shape != shape:
        fail(exercise, f"the mask has shape {array.shape}; expected {shape}, one row per "
                       "query position and one column per key position")
    if array.dtype != bool:
        if not np.isin(array, (0, 1)).all():
            fail(exercise, "return booleans (or 0 and 1): True where the query may attend "
                           "to the key")
        array = array.astype(bool)
    return array


MASK_LENGTH = 5
MASK_MISTAKES = {
    "upper": "the mask is on the wrong side: word i sees the words after it and not those "
             "before; allow key j where j <= i, the lower triangle",
    "strict": "a word cannot see itself: allow j <= i, the diagonal included (at position 0 "
              "there is nothing else to attend to)",
    "hidden": "True marks the pairs to hide: the mask must be True where word i may attend "
              "to word j, j <= i",
    "everything": "nothing is masked: word i must not see the words after it",
}


def causal_mask(fn: Callable) -> None:
    """causal_mask(length): (length, length) booleans, True where key j <= query i."""
    exercise = MASK_EXERCISE
    rows, cols = np.indices((MASK_LENGTH, MASK_LENGTH))
    result = _boolean_mask(exercise, run_answer(exercise, "causal_mask", fn, MASK_LENGTH),
                           (MASK_LENGTH, MASK_LENGTH))
    variants = {"correct": cols <= rows, "upper": cols >= rows, "strict": cols < rows,
                "hidden": cols > rows, "everything": np.ones_like(result)}
    judge(exercise, result, variants, MASK_MISTAKES,
          "expected True where the key's position j <= the query's position i, else False",
          same=np.array_equal)
    if not _boolean_mask(exercise, run_answer(exercise, "causal_mask", fn, 1), (1, 1)).all():
        fail(exercise, "causal_mask(1) must be [[True]]: the first word sees itself")
    print_pass(exercise, "each word sees itself and the words before it, never those after")


# Exercise 2: scaled dot-product attention, as MultiHeadAttention computes it

HEADS, DEPTH = 2, 4
# 3 captions of 5 words of 8 values and their images' 9 regions of 6 values: words, regions,
# heads and depth all differ in number, so a transposed axis shows in a shape or a value.
WORDS = np.random.default_rng(61).normal(0, 1, (3, 5, 8)).astype("float32")
REGIONS = np.random.default_rng(62).uniform(0, 2, (3, 9, 6)).astype("float32")


def _attention_layer(query, value, seed: int) -> keras.layers.MultiHeadAttention:
    """Keras's MultiHeadAttention with fixed weights, built for these inputs."""
    layer = keras.layers.MultiHeadAttention(num_heads=HEADS, key_dim=DEPTH)
    layer(query, value)
    fix_weights(layer, seed)
    return layer


def _projections(layer, query, value) -> list[np.ndarray]:
    """The layer's queries, keys and values (batch, positions, heads, depth), in the dtype
    it computes in (float16 under mixed precision)."""
    return [np.asarray(dense(x)) for dense, x in
            ((layer.query_dense, query), (layer.key_dense, value), (layer.value_dense, value))]


def _softmax(scores: np.ndarray, axis: int) -> np.ndarray:
    exp = np.exp(scores - scores.max(axis=axis, keepdims=True))
    return exp / exp.sum(axis=axis, keepdims=True)


def _attend(q, k, v, allowed=None, *, scale=None, axis=-1, mask_after=False):
    """Attention in numpy, right with the defaults, each keyword one typical change."""
    q, k, v = (np.asarray(a, dtype="float64") for a in (q, k, v))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / (scale or np.sqrt(q.shape[-1]))
    if allowed is not None and not mask_after:
        scores = np.where(allowed[:, None], scores, -1e9)
    weights = _softmax(scores, axis)
    if allowed is not None and mask_after:
        weights = weights * allowed[:, None]
    return np.einsum("bhqk,bkhd->bqhd", weights, v), weights


def _heads_mixed(q, k, v):
    """matmul on (batch, positions, heads, depth) as given: it scores heads against heads."""
    if q.shape[1] != k.shape[1]:
        return None  # the matmul raises
    q, k, v = (np.asarray(a, dtype="float64") for a in (q, k, v))
    return _softmax(q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1]), -1) @ v


ATTENTION_MISTAKES = {
    "no_scaling": "the scores are not scaled: divide QK^T by sqrt(d_k), the square root of "
                  "the depth of a head, so that the softmax does not saturate",
    "depth": "the scores are divided by d_k: divide them by its square root, sqrt(d_k)",
    "axis": "the softmax runs over the queries: each query's weights over the keys must sum "
            "to 1, the softmax over the last axis of the scores (batch, heads, queries, keys)",
    "after": "the mask zeroes the weights after the softmax, so the allowed ones no longer sum "
             "to 1: mask the scores before it (a large negative number where not allowed)",
    "ignored": "the mask is not applied: where it is False the score must become a large "
               "negative number before the softmax",
    "inverted": "the mask is applied the wrong way round: True means may attend; hide the "
                "scores where it is False",
    "heads": "the heads are mixed up: a matmul on (batch, tokens, heads, depth) scores heads "
             "against heads; score each head's queries against its keys, e.g. "
             "np.einsum/ops.einsum 'bqhd,bkhd->bhqk', or move the heads before the tokens",
}


def _returned(exercise: str, result, names: tuple[str, ...], what: str) -> list[np.ndarray]:
    """The answer's `result`, the tuple `names`, as arrays; else a failure asking for `what`."""
    if not isinstance(result, tuple | list) or len(result) != len(names):
        count = {2: "two", 3: "three"}[len(names)]
        fail(exercise, f"return {count} things, ({', '.join(names)}): {what}")
    arrays = as_arrays(result)
    if arrays is None:
        fail(exercise, f"{', '.join(names[:-1])} and {names[-1]} must be arrays or tensors of "
                       "numbers")
    return arrays


def _attention_result(exercise: str, fn: Callable, q, k, v, mask):
    result = run_answer(exercise, "scaled_dot_product_attention", fn, q, k, v, mask)
    output, scores = _returned(exercise, result, ("output", "scores"),
                               "the weighted values and the attention weights")
    batch, queries, heads, depth = q.shape
    if output.shape == (batch, heads, queries, depth):
        fail(exercise, f"the output has shape {output.shape}, (batch, heads, tokens, depth): "
                       "put the heads back after the tokens, (batch, tokens, heads, depth), as "
                       "MultiHeadAttention's output_dense expects")
    if output.shape != (batch, queries, heads, depth):
        fail(exercise, f"the output has shape {output.shape}; expected "
                       f"{(batch, queries, heads, depth)}, (batch, tokens, heads, depth)")
    return output, scores


def _judge_attention(exercise, layer, fn, query, value, allowed, keras_mask) -> None:
    """The answer on the layer's projections, turned back by its output_dense, is what the
    layer itself computes; its scores are the layer's; else the mistake is named."""
    q, k, v = _projections(layer, query, value)
    mask = None if allowed is None else tf.constant(allowed)
    output, scores = _attention_result(exercise, fn, q, k, v, mask)
    expected, expected_scores = layer(query, value, attention_mask=keras_mask,
                                      return_attention_scores=True)

    def outward(heads_output):
        if heads_output is None:
            return None
        return np.asarray(layer.output_dense(heads_output.astype(layer.compute_dtype)),
                          dtype="float64")

    variants = {"correct": np.asarray(expected, dtype="float64"),
                "no_scaling": outward(_attend(q, k, v, allowed, scale=1.0)[0]),
                "depth": outward(_attend(q, k, v, allowed, scale=DEPTH)[0]),
                "axis": outward(_attend(q, k, v, allowed, axis=-2)[0]),
                "heads": outward(_heads_mixed(q, k, v))}
    if allowed is not None:
        variants.update(after=outward(_attend(q, k, v, allowed, mask_after=True)[0]),
                        ignored=outward(_attend(q, k, v)[0]),
                        inverted=outward(_attend(q, k, v, ~allowed)[0]))
    judge(exercise, outward(output), variants, ATTENTION_MISTAKES,
          "the output differs from MultiHeadAttention's with the same weights: softmax(QK^T "
          "/ sqrt(d_k)) V, per head, the mask applied to the scores before the softmax")
    expected_scores = np.asarray(expected_scores, dtype="float64")
    if scores.shape != expected_scores.shape:
        fail(exercise, f"the output is right but the scores have shape {scores.shape}; "
                       f"expected {expected_scores.shape}, (batch, heads, queries, keys)")
    if not close(scores, expected_scores):
        fail(exercise, "the output is right but the scores are not the attention weights: "
                       "return the softmax's output, (batch, heads, queries, keys)")


def scaled_dot_product_attention(fn: Callable) -> None:
    """scaled_dot_product_attention(query, key, value, mask) -> (output, scores), checked
    against MultiHeadAttention with the same weights: cross-attention without a mask, causal
    self-attention, and a mask of its own for each caption, eagerly and in a tf.function."""
    exercise = ATTENTION_EXERCISE
    own = _attention_layer(WORDS, WORDS, seed=64)
    # Unmasked self-attention first: as many keys as queries, so mixed-up heads still run.
    _judge_attention(exercise, own, fn, WORDS, WORDS, None, None)
    cross = _attention_layer(WORDS, REGIONS, seed=63)
    _judge_attention(exercise, cross, fn, WORDS, REGIONS, None, None)
    words = WORDS.shape[1]
    causal = np.tril(np.ones((words, words), bool))[None]
    _judge_attention(exercise, own, fn, WORDS, WORDS, causal, causal)
    # The decoder with a cache gives each caption a mask (batch, 1, keys) of its own.
    per_caption = np.arange(words)[None, None, :] <= np.array([0, 2, 4])[:, None, None]
    try:
        _judge_attention(exercise, own, fn, WORDS[:, :1], WORDS, per_caption, per_caption)
    except tf.errors.InvalidArgumentError as error:
        fail(exercise, f"a mask with one row per caption (batch, queries, keys) fails: "
                       f"{one_line(error, 80)}; broadcast it over the heads, mask[:, None]",
             error)
    q, k, v = _projections(own, WORDS, WORDS)
    eager = fn(q, k, v, tf.constant(causal))[0]
    in_graph, error = run_in_a_graph(fn, *(tf.constant(a) for a in (q, k, v, causal)))
    if error is not None:
        fail(exercise, f"the answer is right, but it fails inside a tf.function, where the "
                       f"decoder runs it: {one_line(error, 100)}; use keras.ops or "
                       "TensorFlow on the tensors, not numpy", error)
    if not close(np.asarray(in_graph[0], dtype="float64"), np.asarray(eager, dtype="float64")):
        fail(exercise, "the answer is right eagerly but differs inside a tf.function: use "
                       "keras.ops on the tensors")
    print_pass(exercise, "softmax(QK^T / sqrt(d_k)) V per head, as MultiHeadAttention "
                         "computes it, with and without masks")


# Exercise 3: the output layer's first bias

# Token counts over 12 ids: padding (0) has by far the most, ids 4, 7 and 10 are never seen,
# and the banned ids are 0, 1 and 3 (not 0, 1, 2), so hard-coded ids show.
BIAS_COUNTS = np.array([5000, 40, 300, 120, 0, 80, 60, 0, 25, 10, 0, 7])
BIAS_BANNED = (0, 1, 3)
BANNED_AT_MOST = -1e4


def _bias_result(fn: Callable, counts: np.ndarray, banned) -> np.ndarray:
    exercise = BIAS_EXERCISE
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            result = fn(counts, banned)
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        if isinstance(error, IndexError) and isinstance(banned, tuple):
            fail(exercise, f"log_frequency_bias raised {one_line(error, 80)}: banned_ids is a "
                           "tuple, which indexes several axes; index with a list, "
                           "counts[list(banned_ids)]", error)
        fail(exercise, f"log_frequency_bias raised {one_line(error)}", error)
    if result is None:
        fail(exercise, "log_frequency_bias returns None: return the array of biases")
    arrays = as_arrays([result])
    if arrays is None:
        fail(exercise, f"return an array of numbers, not a {type(result).__name__}")
    return arrays[0]


def log_frequency_bias(fn: Callable) -> None:
    """log_frequency_bias(counts, banned_ids): log-probabilities of the tokens among the
    allowed ones (the lesson reads exp(bias) as probabilities, so they must sum to 1, not only
    give the frequencies through a softmax), and a large finite negative number for banned and
    never-seen tokens; the caller's counts unchanged."""
    exercise = BIAS_EXERCISE
    counts = BIAS_COUNTS.copy()
    vocab_size = len(counts)
    banned = np.isin(np.arange(vocab_size), BIAS_BANNED)
    unseen = (counts == 0) & ~banned
    allowed = ~banned & ~unseen
    probabilities = np.where(allowed, counts, 0) / counts[allowed].sum()
    result = _bias_result(fn, counts, BIAS_BANNED)
    if not np.array_equal(counts, BIAS_COUNTS):
        fail(exercise, "the caller's counts are changed in place: work on a copy, "
                       "np.array(counts, dtype='float64')")
    if result.shape != (vocab_size,):
        fail(exercise, f"the result has shape {result.shape}; expected ({vocab_size},), one "
                       "bias per token of the vocabulary")
    kept = result[allowed]
    if (kept >= 0).all() and (kept <= 1).all() and np.isclose(kept.sum(), 1, atol=1e-3):
        fail(exercise, "these are probabilities, not log-probabilities: take np.log of them; "
                       "the output layer adds the bias to logits")
    if np.isneginf(result).any():
        fail(exercise, f"some biases are -inf (ids {np.flatnonzero(np.isneginf(result)).tolist()}"
                       "): use a large finite negative number such as -1e9 (with -inf the "
                       "softmax gives NaN losses and gradients)")
    if not np.isfinite(result).all():
        fail(exercise, "some biases are NaN or infinite: take the log only where counts > 0, "
                       "np.log(p, out=np.full(len(counts), -1e9), where=counts > 0)")
    if (result[banned] > BANNED_AT_MOST).any():
        fail(exercise, f"banned tokens are not banned: ids {BIAS_BANNED} get "
                       f"{np.round(result[banned], 2).tolist()}; set counts[list(banned_ids)] "
                       "= 0 before normalising (padding would keep its huge count), so they "
                       "get -1e9")
    if (result[unseen] > BANNED_AT_MOST).any():
        fail(exercise, f"never-seen tokens get {np.round(result[unseen], 2).tolist()}: give "
                       "every token with count 0 a large negative number, -1e9, as the banned "
                       "ones")
    if (kept <= BANNED_AT_MOST).any():
        wrongly = np.flatnonzero(allowed & (result <= BANNED_AT_MOST)).tolist()
        fail(exercise, f"ids {wrongly} are banned though they are seen and not in banned_ids "
                       f"{BIAS_BANNED}: ban exactly banned_ids and the never-seen tokens")
    softmax = np.exp(kept - kept.max())
    if not np.allclose(softmax / softmax.sum(), probabilities[allowed], rtol=1e-4, atol=1e-9):
        fail(exercise, "softmax(biases) is not the tokens' frequencies: the bias of a token is "
                       "log(count / sum of the allowed counts), np.log, the natural log")
    total = float(np.exp(kept).sum())
    if not np.isclose(total, 1, rtol=1e-4):
        fail(exercise, f"exp of the allowed biases sums to {total:.3g}, not 1: the lesson reads "
                       "them as probabilities; divide the counts by the total of the allowed "
                       "ones (banned ones zeroed) before the log")
    as_list = _bias_result(fn, BIAS_COUNTS.copy(), list(BIAS_BANNED))
    if as_list.shape != result.shape or not np.allclose(as_list, result):
        fail(exercise, "banned_ids given as a list gives other biases than as a tuple: use "
                       "list(banned_ids) to index")
    print_pass(exercise, "log-frequencies of the allowed tokens; banned and unseen ones at "
                         f"{result[banned].max():.3g}")


# Exercise 4: one decoding step with a key/value cache

CACHE_LENGTH = WORDS.shape[1]
CACHE_MISTAKES = {
    "no_mask": "the new word attends to every slot of the buffers, the empty ones after its "
               "position too: allow only the slots up to and including position",
    "strict": "the new word does not attend to itself: allow the slots up to and including "
              "position (<=), its own key was just written there",
}


def _step_result(exercise: str, fn: Callable, layer, x, keys, values, position):
    result = run_answer(exercise, "attend_with_cache", fn, layer, x, keys, values, position)
    output, new_keys, new_values = _returned(
        exercise, result, ("output", "keys", "values"),
        "the attention's output and the two buffers with the new word's key and value written in")
    if output.shape == (len(x), 1, HEADS, DEPTH):
        fail(exercise, f"the output has shape {output.shape}, one vector per head: pass it "
                       "through attention.output_dense, back to (batch, 1, units)")
    if output.shape != x.shape:
        fail(exercise, f"the output has shape {output.shape}; expected {x.shape}, the new "
                       "word's shape (batch, 1, units)")
    for name, buffer in (("keys", new_keys), ("values", new_values)):
        if buffer.shape != keys.shape:
            fail(exercise, f"the {name} returned have shape {buffer.shape}; expected "
                           f"{keys.shape}, the buffer given, with one slot written")
    return output, new_keys, new_values


def _cached_output(layer, query, keys, values, allowed) -> np.ndarray:
    """The layer's output for one new word's query over the buffers' `allowed` slots."""
    allowed = np.broadcast_to(allowed, (len(query), 1, keys.shape[1]))
    heads = _attend(query, keys, values, allowed)[0]
    return np.asarray(layer.output_dense(heads.astype(layer.compute_dtype)), dtype="float64")


def _judge_buffer(exercise: str, name: str, buffer, given, written, position: int) -> None:
    expected = given.copy()
    expected[:, position] = written[:, position]
    if close(buffer, expected):
        return
    if close(buffer, given):
        fail(exercise, f"the new word's {name[:-1]} is not written into {name}: put it at "
                       f"position, the slot of the new word, and return the buffer")
    slots = [s for s in range(given.shape[1])
             if s != position and not close(buffer[:, s], given[:, s])]
    if slots:
        fail(exercise, f"at position {position}, slots {slots} of {name} changed too: write "
                       "only the new word's slot, where the position is")
    fail(exercise, f"the slot of {name} at position holds something else than the new "
                   f"word's {name[:-1]}: attention.{name[:-1]}_dense(x)")


def attend_with_cache(fn: Callable) -> None:
    """attend_with_cache(attention, x, keys, values, position) -> (output, keys, values),
    word by word, gives what MultiHeadAttention gives on the whole caption with a causal
    mask, and writes each word's key and value into its slot."""
    exercise = CACHE_EXERCISE
    layer = _attention_layer(WORDS, WORDS, seed=65)
    expected = np.asarray(layer(WORDS, WORDS, use_causal_mask=True), dtype="float64")
    _, all_keys, all_values = _projections(layer, WORDS, WORDS)
    keys = np.zeros_like(all_keys)
    values = np.zeros_like(all_values)
    slots = np.arange(CACHE_LENGTH)[None, None, :]
    for position in range(CACHE_LENGTH):
        x = WORDS[:, position:position + 1]
        at = tf.fill([len(WORDS)], position)
        output, new_keys, new_values = _step_result(exercise, fn, layer, tf.constant(x),
                                                    tf.constant(keys), tf.constant(values), at)
        _judge_buffer(exercise, "keys", new_keys, keys, all_keys, position)
        _judge_buffer(exercise, "values", new_values, values, all_values, position)
        keys[:, position], values[:, position] = all_keys[:, position], all_values[:, position]
        query = np.asarray(layer.query_dense(x))
        variants = {"correct": expected[:, position:position + 1],
                    "no_mask": _cached_output(layer, query, keys, values, slots >= 0),
                    "strict": _cached_output(layer, query, keys, values, slots < position)}
        judge(exercise, output, variants, CACHE_MISTAKES,
              f"at position {position} the output differs from MultiHeadAttention's over the "
              "caption so far: attend from the new word's query over the buffers' slots up "
              "to position, with scaled_dot_product_attention, then attention.output_dense")
    step = tf.function(lambda *inputs: fn(layer, *inputs))
    at = tf.fill([len(WORDS)], CACHE_LENGTH - 1)
    try:
        in_graph = step(tf.constant(WORDS[:, -1:]), tf.constant(keys), tf.constant(values), at)
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        fail(exercise, f"the answer is right, but it fails inside a tf.function, where the "
                       f"decoder runs it: {one_line(error, 100)}; use keras.ops on the "
                       "tensors, with position a tensor", error)
    if not close(np.asarray(in_graph[0], dtype="float64"), expected[:, -1:]):
        fail(exercise, "the answer is right eagerly but differs inside a tf.function: use "
                       "keras.ops on the tensors, and position as a tensor")
    print_pass(exercise, "word by word with the cache, the outputs of the whole caption "
                         "under a causal mask")
