"""Self-checks of image_captioning_transformer: they pass on the lesson's own code and its
equivalent forms, and name each typical wrong answer (a small variant of that code) in its own
words."""

from __future__ import annotations

import inspect
import itertools
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from test_check_core import fails_with, passes

from captioning_course import check, grade
from captioning_course.check import image_captioning_transformer as lesson_checks
from conftest import REPO, edited_definitions, notebook_definitions

LESSON_3 = REPO / "solutions" / "image_captioning_transformer.ipynb"
LESSON = notebook_definitions(LESSON_3, "CausalSelfAttention", "CrossAttention", "FeedForward",
                              "DecoderLayer", "log_frequency_bias", "masked_loss", "masked_acc")
# The lesson reads [UNK]'s id from its vocabulary; the checks' fixed batch has it at 1.
UNKNOWN_ID = LESSON["unknown_id"] = lesson_checks.CAPTION_UNKNOWN_ID
CausalSelfAttention, CrossAttention, DecoderLayer = (
    LESSON[name] for name in ("CausalSelfAttention", "CrossAttention", "DecoderLayer"))
log_frequency_bias, masked_loss, masked_acc = (
    LESSON[name] for name in ("log_frequency_bias", "masked_loss", "masked_acc"))


def variant(base: type, body: str) -> type:
    """The lesson's class `base` with a call of the same arguments whose body is `body`."""
    arguments = ", ".join(inspect.signature(base.call).parameters)
    namespace = {"ops": ops, "np": np}
    exec(f"def call({arguments}):\n" + textwrap.indent(body, "    "), namespace)
    return type(base.__name__, (base,), {"call": namespace["call"]})


def cases(table: dict) -> dict:
    return {"argvalues": list(table.values()), "ids": list(table)}


def lesson_checks_pass(capsys) -> None:
    check.causal_self_attention(CausalSelfAttention)
    check.cross_attention(CrossAttention)
    check.decoder_layer(DecoderLayer)
    check.log_frequency_bias(log_frequency_bias)
    check.masked_loss_and_accuracy(masked_loss, masked_acc)
    passes(capsys, 1, 2, 3, 4, 5, 6)


def test_every_check_passes_on_the_solution(capsys):
    lesson_checks_pass(capsys)


def test_the_checks_pass_under_mixed_precision(capsys):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        lesson_checks_pass(capsys)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_a_failure_of_the_shared_cell_is_graded_per_exercise():
    for text, grades in [(EX5 + ": the loss is summed", ("fail: the loss is summed", "not ")),
                         (EX6 + ": the hits", ("pass", "fail: the hits"))]:
        passed = "PASS Exercise 5 (masked_loss): ...\n" if text.startswith(EX6) else ""
        cell = {"outputs": [{"output_type": "stream", "name": "stdout", "text": passed}]}
        errors = [{"ename": "SelfCheckFailed", "evalue": text}]
        assert grade._shared_grade(5, cell, errors).startswith(grades[0])
        assert grade._shared_grade(6, cell, errors).startswith(grades[1])


UNANSWERED = "raise NotImplementedError('Exercise: write this')"


# Exercise 1: causal self-attention -----------------------------------------------------------

EX1 = "Exercise 1 (CausalSelfAttention)"
CAUSAL = "self.mha(query=x, value=x, use_causal_mask=True)"
PRE_NORM = ("normed = self.layernorm(x)\n"
            "attention = self.mha(normed, normed, use_causal_mask=True)\n")


@pytest.mark.parametrize("body", **cases({
    "positional": "return self.layernorm(self.add([x, self.mha(x, x, use_causal_mask=True)]))",
    "query-key-value": "return self.layernorm(x + self.mha(x, x, x, use_causal_mask=True))",
    "lower-triangular-mask": "mask = ops.tril(ops.ones((ops.shape(x)[1],) * 2, 'bool'))\n"
                             "return self.layernorm(x + self.mha(x, x, attention_mask=mask))",
}))
def test_causal_self_attention_accepts_equivalent_forms(body, capsys):
    check.causal_self_attention(variant(CausalSelfAttention, body))
    passes(capsys, 1)


