"""Self-checks of image_captioning_transformer: they pass on the lesson's own code and its
equivalent forms, and name each typical wrong answer (a small variant of that code) in its own
words."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from test_check_core import fails_with, passes

from captioning_course import check, grade
from conftest import REPO, edited_definitions, notebook_definitions

LESSON_3 = REPO / "solutions" / "image_captioning_transformer.ipynb"
LESSON = notebook_definitions(LESSON_3, "causal_mask", "scaled_dot_product_attention",
                              "log_frequency_bias", "attend_with_cache")
causal_mask, scaled_dot_product_attention, log_frequency_bias, attend_with_cache = (
    LESSON[name] for name in ("causal_mask", "scaled_dot_product_attention",
                              "log_frequency_bias", "attend_with_cache"))


def cases(table: dict) -> dict:
    return {"argvalues": list(table.values()), "ids": list(table)}


def lesson_checks_pass(capsys) -> None:
    check.causal_mask(causal_mask)
    check.scaled_dot_product_attention(scaled_dot_product_attention)
    check.log_frequency_bias(log_frequency_bias)
    check.attend_with_cache(attend_with_cache)
    passes(capsys, 1, 2, 3, 4)


def test_every_check_passes_on_the_solution(capsys):
    lesson_checks_pass(capsys)


def test_the_checks_pass_under_mixed_precision(capsys):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        lesson_checks_pass(capsys)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_a_failure_of_a_shared_check_cell_is_graded_per_exercise():
    for text, grades in [("Exercise 5 (loss): it is summed", ("fail: it is summed", "not ")),
                         ("Exercise 6 (accuracy): the hits", ("pass", "fail: the hits"))]:
        passed = "PASS Exercise 5 (loss): ...\n" if "Exercise 6" in text else ""
        cell = {"outputs": [{"output_type": "stream", "name": "stdout", "text": passed}]}
        errors = [{"ename": "SelfCheckFailed", "evalue": text}]
        assert grade._shared_grade(5, cell, errors).startswith(grades[0])
        assert grade._shared_grade(6, cell, errors).startswith(grades[1])


def edited(name: str, *replace: tuple[str, str]):
    """The lesson's `name` with a mistake edited into its source."""
    namespace = {"np": np, "ops": ops, "tf": tf,
                 "scaled_dot_product_attention": scaled_dot_product_attention}
    return edited_definitions(LESSON_3, (name,), namespace, *replace)[name]


# Exercise 1: the causal mask -----------------------------------------------------------------

EX1 = "Exercise 1 (causal_mask)"
MASK_LINE = "return positions[None, :] <= positions[:, None]"


@pytest.mark.parametrize("fn", **cases({
    "tril": lambda n: np.tril(np.ones((n, n), dtype=bool)),
    "ones-and-zeros": lambda n: np.tril(np.ones((n, n))),
    "keras-ops": lambda n: ops.tril(ops.ones((n, n), "bool")),
    "tensorflow": lambda n: tf.linalg.band_part(tf.ones((n, n)), -1, 0) > 0,
}))
def test_causal_mask_accepts_equivalent_forms(fn, capsys):
    check.causal_mask(fn)
    passes(capsys, 1)


@pytest.mark.parametrize("expression,message", **cases({
    "upper-triangle": ("positions[None, :] >= positions[:, None]", "on the wrong side"),
    "no-diagonal": ("positions[None, :] < positions[:, None]", "a word cannot see itself"),
    "hidden-pairs": ("positions[None, :] > positions[:, None]", "True marks the pairs to hide"),
    "all-true": ("np.ones((length, length), bool)", "nothing is masked"),
    "one-row": ("positions <= 2", r"shape \(5,\); expected \(5, 5\)"),
    "nothing": ("None", "causal_mask returns None"),
}))
def test_causal_mask_wrong_answers(expression, message):
    with fails_with(message, EX1):
        check.causal_mask(edited("causal_mask", (MASK_LINE, f"return {expression}")))


# Exercise 2: scaled dot-product attention ----------------------------------------------------

