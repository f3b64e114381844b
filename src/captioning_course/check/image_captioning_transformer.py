"""The self-checks of image_captioning_transformer, the Transformer decoder: exercises 1
to 6."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from captioning_course.check.core import (
    AsFitCallsTheLoss,
    as_arrays,
    as_float32,
    calling,
    check_in_a_graph,
    close,
    fail,
    forward,
    judge,
    judge_kept_scores,
    kept_scores,
    layer_in_a_graph,
    layer_output,
    locals_where_raised,
    masked_loss_variants,
    new_layer,
    one_line,
    print_pass,
    run_answer,
    run_with_fixed_weights,
    same_number,
    scalar,
)

SELF_ATTENTION_EXERCISE = "Exercise 1 (CausalSelfAttention)"
CROSS_ATTENTION_EXERCISE = "Exercise 2 (CrossAttention)"
DECODER_LAYER_EXERCISE = "Exercise 3 (DecoderLayer)"
BIAS_EXERCISE = "Exercise 4 (log_frequency_bias)"
CAPTION_LOSS_EXERCISE = "Exercise 5 (masked_loss)"
CAPTION_ACC_EXERCISE = "Exercise 6 (masked_acc)"

ATTENTION_SETTINGS = {"num_heads": 2, "key_dim": 4, "dropout": 0.0}
# Two batches (the first the checked one, the second for a call before it) of 3 captions of 5
# words of 8 values, and their images' 9 regions of 6 values. Words and regions differ in
# number and width, so a swap shows; there are 3 captions, not 2 (the heads), so that a lone
# tensor unpacked into (attention, scores) fails instead of splitting the batch in two.
WORDS = np.random.default_rng(51).normal(0, 1, (2, 3, 5, 8)).astype("float32")
REGIONS = np.random.default_rng(52).uniform(0, 2, (2, 3, 9, 6)).astype("float32")
EARLIER_WORDS = 3  # the words whose output the causal check keeps while the later ones change

# The sum and the layer norm around an attention; a variant "name:detail" gets "name"'s message.
RESIDUAL_MISTAKES = {
    "no_residual": "the residual is missing: add the input to the attention before the layer "
                   "norm, self.layernorm(self.add([x, attention]))",
    "no_norm": "the layer norm is missing: return the normalised sum, "
               "self.layernorm(self.add([x, attention])), not the sum alone",
    "norm_before_add": "the layer norm is applied to the attention before the residual sum: "
                       "normalise the sum, self.layernorm(self.add([x, attention]))",
    "pre_norm": "the layer norm comes first (pre-norm): this lesson attends with x itself and "
                "normalises the sum afterwards, self.layernorm(self.add([x, attention]))",
    "attention_only": "the layer returns the attention alone: add the input and normalise, "
                      "self.layernorm(self.add([x, attention]))",
}


def _residual_references(layer, x: np.ndarray,
                         attend: Callable) -> dict[str, np.ndarray] | None:
    """The right output layernorm(x + attend(x)) ("correct") and each typical mistake's around
    the attention, from the layer's own layernorm and `attend`, which gives float64 arrays;
    None if they cannot compute it."""
    def layernorm(a):
        return np.asarray(layer.layernorm(as_float32(a), training=False), dtype="float64")

    try:
        attention, prenormed = attend(x), attend(layernorm(x))
        return {"correct": layernorm(x + attention), "no_residual": layernorm(attention),
                "no_norm": x + attention, "norm_before_add": x + layernorm(attention),
                "pre_norm:sum": x + prenormed, "pre_norm:normed_sum": layernorm(x) + prenormed,
                "attention_only": attention}
    except Exception:  # noqa: BLE001 (the layers do not fit this computation)
        return None


# Exercise 1: causal self-attention

def _self_attention_references(layer, x: np.ndarray) -> dict[str, np.ndarray] | None:
    """The right output ("correct") and each mistake's, from the layer's own mha and
    layernorm; None if they cannot compute it."""
    def attend(q):
        q = as_float32(q)
        return np.asarray(layer.mha(query=q, value=q, use_causal_mask=True, training=False),
                          dtype="float64")

    return _residual_references(layer, x, attend)


def causal_self_attention(layer_cls) -> None:
    """CausalSelfAttention.call: layernorm(x + mha(query=x, value=x, use_causal_mask=True)).

    The reference is computed from the layer's own mha and layernorm, so any formulation
    passes (positional arguments, an explicit lower-triangular attention_mask, x + attention).
    Causality is seen directly: changing the later words must leave the earlier outputs."""
    exercise = SELF_ATTENTION_EXERCISE
    x, other_x = WORDS[0], WORDS[1]
    hint = "self.layernorm(self.add([x, attention]))"

    def output_of(words: np.ndarray) -> np.ndarray:
        return layer_output(exercise, layer, (words,), hint)

    def later_words_leak(output: np.ndarray) -> str | None:
        changed = x.copy()
        changed[:, EARLIER_WORDS:] = other_x[:, EARLIER_WORDS:]
        if close(output_of(changed)[:, :EARLIER_WORDS], output[:, :EARLIER_WORDS]):
            return None
        return ("later words leak into earlier positions: pass use_causal_mask=True so that "
                "each word attends only to itself and the words before it")

    layer = new_layer(exercise, layer_cls, ("mha", "layernorm"), **ATTENTION_SETTINGS)
    run_answer(exercise, "the layer", forward, layer, other_x)  # builds the sublayers it uses
    run = run_with_fixed_weights(
        exercise, layer, 51, output_of, (x,), functools.partial(_self_attention_references, layer),
        unfit="the layer's own self.mha and self.layernorm cannot compute layernorm(x + "
              "mha(query=x, value=x)) on words of 8 values: keep the __init__ the lesson gives")
    if run.output.shape != x.shape:
        fail(exercise, f"the layer returns shape {run.output.shape}; expected (batch, words, "
                       f"features) = {x.shape}, the shape of its input")
    judge(exercise, run.output, run.references, RESIDUAL_MISTAKES,
          "the output is not self.layernorm(x + self.mha(query=x, value=x, "
          "use_causal_mask=True)) computed with the layer's own mha and layernorm",
          diagnoses=[later_words_leak])
    layer_in_a_graph(exercise, layer, (x,), run.output)
    print_pass(exercise, "layernorm(x + causal self-attention); no word sees a later one")


# Exercise 2: cross-attention to the image

CROSS_SWAPPED = ("query and value are swapped: the output has one row per region instead of "
                 "one per word; the words ask, self.mha(query=x, value=context, ...)")
CROSS_MISTAKES = {"causal": "a causal mask is used: cross-attention lets every word look at "
                            "every region; leave out use_causal_mask", **RESIDUAL_MISTAKES}


def _regions_ask(scores) -> bool:
    """Whether these attention scores have one row per region, one column per word."""
    words, regions = WORDS.shape[2], REGIONS.shape[2]
    return np.ndim(scores) == 4 and tuple(np.shape(scores)[-2:]) == (regions, words)


def _cross_output(exercise: str, layer, x: np.ndarray, context: np.ndarray) -> np.ndarray:
    def explain(error: Exception) -> str | None:
        if isinstance(error, ValueError | TypeError) and re.search(r"unpack|iterat", str(error)):
            return ("self.mha(...) returns the attention alone unless asked for the scores "
                    "too: pass return_attention_scores=True to get (attention, scores)")
        kept = getattr(layer, "last_attention_scores", None)
        scores = locals_where_raised(error, type(layer).call).get("scores", kept)
        return CROSS_SWAPPED if _regions_ask(scores) or _regions_ask(kept) else None

    return layer_output(exercise, layer, (x, context), "self.layernorm(self.add([x, attention]))",
                        explain)


def _cross_shapes(exercise: str, layer, output: np.ndarray, x: np.ndarray) -> None:
    """The output's and the kept scores' shapes show a swap of words and regions."""
    if output.ndim == 3 and output.shape[1] == REGIONS.shape[2]:
        fail(exercise, CROSS_SWAPPED)
    if output.shape != x.shape:
        fail(exercise, f"the layer returns shape {output.shape}; expected (batch, words, "
                       f"features) = {x.shape}, the shape of the text x")
    scores = kept_scores(exercise, layer)
    if scores is not None and scores.ndim == 4 and scores.shape[-1] == x.shape[1]:
        fail(exercise, "the scores have one column per word, so the words attend to each "
                       "other: the value is the image, self.mha(query=x, value=context, ...)")


def _cross_attention_references(layer, x: np.ndarray,
                                context: np.ndarray) -> dict[str, np.ndarray] | None:
    """The right output ("correct") and scores ("scores"), and each mistake's output, from
    the layer's own mha and layernorm; None if they cannot compute it."""
    def attend(q, **options):
        return [np.asarray(a, dtype="float64") for a in layer.mha(
            query=as_float32(q), value=as_float32(context), return_attention_scores=True,
            training=False, **options)]

    references = _residual_references(layer, x, lambda q: attend(q)[0])
    causal = _residual_references(layer, x, lambda q: attend(q, use_causal_mask=True)[0])
    if references is None or causal is None:
        return None
    return {"causal": causal["correct"], "scores": attend(x)[1], **references}