@pytest.mark.parametrize("body,message", **cases({
    "no-causal-mask": ("return self.layernorm(self.add([x, self.mha(query=x, value=x)]))",
                       "later words leak into earlier positions: pass use_causal_mask=True"),
    "no-residual": (f"return self.layernorm({CAUSAL})", "the residual is missing"),
    "no-norm": (f"return self.add([x, {CAUSAL}])", "the layer norm is missing"),
    "norm-before-add": (f"return x + self.layernorm({CAUSAL})",
                        "the layer norm is applied to the attention before the residual sum"),
    "pre-norm": (PRE_NORM + "return x + attention", r"the layer norm comes first \(pre-norm\)"),
    "pre-norm-normed-sum": (PRE_NORM + "return normed + attention", r"\(pre-norm\)"),
    "attention-only": (f"return {CAUSAL}", "the layer returns the attention alone"),
    "mean-over-words": (f"return ops.mean(self.layernorm(x + {CAUSAL}), 1)",
                        r"the layer returns shape \(3, 8\); expected \(batch, words, features\)"),
    "returns-nothing": (f"self.layernorm(x + {CAUSAL})",
                        r"the layer returns None: return self.layernorm\(self.add"),
    "unanswered": (UNANSWERED, "the layer raised NotImplementedError: Exercise: write this$"),
    "numpy": (f"return self.layernorm(np.asarray(x) + np.asarray({CAUSAL}))",
              "the output is right, but the layer fails inside a tf.function as in training: "
              "use keras.ops, not NumPy"),
}))
def test_causal_self_attention_wrong_answers(body, message):
    with fails_with(message, EX1):
        check.causal_self_attention(variant(CausalSelfAttention, body))


# Exercise 2: cross-attention -----------------------------------------------------------------

EX2 = "Exercise 2 (CrossAttention)"
KEPT = "self.last_attention_scores = scores\n"
SWAPPED = "attention, scores = self.mha(context, x, return_attention_scores=True)\n" + KEPT


def cross(attend="self.mha(x, context, return_attention_scores=True)", keep=KEPT,
          output="self.layernorm(self.add([x, attention]))") -> str:
    return f"attention, scores = {attend}\n{keep}return {output}"


@pytest.mark.parametrize("body", **cases({
    "positional": cross(output="self.layernorm(x + attention)"),
    "keywords-with-key": cross("self.mha(query=x, key=context, value=context, "
                               "return_attention_scores=True)"),
    "scores-from-a-second-call": "attention = self.mha(query=x, value=context)\n_, scores = "
                                 "self.mha(x, context, return_attention_scores=True)\n" + KEPT
                                 + "return self.layernorm(self.add([x, attention]))",
}))
def test_cross_attention_accepts_equivalent_forms(body, capsys):
    check.cross_attention(variant(CrossAttention, body))
    passes(capsys, 2)


@pytest.mark.parametrize("body,message", **cases({
    "swapped": (cross("self.mha(query=context, value=x, return_attention_scores=True)"),
                "query and value are swapped: the output has one row per region"),
    "swapped-added-to-context": (cross("self.mha(context, x, return_attention_scores=True)",
                                       output="self.layernorm(self.add([context, attention]))"),
                                 "query and value are swapped"),
    "causal": (cross("self.mha(x, context, return_attention_scores=True, use_causal_mask=True)"),
               "a causal mask is used: cross-attention lets every word look at every region"),
    "scores-not-kept": (cross(keep=""), "the scores are not kept: self.last_attention_scores "
                                        "is missing or None"),
    "scores-set-once": (cross(keep="if not hasattr(self, 'last_attention_scores'): " + KEPT),
                        "last_attention_scores are stale, an earlier call's"),
    "return-scores-forgotten": (cross("self.mha(query=x, value=context)"),
                                r"self.mha\(...\) returns the attention alone unless asked for "
                                "the scores too: pass return_attention_scores=True"),
    "words-as-value": (cross("self.mha(x, x, return_attention_scores=True)"),
                       "the scores have one column per word, so the words attend to each other"),
    "no-residual": (cross(output="self.layernorm(attention)"), "the residual is missing"),
    "pre-norm": (cross("self.mha(self.layernorm(x), context, return_attention_scores=True)",
                       output="x + attention"), r"the layer norm comes first \(pre-norm\)"),
    "returns-scores-too": (cross(output="self.layernorm(x + attention), scores"),
                           "the layer returns a tuple of 2 items: return one tensor"),
    "unanswered": (UNANSWERED, "the layer raised NotImplementedError"),
}))
def test_cross_attention_wrong_answers(body, message):
    with fails_with(message, EX2):
        check.cross_attention(variant(CrossAttention, body))