EX2 = "Exercise 2 (scaled_dot_product_attention)"
SCORES_LINE = 'scores = ops.einsum("bqhd,bkhd->bhqk", query, key) / ops.sqrt(depth)'
MASK_APPLIED = "scores = ops.where(mask[:, None], scores, -1e9)"
SOFTMAX_LINE = "weights = ops.softmax(scores, axis=-1)"
OUTPUT_LINE = 'return ops.einsum("bhqk,bkhd->bqhd", weights, value), weights'


def heads_first(query, key, value, mask=None):
    q, k, v = (tf.transpose(x, [0, 2, 1, 3]) for x in (query, key, value))
    scores = tf.matmul(q, k, transpose_b=True) / tf.sqrt(tf.cast(tf.shape(q)[-1], q.dtype))
    if mask is not None:
        scores += -1e9 * (1.0 - tf.cast(mask[:, None], scores.dtype))
    weights = tf.nn.softmax(scores)
    return tf.transpose(weights @ v, [0, 2, 1, 3]), weights


@pytest.mark.parametrize("fn", **cases({
    "transpose-and-matmul-additive-mask": heads_first,
    "minus-inf": edited("scaled_dot_product_attention", (MASK_APPLIED, 'scores = ops.where('
                        'mask[:, None], scores, float("-inf"))')),
    "scaled-query": edited("scaled_dot_product_attention", (SCORES_LINE, 'scores = ops.einsum('
                           '"bqhd,bkhd->bhqk", query / ops.sqrt(depth), key)')),
}))
def test_attention_accepts_equivalent_forms(fn, capsys):
    check.scaled_dot_product_attention(fn)
    passes(capsys, 2)


def heads_mixed(query, key, value, mask=None):
    scores = tf.matmul(query, key, transpose_b=True) / 2.0  # (batch, tokens, heads, heads)
    weights = tf.nn.softmax(scores)
    return weights @ value, tf.transpose(weights, [0, 2, 1, 3])


@pytest.mark.parametrize("replace,message", **cases({
    "no-scaling": ((SCORES_LINE, SCORES_LINE.replace(" / ops.sqrt(depth)", "")),
                   "the scores are not scaled"),
    "divided-by-depth": ((SCORES_LINE, SCORES_LINE.replace("ops.sqrt(depth)", "depth")),
                         "divided by d_k: divide them by its square root"),
    "softmax-over-queries": ((SOFTMAX_LINE, SOFTMAX_LINE.replace("-1", "-2")),
                             "the softmax runs over the queries"),
    "mask-ignored": ((MASK_APPLIED, "pass"), "the mask is not applied"),
    "mask-inverted": ((MASK_APPLIED, MASK_APPLIED.replace("scores, -1e9", "-1e9, scores")),
                      "the wrong way round"),
    "mask-after-softmax": ([(MASK_APPLIED, "pass"),
                            (SOFTMAX_LINE, SOFTMAX_LINE + "\n    if mask is not None:\n"
                             "        weights = weights * ops.cast(mask[:, None], weights.dtype)")],
                           "zeroes the weights after the softmax"),
    "heads-last": ((OUTPUT_LINE, 'return ops.einsum("bhqk,bkhd->bhqd", weights, value), '
                                 "weights"),
                   r"\(batch, heads, tokens, depth\): put the heads back after the tokens"),
    "output-only": ((OUTPUT_LINE, 'return ops.einsum("bhqk,bkhd->bqhd", weights, value)'),
                    r"return two things, \(output, scores\)"),
    "raw-scores": ((OUTPUT_LINE, OUTPUT_LINE.replace(", weights\n", ", scores\n")
                    .replace("value), weights", "value), scores")),
                   "the scores are not the attention weights"),
}))
def test_attention_wrong_answers(replace, message):
    edits = replace if isinstance(replace, list) else [replace]
    with fails_with(message, EX2):
        check.scaled_dot_product_attention(edited("scaled_dot_product_attention", *edits))


def test_mixed_up_heads_are_named():
    with fails_with("the heads are mixed up", EX2):
        check.scaled_dot_product_attention(heads_mixed)


def test_attention_in_numpy_is_told_to_use_keras_ops():
    def in_numpy(query, key, value, mask=None):
        scores = np.einsum("bqhd,bkhd->bhqk", query, key) / np.sqrt(np.shape(query)[-1])
        if mask is not None:
            scores = np.where(np.asarray(mask)[:, None], scores, -1e9)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        return np.einsum("bhqk,bkhd->bqhd", weights, value), weights

    with fails_with("fails inside a tf.function", EX2):
        check.scaled_dot_product_attention(in_numpy)