def cross_attention(layer_cls) -> None:
    """CrossAttention.call: layernorm(x + mha(query=x, value=context)), keeping the scores of
    the last call in `last_attention_scores`, shape (batch, heads, words, regions).

    The reference is computed from the layer's own mha and layernorm, so any formulation
    passes (positional arguments, key=context, x + attention). The layer is called on an
    earlier batch first, so scores kept from an earlier call show."""
    exercise = CROSS_ATTENTION_EXERCISE
    (x, other_x), (context, other_context) = WORDS, REGIONS
    batch, words, _ = x.shape
    regions = context.shape[1]
    heads = ATTENTION_SETTINGS["num_heads"]
    layer = new_layer(exercise, layer_cls, ("mha", "layernorm"), **ATTENTION_SETTINGS)
    built = _cross_output(exercise, layer, other_x, other_context)  # builds what it uses
    _cross_shapes(exercise, layer, built, other_x)
    run = run_with_fixed_weights(
        exercise, layer, 52, functools.partial(_cross_output, exercise, layer), (x, context),
        functools.partial(_cross_attention_references, layer),
        unfit="the layer's own self.mha and self.layernorm cannot compute layernorm(x + "
              "mha(query=x, value=context)) for words of 8 values and regions of 6: the words "
              "are the query, the image regions the value",
        earlier_inputs=(other_x, other_context), scores=lambda: kept_scores(exercise, layer))
    _cross_shapes(exercise, layer, run.output, x)
    judge(exercise, run.output, run.references, CROSS_MISTAKES,
          "the output is not self.layernorm(x + attention) with attention = self.mha(query=x, "
          "value=context), from the layer's own mha and layernorm")
    wanted = (batch, heads, words, regions)
    judge_kept_scores(
        exercise, run,
        missing="the scores are not kept: self.last_attention_scores is missing or None; get "
                "them with return_attention_scores=True and set self.last_attention_scores = "
                "scores",
        stale="last_attention_scores are stale, an earlier call's: set "
              "self.last_attention_scores = scores in call, on every call",
        wrong="last_attention_scores are not the scores of this call's self.mha(query=x, "
              "value=context, return_attention_scores=True)",
        diagnoses=[
            lambda scores: scores.shape != wanted and (
                f"last_attention_scores has shape {scores.shape}; expected (batch, heads, "
                f"words, regions) = {wanted}: keep the scores self.mha returns with "
                "return_attention_scores=True"),
            lambda scores: (scores == 0).any() and (
                "some attention scores are 0, as with a causal mask: cross-attention lets "
                "every word look at every region; leave out use_causal_mask")])
    layer_in_a_graph(exercise, layer, (x, context), run.output)
    print_pass(exercise, "layernorm(x + attention over the image regions); last scores kept")