# Exercise 3: the decoder layer ---------------------------------------------------------------

EX3 = "Exercise 3 (DecoderLayer)"
SCORES = "self.last_attention_scores = self.cross_attention.last_attention_scores\n"


def decoder(*steps: str, scores: str = SCORES, output: str = "text") -> str:
    """A call body running `steps` (each a line), then keeping the `scores`."""
    return "\n".join(steps) + f"\n{scores}return {output}"


SELF, CROSS = "text = self.self_attention(text)", "text = self.cross_attention(text, image)"
FEED = "text = self.feed_forward(text)"


@pytest.mark.parametrize("body", **cases({
    "keywords": decoder("a = self.self_attention(x=text)",
                        "b = self.cross_attention(x=a, context=image)", output="self.feed_"
                        "forward(x=b)"),
    "one-expression": decoder("out = self.feed_forward(self.cross_attention("
                              "self.self_attention(text), image))", output="out"),
}))
def test_decoder_layer_accepts_equivalent_forms(body, capsys):
    check.decoder_layer(variant(DecoderLayer, body))
    passes(capsys, 3)


@pytest.mark.parametrize("body,message", **cases({
    "cross-first": (decoder(CROSS, SELF, FEED), "the cross-attention runs before the "
                                                "self-attention"),
    "no-self-attention": (decoder(CROSS, FEED), "the self-attention's output is not used"),
    "cross-fed-the-text": (decoder("x = self.self_attention(text)", CROSS, FEED),
                           "the self-attention's output is not used"),
    "no-cross-attention": (decoder(SELF, FEED, scores=""), "the cross-attention's output is "
                                                           "not used"),
    "cross-output-unused": (decoder(SELF, "self.cross_attention(text, image)", FEED),
                            "the cross-attention's output is not used"),
    "no-cross-but-scores": (decoder(SELF, FEED), "self.cross_attention.last_attention_scores "
                                                 "does not exist yet: the cross-attention is "
                                                 "skipped or runs after it is read"),
    "no-feed-forward": (decoder(SELF, CROSS), r"the feed-forward is skipped: return "
                                              r"self.feed_forward\(text\)"),
    "original-text": (decoder("a = self.self_attention(text)", "b = self.cross_attention("
                              "text, image)", FEED), "each sublayer is fed the original text"),
    "image-text-swapped": (decoder(SELF, "text = self.cross_attention(image, text)", FEED),
                           r"the image and the text are swapped in the cross-attention: call "
                           r"self.cross_attention\(text, image\)"),
    "text-as-context": (decoder(SELF, "text = self.cross_attention(text, text)", FEED),
                        "the cross-attention is given the text as its context"),
    "scores-not-kept": (decoder(SELF, CROSS, FEED, scores=""),
                        "the decoder layer keeps no scores: set self.last_attention_scores = "),
    "scores-read-first": ("if True:\n    " + SCORES + decoder(SELF, CROSS, FEED, scores=""),
                          "last_attention_scores does not exist yet"),
    "scores-set-once": (decoder(SELF, CROSS, FEED, scores="if not hasattr(self, "
                                "'last_attention_scores'):\n    " + SCORES),
                        "last_attention_scores are stale, an earlier call's"),
    "unanswered": (UNANSWERED, "the layer raised NotImplementedError"),
}))
def test_decoder_layer_wrong_answers(body, message):
    with fails_with(message, EX3):
        check.decoder_layer(variant(DecoderLayer, body))


# Exercise 4: the output layer's first bias ---------------------------------------------------