EX3 = "Exercise 3 (log_frequency_bias)"


def banned_or_unseen(counts, banned_ids):
    return np.isin(np.arange(len(counts)), list(banned_ids)) | (np.asarray(counts) == 0)


def in_tensorflow(counts, banned_ids):
    counts = tf.tensor_scatter_nd_update(tf.cast(counts, tf.float64), [[i] for i in banned_ids],
                                         tf.zeros(len(banned_ids), tf.float64))
    return tf.where(counts > 0, tf.math.log(counts / tf.reduce_sum(counts)), -1e9)


def log_count_minus_log_total(counts, banned_ids):
    allowed = ~banned_or_unseen(counts, banned_ids)
    return np.where(allowed, np.log(np.maximum(counts, 1)) - np.log(np.sum(counts[allowed])),
                    -1e9)


@pytest.mark.parametrize("fn", **cases({
    "log-count-minus-log-total": log_count_minus_log_total,
    "tensorflow": in_tensorflow,
    "tensorflow-list-of-ids": lambda counts, ids: in_tensorflow(counts, list(ids)).numpy(),
}))
def test_log_frequency_bias_accepts_equivalent_forms(fn, capsys):
    check.log_frequency_bias(fn)
    passes(capsys, 3)


BIAS_RETURN = "return np.log(probabilities, out=np.full(len(counts), -1e9), where=counts > 0)"
BANNED_ZEROED = "counts[list(banned_ids)] = 0"


def returning(expression: str) -> tuple[str, str]:
    """The edit by which the lesson's log_frequency_bias returns `expression` instead."""
    return BIAS_RETURN, f"return {expression}"


@pytest.mark.parametrize("replace,message", **cases({
    "probabilities": (returning("probabilities"), "these are probabilities, not log-prob"),
    "banned-probabilities": (returning("np.where(counts > 0, probabilities, -1e9)"),
                             "these are probabilities"),
    "minus-inf": (returning("np.log(probabilities)"),
                  r"some biases are -inf \(ids \[0, 1, 3, 4, 7, 10\]\): use a large finite "
                  "negative number such as -1e9"),
    "nan": (returning("np.where(counts > 0, np.log(probabilities), np.nan)"), "NaN or infinite"),
    "zero-for-banned": (returning("np.log(probabilities, out=np.zeros(len(counts)), "
                                  "where=counts > 0)"),
                        r"banned tokens are not banned: ids \(0, 1, 3\) get \[0.0, 0.0, 0.0\]"),
    "banned-not-banned": ((f"    {BANNED_ZEROED}\n", ""),
                          r"banned tokens are not banned: ids \(0, 1, 3\) get \[-0.1"),
    "hard-coded-ids": ((BANNED_ZEROED, "counts[[0, 1, 2]] = 0"),
                       r"banned tokens are not banned: .* \[-1000000000.0, -1000000000.0, -0.92\]"),
    "unseen-get-zero": (returning("np.log(probabilities + (counts == 0)) - 1e9 * np.isin("
                                  "np.arange(len(counts)), [0, 1, 3])"),
                        r"never-seen tokens get \[0.0, 0.0, 0.0\]: give every token"),
    "one-more-banned": ((BANNED_ZEROED, "counts[[*banned_ids, 2]] = 0"),
                        r"ids \[2\] are banned though they are seen and not in banned_ids"),
    # softmax does not mind a constant, but the lesson reads exp(bias) as probabilities.
    "log-counts": (("probabilities = counts / counts.sum()", "probabilities = counts"),
                   "exp of the allowed biases sums to 482, not 1: the lesson reads them "
                   "as probabilities; divide the counts by the total of the allowed ones"),
    "divided-before-banning": (("    " + BANNED_ZEROED + "\n    probabilities = counts / "
                                "counts.sum()\n", "    probabilities = counts / counts.sum()\n"
                                "    " + BANNED_ZEROED + "\n"),
                               "exp of the allowed biases sums to 0.0854, not 1"),
    "log10": (("np.log(probabilities", "np.log10(probabilities"),
              "softmax.biases. is not the tokens' frequencies"),
    "in-place": (('    counts = np.array(counts, dtype="float64")\n', ""),
                 "the caller's counts are changed in place: work on a copy"),
    "too-short": (returning("np.log(probabilities[:-1], out=np.full(len(counts) - 1, -1e9), "
                            "where=counts[:-1] > 0)"),
                  r"the result has shape \(11,\); expected \(12,\)"),
    "tuple-index": ((BANNED_ZEROED, "counts[banned_ids] = 0"),
                    "IndexError.*banned_ids is a tuple, which indexes several axes; index with a "
                    r"list, counts\[list\(banned_ids\)\]"),
    "returns-nothing": (returning("None"), "log_frequency_bias returns None"),
}))
def test_log_frequency_bias_wrong_answers(replace, message):
    wrong = edited_definitions(LESSON_3, ("log_frequency_bias",), {"np": np}, replace)
    with fails_with(message, EX3):
        check.log_frequency_bias(wrong["log_frequency_bias"])