# Exercise 3: the decoder layer

DECODER_LAYER_SETTINGS = {"units": 8, "num_heads": 2, "dropout_rate": 0.0}
DECODER_LAYER_MISTAKES = {
    "cross_first": "the cross-attention runs before the self-attention: first the words look "
                   "at the earlier words, then at the image, then the feed-forward",
    "no_self_attention": "the self-attention's output is not used: the cross-attention takes "
                         "text = self.self_attention(text), not the original text",
    "no_cross_attention": "the cross-attention's output is not used: the feed-forward takes "
                          "self.cross_attention(text, image)'s output",
    "no_feed_forward": "the feed-forward is skipped: return self.feed_forward(text), the text "
                       "after both attentions",
    "original_text": "each sublayer is fed the original text: feed each one the previous "
                     "one's output, text = self.self_attention(text), and so on",
}
DECODER_SUBLAYERS = ("self_attention", "cross_attention", "feed_forward")


def _decoder_layer_output(exercise: str, layer, text: np.ndarray,
                          image: np.ndarray) -> np.ndarray:
    def explain(error: Exception) -> str | None:
        if _regions_ask(getattr(layer.cross_attention, "last_attention_scores", None)):
            return ("the image and the text are swapped in the cross-attention: call "
                    "self.cross_attention(text, image), the words ask, the image answers")
        if isinstance(error, AttributeError) and "last_attention_scores" in str(error):
            return ("self.cross_attention.last_attention_scores does not exist yet: the "
                    "cross-attention is skipped or runs after it is read; call "
                    "self.cross_attention(text, image) before reading its scores")
        return None

    # Positionally, as the Captioner calls it.
    return layer_output(exercise, layer, (text, image), "self.feed_forward(text)", explain)