EX4 = "Exercise 4 (log_frequency_bias)"


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
    passes(capsys, 4)


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
    with fails_with(message, EX4):
        check.log_frequency_bias(wrong["log_frequency_bias"])


# Exercises 5 and 6: the loss and the accuracy ------------------------------------------------

EX5, EX6 = "Exercise 5 (masked_loss)", "Exercise 6 (masked_acc)"


def test_loss_and_accuracy_mistakes_give_clearly_different_values():
    for variants, mistakes in [
            (lesson_checks.caption_loss_variants(), lesson_checks.CAPTION_LOSS_MISTAKES),
            (lesson_checks.caption_accuracy_variants(), lesson_checks.CAPTION_ACC_MISTAKES)]:
        for (a, x), (b, y) in itertools.combinations(variants.items(), 2):
            assert abs(x - y) > 0.1 * max(abs(x), abs(y)), (a, x, b, y)
        assert set(variants) - {"correct"} == set(mistakes)
    labels, logits = lesson_checks.CAPTION_LABELS, lesson_checks.CAPTION_LOGITS
    per_token = keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                             from_logits=True).numpy()
    real = labels > 1
    np.testing.assert_allclose(per_token[real], lesson_checks.CAPTION_PER_TOKEN_LOSS[real],
                               rtol=1e-5)
    assert (per_token[~real] > 1e8).all()
    assert np.array_equal(logits.argmax(-1) == labels, lesson_checks.CAPTION_HITS == 1)


def per_token(labels, logits, from_logits=True):
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=from_logits)


def mean_over(values, mask):
    mask = ops.cast(mask, "float32")
    return ops.sum(ops.cast(values, "float32") * mask) / ops.maximum(ops.sum(mask), 1.0)


def real(labels, logits=None):
    return ops.logical_and(ops.not_equal(labels, 0), ops.not_equal(labels, UNKNOWN_ID))


def loss_with(mask_of=real, from_logits=True):
    return lambda labels, logits: mean_over(per_token(labels, logits, from_logits),
                                            mask_of(labels, logits))


def accuracy_with(mask_of=real, axis=-1, share=True):
    def accuracy(labels, logits):
        hits = ops.cast(ops.argmax(logits, axis=axis), labels.dtype) == labels
        return mean_over(hits, mask_of(labels)) if share else ops.sum(
            ops.cast(hits, "float32") * ops.cast(mask_of(labels), "float32"))

    return accuracy


def loss_object(labels, logits):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    mask = tf.cast(real(labels), tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(loss_fn(labels, logits) * mask),
                                 tf.reduce_sum(mask))


@pytest.mark.parametrize("loss,accuracy", **cases({
    "ops-and-tf.argmax": (loss_with(), lambda labels, logits: mean_over(
        tf.argmax(logits, -1) == tf.cast(labels, tf.int64), real(labels))),
    "boolean-mask-and-ops.equal": (
        lambda labels, logits: tf.reduce_sum(tf.boolean_mask(per_token(labels, logits),
                                                             labels > 1))
        / tf.maximum(tf.reduce_sum(tf.cast(labels > 1, tf.float32)), 1.0),
        lambda labels, logits: mean_over(ops.equal(ops.argmax(logits, -1), labels),
                                         real(labels))),
    "loss-object": (loss_object, masked_acc),
}))
def test_loss_and_accuracy_accept_equivalent_forms(loss, accuracy, capsys):
    check.masked_loss_and_accuracy(loss, accuracy)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == [f"PASS {EX5}", f"PASS {EX6}"]


LOSS_LINES = ("    per_token = keras.losses.sparse_categorical_crossentropy(labels, logits, "
              "from_logits=True)\n")
LOSS_RETURN = "return ops.sum(per_token * mask) / ops.maximum(ops.sum(mask), 1.0)"
ACC_RETURN = "return ops.sum(hits) / ops.maximum(ops.sum(mask), 1.0)"