# Exercise 4: a decoding step with a key/value cache -----------------------------------------

EX4 = "Exercise 4 (attend_with_cache)"
KEYS_LINE = "keys = ops.where(here, attention.key_dense(x), keys)"
SEEN_LINE = "seen = slots[None, None, :] <= position[:, None, None]"
CACHE_RETURN = "return attention.output_dense(output), keys, values"


def one_hot_writes(attention, x, keys, values, position):
    slot = ops.one_hot(position, ops.shape(keys)[1], dtype=keys.dtype)[:, :, None, None]
    keys = keys * (1 - slot) + attention.key_dense(x) * slot
    values = values * (1 - slot) + attention.value_dense(x) * slot
    seen = ops.arange(ops.shape(keys)[1])[None, None, :] <= position[:, None, None]
    output, _ = scaled_dot_product_attention(attention.query_dense(x), keys, values, seen)
    return attention.output_dense(output), keys, values


def scatter_writes(attention, x, keys, values, position):
    rows = tf.stack([tf.range(tf.shape(position)[0]), position], axis=1)
    keys = tf.tensor_scatter_nd_update(keys, rows, attention.key_dense(x)[:, 0])
    values = tf.tensor_scatter_nd_update(values, rows, attention.value_dense(x)[:, 0])
    seen = tf.range(tf.shape(keys)[1])[None, None, :] <= position[:, None, None]
    output, _ = scaled_dot_product_attention(attention.query_dense(x), keys, values, seen)
    return attention.output_dense(output), keys, values


@pytest.mark.parametrize("fn", **cases({"one-hot": one_hot_writes, "scatter": scatter_writes}))
def test_attend_with_cache_accepts_equivalent_forms(fn, capsys):
    check.attend_with_cache(fn)
    passes(capsys, 4)


@pytest.mark.parametrize("replace,message", **cases({
    "no-mask": ((SEEN_LINE, "seen = None"), "attends to every slot of the buffers"),
    "not-itself": ((SEEN_LINE, SEEN_LINE.replace("<=", "<")), "does not attend to itself"),
    "key-not-written": ((KEYS_LINE, "pass"), "the new word's key is not written into keys"),
    "next-slot": (("here = (slots[None, :] == position[:, None])",
                   "here = (slots[None, :] == position[:, None] + 1)"),
                  r"slots \[1\] of keys changed too"),
    "every-slot": ((KEYS_LINE, "keys = ops.where(True, attention.key_dense(x), keys)"),
                   "changed too: write only the new word's slot"),
    "values-as-keys": ((KEYS_LINE, KEYS_LINE.replace("key_dense", "value_dense")),
                       "holds something else than the new word's key"),
    "heads-output": ((CACHE_RETURN, "return output, keys, values"),
                     "pass it through attention.output_dense"),
    "no-buffers": ((CACHE_RETURN, "return attention.output_dense(output)"),
                   r"return three things, \(output, keys, values\)"),
}))
def test_attend_with_cache_wrong_answers(replace, message):
    with fails_with(message, EX4):
        check.attend_with_cache(edited("attend_with_cache", replace))