def _decoder_layer_references(layer, text: np.ndarray,
                              image: np.ndarray) -> dict[str, np.ndarray] | None:
    """The right output ("correct") and scores ("scores"), and each mistake's output, from
    the layer's own sublayers (the lesson's classes); None if they cannot compute it."""
    def cross(t):
        return layer.cross_attention(t, as_float32(image), training=False)

    try:
        self_attention = calling(layer.self_attention, training=False)
        feed_forward = calling(layer.feed_forward, training=False)
        t = as_float32(text)
        outputs = {
            "cross_first": feed_forward(self_attention(cross(t))),
            "no_self_attention": feed_forward(cross(t)),
            "no_cross_attention": feed_forward(self_attention(t)),
            "no_feed_forward": cross(self_attention(t)),
            "original_text": feed_forward(t),
            "correct": feed_forward(cross(self_attention(t))),  # last: its scores stay kept
            "scores": layer.cross_attention.last_attention_scores,
        }
        return {name: np.asarray(value, dtype="float64") for name, value in outputs.items()}
    except Exception:  # noqa: BLE001 (the layers do not fit this computation)
        return None


def decoder_layer(layer_cls) -> None:
    """DecoderLayer.call: feed_forward(cross_attention(self_attention(text), image)), keeping
    the cross-attention's scores in `last_attention_scores`.

    The reference is computed from the layer's own sublayers, the lesson's classes; each
    mistake is one of them called in another order, or left out."""
    exercise = DECODER_LAYER_EXERCISE
    (text, other_text), (image, other_image) = WORDS, REGIONS
    words = text.shape[1]
    layer = new_layer(exercise, layer_cls, DECODER_SUBLAYERS, **DECODER_LAYER_SETTINGS)
    built = _decoder_layer_output(exercise, layer, other_text, other_image)  # builds what it uses
    if built.shape != other_text.shape:
        fail(exercise, f"the layer returns shape {built.shape}; expected (batch, words, "
                       f"units) = {other_text.shape}, the shape of the text")
    scores = kept_scores(exercise, layer.cross_attention)
    if scores is not None and scores.ndim == 4 and scores.shape[-1] == words:
        fail(exercise, "the cross-attention is given the text as its context: pass the image, "
                       "self.cross_attention(text, image)")
    run = run_with_fixed_weights(
        exercise, layer, 53, functools.partial(_decoder_layer_output, exercise, layer),
        (text, image), functools.partial(_decoder_layer_references, layer),
        unfit="the layer's own self_attention, cross_attention and feed_forward cannot compute "
              "feed_forward(cross_attention(self_attention(text), image)): keep the __init__ "
              "the lesson gives; check Exercises 1 and 2",
        earlier_inputs=(other_text, other_image), scores=lambda: kept_scores(exercise, layer))
    judge(exercise, run.output, run.references, DECODER_LAYER_MISTAKES,
          "the output is not self.feed_forward(self.cross_attention(self.self_attention(text), "
          "image)), computed with the layer's own sublayers")
    keep = ("self.last_attention_scores = self.cross_attention.last_attention_scores, after "
            "the cross-attention")
    judge_kept_scores(
        exercise, run,
        missing=f"the decoder layer keeps no scores: set {keep}",
        stale=f"last_attention_scores are stale, an earlier call's: set {keep}, on every call",
        wrong=f"last_attention_scores are not the cross-attention's scores of this call: set "
              f"{keep}")
    layer_in_a_graph(exercise, layer, (text, image), run.output)
    print_pass(exercise, "self-attention, cross-attention to the image, feed-forward, in order; "
                         "scores kept")