def edited_loss_and_accuracy(*replace: tuple[str, str]) -> tuple:
    """The lesson's masked_loss and masked_acc with each (old, new) of `replace` made once."""
    edited = edited_definitions(LESSON_3, ("masked_loss", "masked_acc"),
                                {"keras": keras, "ops": ops, "tf": tf,
                                 "unknown_id": UNKNOWN_ID}, *replace)
    return edited["masked_loss"], edited["masked_acc"]


@pytest.mark.parametrize("replace", **cases({
    "labels-cast-then-one-hot": [(LOSS_LINES, "    labels = ops.cast(labels, 'int32')\n"
                                  "    per_token = keras.losses.categorical_crossentropy("
                                  "ops.one_hot(labels, ops.shape(logits)[-1]), logits, "
                                  "from_logits=True)\n")],
    "labels-cast-then-gather": [(LOSS_LINES, "    labels = ops.cast(labels, 'int32')\n"
                                 "    per_token = -tf.gather(tf.nn.log_softmax(logits), labels, "
                                 "batch_dims=2)\n")],
    "divide-no-nan": [(LOSS_RETURN, "return tf.math.divide_no_nan(ops.sum(per_token * mask), "
                                    "ops.sum(mask))"),
                      (ACC_RETURN, "return tf.math.divide_no_nan(ops.sum(hits), ops.sum(mask))")],
}))
def test_the_lesson_s_loss_and_accuracy_in_other_forms_pass(replace, capsys):
    check.masked_loss_and_accuracy(*edited_loss_and_accuracy(*replace))
    passes(capsys, 5, 6)


@pytest.mark.parametrize("replace", **cases({
    # A loss given to compile gets float32 labels from fit, though the dataset's are integers.
    "labels-as-gather-indices": ((LOSS_LINES, "    per_token = -tf.gather(tf.nn.log_softmax("
                                  "logits), labels, batch_dims=2)\n"),),
    "one-hot-of-float-labels": ((LOSS_LINES, "    per_token = keras.losses.categorical_"
                                 "crossentropy(tf.one_hot(labels, ops.shape(logits)[-1]), "
                                 "logits, from_logits=True)\n"),),
    "compared-with-int64": (("mask = ops.cast((labels != 0) & (labels != unknown_id), "
                             "per_token.dtype)", "mask = ops.cast(tf.not_equal(labels, tf."
                             "constant(0, 'int64')) & tf.not_equal(labels, tf.constant("
                             "unknown_id, 'int64')), per_token.dtype)"),),
}))
def test_a_loss_written_for_integer_labels_is_named(replace, capsys):
    with fails_with(r"fit passes the labels as float32 \(Keras converts them to the loss's "
                    r"dtype\): cast them before using them as ids", EX5):
        check.masked_loss_and_accuracy(*edited_loss_and_accuracy(*replace))
    passes(capsys)


def test_a_missing_guard_against_a_batch_without_words_is_named(capsys):
    loss, accuracy = edited_loss_and_accuracy((LOSS_RETURN, "return ops.sum(per_token * mask) "
                                                            "/ ops.sum(mask)"))
    with fails_with(r"on a batch without a real word \(padding and \[UNK\] only\) masked_loss "
                    r"gives nan: divide by at least 1, ops.maximum\(ops.sum\(mask\), 1.0\)",
                    EX5):
        check.masked_loss_and_accuracy(loss, accuracy)
    loss, accuracy = edited_loss_and_accuracy((ACC_RETURN, "return ops.sum(hits) / ops.sum(mask)"))
    with fails_with(r"on a batch without a real word .* masked_acc gives nan", EX6):
        check.masked_loss_and_accuracy(loss, accuracy)
    passes(capsys, 5)


def masked(values, labels):
    return values * ops.cast(real(labels), "float32")