# Exercise 4: the output layer's first bias

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


# Exercises 5 and 6: the loss and the accuracy over real words

CAPTION_UNKNOWN_ID = 1
CAPTION_BANNED = (0, 1, 2)  # padding, [UNK], [START]: the output layer's bias bans them
CAPTION_VOCAB_SIZE = 12
# Three label rows: 4, 4 and 3 real words (the last one [END], id 3), 3 [UNK] and 7 padding.
CAPTION_LABELS = np.array([[4, 1, 6, 7, 3, 0, 0], [8, 9, 1, 1, 5, 3, 0], [6, 4, 3, 0, 0, 0, 0]])
# The logits are built to give these losses at the real words, and their argmax is the label
# exactly where CAPTION_HITS is 1 (never at an [END]): chosen so that every typical mistake
# gives a loss and an accuracy far from the right ones and from each other (the tests assert
# it). Padding and [UNK] labels cost about 1e9, as the banned bias makes them.
CAPTION_PER_TOKEN_LOSS = np.array([[0.1, 0, 0.2, 1.0, 0.8, 0, 0],
                                   [0.1, 0.2, 0, 0, 0.9, 0.8, 0],
                                   [2.0, 3.0, 3.5, 0, 0, 0, 0]])
CAPTION_HITS = np.array([[1, 0, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]])


def _caption_logits() -> np.ndarray:
    rng = np.random.default_rng(55)
    vocab_size, allowed = CAPTION_VOCAB_SIZE, CAPTION_VOCAB_SIZE - len(CAPTION_BANNED)
    logits = np.zeros((*CAPTION_LABELS.shape, vocab_size))
    for position in np.ndindex(CAPTION_LABELS.shape):
        label, loss = CAPTION_LABELS[position], CAPTION_PER_TOKEN_LOSS[position]
        if label in CAPTION_BANNED:  # padding or [UNK]: any allowed word may win
            logits[position] = rng.uniform(-1, 1, vocab_size)
        elif CAPTION_HITS[position]:  # the label wins, with `loss` left to the others
            logits[position] = np.log(np.expm1(loss) / (allowed - 1))
            logits[position][label] = 0.0
        else:  # the next allowed word wins
            logits[position] = -30.0
            logits[position][label] = 0.0
            logits[position][3 + (label - 3 + 1) % allowed] = np.log(np.expm1(loss))
    logits[..., list(CAPTION_BANNED)] += -1e9
    return logits.astype("float32")


CAPTION_LOGITS = _caption_logits()

CAPTION_LOSS_MISTAKES = {
    "unk_counted": "the [UNK] labels are counted: they cost ~1e9 each because the output layer "
                   "bans [UNK]; leave them out of the mask too, (labels != 0) & "
                   "(labels != unknown_id)",
    "padding_counted": "padding is counted: it costs ~1e9 a position because the output layer "
                       "bans it; leave it out of the mask, labels != 0",
    "no_mask": "padding and [UNK] positions are counted (each costs ~1e9: the output layer "
               "bans them): build the mask from the labels, not the predictions, "
               "(labels != 0) & (labels != unknown_id)",
    "unmasked_sum": "the padding and [UNK] losses are still in the sum: multiply the per-token "
                    "loss by the mask before summing",
    "mean_of_masked": "the masked losses are averaged over every position, padding included: "
                      "divide their sum by the number of real words, ops.sum(mask)",
    "summed": "the loss is summed: divide it by the number of real words, ops.sum(mask)",
    "per_caption": "each caption is averaged separately, so short captions weigh more: divide "
                   "the batch's total by its number of real words",
    "end_excluded": "the end-token positions are left out: mask only padding and [UNK]; the "
                    "model must learn where a caption ends",
    "logits_as_probabilities": "the cross-entropy treats the logits as probabilities: the "
                               "output layer gives raw logits, so pass from_logits=True",
    "softmax_twice": "softmax is applied twice: with from_logits=True pass the raw logits, "
                     "not softmax(logits)",
}
CAPTION_ACC_MISTAKES = {
    "all_positions": "the hits are divided by every position, padding and [UNK] included: "
                     "divide by the number of real words, ops.sum(mask)",
    "unk_counted": "the [UNK] positions are counted: the model never writes [UNK] (the output "
                   "layer bans it), so leave them out of the mask too, labels != unknown_id",
    "padding_counted": "padding positions are counted: leave them out of the mask, labels != 0",
    "count": "the accuracy is a count of hits: divide it by the number of real words, "
             "ops.sum(mask), for a share",
    "end_excluded": "the end-token positions are left out: mask only padding and [UNK], the "
                    "same positions as the loss",
    "no_hits": "no position counts as a hit: take the argmax over the last axis, the "
               "vocabulary, ops.argmax(logits, axis=-1), and compare it with the labels "
               "position by position",
}