@pytest.mark.parametrize("loss,message", **cases({
    "unk-counted": (loss_with(lambda labels, _: labels != 0), r"the \[UNK\] labels are "
                    "counted: they cost ~1e9 each because the output layer bans \\[UNK\\]"),
    "padding-counted": (loss_with(lambda labels, _: labels != 1), "padding is counted: it costs"),
    "no-mask": (loss_with(lambda labels, _: ops.ones_like(labels)), r"padding and \[UNK\] "
                                                                    "positions are counted"),
    "mask-from-predictions": (loss_with(lambda _, logits: ops.argmax(logits, -1) > 1),
                              "build the mask from the labels, not the predictions"),
    "unmasked-sum": (lambda labels, logits: ops.sum(per_token(labels, logits)) / ops.sum(
        ops.cast(real(labels), "float32")), "losses are still in the sum"),
    "mean-of-masked": (lambda labels, logits: ops.mean(masked(per_token(labels, logits), labels)),
                       "averaged over every position"),
    "summed": (lambda labels, logits: ops.sum(masked(per_token(labels, logits), labels)),
               "the loss is summed"),
    "per-caption": (lambda labels, logits: ops.mean(ops.sum(masked(per_token(
        labels, logits), labels), 1) / ops.sum(ops.cast(real(labels), "float32"), 1)),
                    "each caption is averaged separately"),
    "end-excluded": (loss_with(lambda labels, _: labels > 3), "the end-token positions are "
                                                              "left out"),
    "from-probabilities": (loss_with(from_logits=False), "treats the logits as probabilities"),
    "softmax-twice": (lambda labels, logits: mean_over(per_token(labels, tf.nn.softmax(logits)),
                                                       real(labels)), "softmax is applied twice"),
    "not-averaged": (lambda labels, logits: per_token(labels, logits),
                     r"return one number \(a scalar\), not shape \(3, 7\)"),
    "returns-nothing": (lambda labels, logits: None, "masked_loss returns None"),
    "numpy": (lambda labels, logits: mean_over(per_token(labels, logits), np.asarray(labels) > 1),
              "the value is right, but masked_loss fails inside a tf.function as in training"),
    "raises": (lambda labels, logits: 1 / 0, "masked_loss raised ZeroDivisionError"),
    "no-guard-boolean-mask": (lambda labels, logits: tf.reduce_mean(tf.boolean_mask(
        per_token(labels, logits), labels > 1)), r"on a batch without a real word \(padding "
                              r"and \[UNK\] only\) masked_loss gives nan: divide by at least 1"),
}))
def test_masked_loss_wrong_answers(loss, message, capsys):
    with fails_with(message, EX5):
        check.masked_loss_and_accuracy(loss, masked_acc)
    passes(capsys)


@pytest.mark.parametrize("accuracy,message", **cases({
    "uncast-argmax": (lambda labels, logits: mean_over(ops.argmax(logits, -1) == labels,
                                                       real(labels)),
                      "with int64 labels masked_acc raised InvalidArgumentError comparing int64 "
                      "with int32: cast the argmax and the labels to one integer type"),
    "argmax-over-words-equal": (lambda labels, logits: mean_over(ops.equal(ops.argmax(
        logits, axis=1), labels), real(labels)), "the argmax runs over the wrong axis"),
    "argmax-over-words": (accuracy_with(axis=1), "no position counts as a hit: take the argmax "
                                                 "over the last axis"),
    "all-positions": (accuracy_with(lambda labels: ops.ones_like(labels)),
                      "the hits are divided by every position"),
    "unk-counted": (accuracy_with(lambda labels: labels != 0), r"the \[UNK\] positions are "
                                                               "counted"),
    "padding-counted": (accuracy_with(lambda labels: labels != 1), "padding positions are "
                                                                   "counted"),
    "count": (accuracy_with(share=False), "the accuracy is a count of hits"),
    "end-excluded": (accuracy_with(lambda labels: labels > 3), "the end-token positions are "
                                                               "left out"),
    "not-a-scalar": (lambda labels, logits: ops.cast(ops.argmax(logits, -1), "float32"),
                     r"return one number \(a scalar\), not shape \(3, 7\)"),
    "numpy": (lambda labels, logits: mean_over(np.argmax(logits, -1) == np.asarray(labels),
                                               real(labels)),
              "the value is right, but masked_acc fails inside a tf.function as in training"),
}))
def test_masked_acc_wrong_answers(accuracy, message, capsys):
    """The loss is right, so exercise 5 passes before exercise 6 fails."""
    with fails_with(message, EX6):
        check.masked_loss_and_accuracy(masked_loss, accuracy)
    passes(capsys, 5)