def caption_loss_variants() -> dict[str, float]:
    """The right loss ("correct") and each typical mistake's value on the fixed batch."""
    labels = CAPTION_LABELS
    real = (labels != 0) & (labels != CAPTION_UNKNOWN_ID)
    return masked_loss_variants(labels, CAPTION_LOGITS, real, {
        "unk_counted": labels != 0,
        "padding_counted": labels != CAPTION_UNKNOWN_ID,
        "no_mask": np.ones_like(real),
        "end_excluded": labels > 3,
    })


def caption_accuracy_variants() -> dict[str, float]:
    """The right accuracy ("correct") and each typical mistake's value on the fixed batch."""
    hits = (CAPTION_LOGITS.argmax(-1) == CAPTION_LABELS).astype("float64")
    real = (CAPTION_LABELS != 0) & (CAPTION_LABELS != CAPTION_UNKNOWN_ID)
    return {
        "correct": float(hits[real].mean()),
        "all_positions": float(hits.mean()),
        "unk_counted": float(hits[CAPTION_LABELS != 0].mean()),
        "padding_counted": float(hits[CAPTION_LABELS != CAPTION_UNKNOWN_ID].mean()),
        "count": float(hits[real].sum()),
        "end_excluded": float(hits[CAPTION_LABELS > 3].mean()),
        "no_hits": 0.0,
    }


def _caption_inputs(dtype: str, labels: np.ndarray = CAPTION_LABELS
                    ) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.constant(labels, dtype=dtype), tf.constant(CAPTION_LOGITS)


# A batch without a real word: every real label of the fixed batch made padding.
NO_REAL_WORD = np.where(CAPTION_LABELS > CAPTION_UNKNOWN_ID, 0, CAPTION_LABELS)
# Labels and logits as `fit` traces them, batch and caption length unknown: the lesson's
# dataset gives int64 labels.
FIT_SIGNATURE = (tf.TensorSpec([None, None], tf.int64),
                 tf.TensorSpec([None, None, CAPTION_VOCAB_SIZE]))


def _expected(variants: dict[str, float], value: float) -> str:
    return f"expected {variants['correct']:.4f} on a fixed batch, got {value:.4f}"


def _in_a_graph(exercise: str, fn: Callable, name: str, inputs: tuple, signature: tuple,
                expected: float) -> None:
    """`fn` gives `expected` inside a tf.function traced for unknown batch and length."""
    check_in_a_graph(exercise, tf.function(fn, input_signature=signature), inputs,
                     right="the value is right", who=name, expected=expected, same=same_number,
                     differs=f"the value is right eagerly, but {name} gives another inside "
                             "a tf.function as in training: use keras.ops, not NumPy")


def _no_real_word(exercise: str, name: str, fn: Callable, inputs: tuple) -> None:
    value = scalar(exercise, name, run_answer(exercise, name, fn, *inputs), "one number")
    if not np.isfinite(value):
        fail(exercise, f"on a batch without a real word (padding and [UNK] only) {name} gives "
                       f"{value}: divide by at least 1, ops.maximum(ops.sum(mask), 1.0)")


FLOAT_LABELS = ("fit passes the labels as float32 (Keras converts them to the loss's dtype): "
                "cast them before using them as ids or comparing them with integers, "
                "ops.cast(labels, 'int32')")


def _caption_loss(loss_fn: Callable) -> None:
    exercise, name = CAPTION_LOSS_EXERCISE, "masked_loss"
    variants = caption_loss_variants()
    wrapped = AsFitCallsTheLoss(loss_fn)
    inputs = _caption_inputs("int64")

    def on_integer_labels_only() -> bool:
        """Whether the answer is right on the integer labels it never gets from fit."""
        try:
            return same_number(scalar(exercise, name, loss_fn(*inputs), ""), variants["correct"])
        except Exception:  # noqa: BLE001 (any mistake in the answer)
            return False

    try:
        wrapped(*inputs)
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        if on_integer_labels_only():
            fail(exercise, FLOAT_LABELS, error)
        fail(exercise, f"{name} raised {one_line(error)}", error)
    value = scalar(exercise, name, wrapped.returned, "the averaged loss")
    if not same_number(value, variants["correct"]) and on_integer_labels_only():
        fail(exercise, FLOAT_LABELS)
    if np.isnan(value):
        fail(exercise, "the loss is NaN: look for a division by zero or the log of 0")
    wrong = (f"the loss is {value:.3g}: labels the output layer bans (padding, [UNK]) "
             "cost about 1e9 each; leave them out of the mask" if abs(value) > 1e6
             else _expected(variants, value))
    judge(exercise, value, variants, CAPTION_LOSS_MISTAKES, wrong, same=same_number)
    _in_a_graph(exercise, wrapped, name, inputs, FIT_SIGNATURE, variants["correct"])
    _no_real_word(exercise, name, wrapped, _caption_inputs("int64", NO_REAL_WORD))
    print_pass(exercise, "cross-entropy from logits averaged over real words; padding and [UNK] "
                         "left out")


def _caption_accuracy(accuracy_fn: Callable) -> None:
    """A metric function gets the labels as the dataset gives them (MeanMetricWrapper passes
    them on unchanged: keras/src/metrics/reduction_metrics.py), int64 in the lesson."""
    exercise, name = CAPTION_ACC_EXERCISE, "masked_acc"
    variants = caption_accuracy_variants()
    for dtype in ("int64", "int32"):
        try:
            result = accuracy_fn(*_caption_inputs(dtype))
        except Exception as error:  # noqa: BLE001 (any mistake in the answer)
            text = str(error)
            if "int32" in text and "int64" in text:
                fail(exercise, f"with {dtype} labels {name} raised {type(error).__name__} "
                               "comparing int64 with int32: cast the argmax and the labels to "
                               "one integer type, ops.cast(ops.argmax(logits, axis=-1), "
                               "labels.dtype)", error)
            if re.search(rf"\b{CAPTION_VOCAB_SIZE}\b", text) and re.search("shape", text, re.I):
                fail(exercise, "the argmax runs over the wrong axis, so the predictions have "
                               "one value per vocabulary word: take ops.argmax(logits, "
                               "axis=-1), one prediction per position", error)
            fail(exercise, f"{name} on {dtype} labels raised {one_line(error)}", error)
        value = scalar(exercise, name, result, "the share of real words predicted right")
        judge(exercise, value, variants, CAPTION_ACC_MISTAKES, _expected(variants, value),
              same=same_number)
        signature = (tf.TensorSpec([None, None], dtype), FIT_SIGNATURE[1])
        _in_a_graph(exercise, accuracy_fn, name, _caption_inputs(dtype), signature,
                    variants["correct"])
    _no_real_word(exercise, name, accuracy_fn, _caption_inputs("int64", NO_REAL_WORD))
    print_pass(exercise, "share of real words whose argmax is the label; padding and [UNK] "
                         "left out")


def masked_loss_and_accuracy(loss_fn: Callable, accuracy_fn: Callable) -> None:
    """masked_loss (exercise 5), checked fully first, then masked_acc (exercise 6), each
    called as `fit` calls it: on a batch (captions, tokens) of labels with padding and [UNK]
    and logits with padding, [UNK] and [START] banned, the loss on the float32 labels its
    Keras wrapper makes of them, the accuracy on integer labels as the dataset gives them,
    eagerly and in a tf.function of unknown batch and length; and both finite on a batch
    without a real word."""
    _caption_loss(loss_fn)
    _caption_accuracy(accuracy_fn)
