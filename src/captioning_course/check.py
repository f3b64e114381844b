"""Self-checks for the lab exercises: run a student's object on a tiny fixed input.

Each check prints one line starting with "PASS" when the answer behaves like the solution,
and otherwise raises `SelfCheckFailed` with one line saying what is wrong and where to look,
so a lab stops at the exercise that needs work instead of failing later in a confusing way.
An exception raised inside the student's code becomes such a line too, naming the exception.
Checks take seconds on a CPU, need no dataset, and use public Keras APIs only.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from typing import NoReturn

import keras
import numpy as np
import tensorflow as tf

from captioning_course import keras_fixes

# Every lesson imports this module before it builds a layer, and the self-checks call the
# students' layers on real tensors before the lessons build models from them symbolically.
keras_fixes.apply()


class SelfCheckFailed(Exception):
    """An exercise's answer does not behave as it should; the message says why."""


def _fail(exercise: str, problem: str, cause: BaseException | None = None) -> NoReturn:
    raise SelfCheckFailed(f"{exercise}: {problem}") from cause


def _pass(exercise: str, what: str) -> None:
    print(f"PASS {exercise}: {what}")


def _one_line(error: BaseException, limit: int = 160) -> str:
    """An exception as `Type: message` on one short line, without Keras's and TensorFlow's
    preambles, colours and operation names, nor tf.function's copy of the traceback."""
    text = str(error)
    if text.startswith("in user code:"):  # tf.function: the code lines, then the error
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    text = re.sub(r"\x1b\[[0-9;]*m", "", text.split("Arguments received by")[0])
    text = re.sub(r"Exception encountered when calling \S+\.", "", text)
    text = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:\w+\]( name:.*)?", "", text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _run(exercise: str, name: str, function: Callable, *args, **kwargs):
    """Call the student's `function`; an exception in it becomes a one-line failure."""
    try:
        return function(*args, **kwargs)
    except SelfCheckFailed:
        raise
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        _fail(exercise, f"{name} raised {_one_line(error)}", error)


# Exercise 1 ---------------------------------------------------------------------------------

def tokenizer(layer, vocab_size: int, caption_length: int) -> None:
    """The TextVectorization layer: vocabulary size, standardisation, output length."""
    exercise = "Exercise 1 (tokenizer)"
    if not isinstance(layer, keras.layers.TextVectorization):
        _fail(exercise, f"expected a layers.TextVectorization, got {type(layer).__name__}")
    config = layer.get_config()
    if config["max_tokens"] != vocab_size:
        _fail(exercise, f"max_tokens is {config['max_tokens']}; it should be VOCAB_SIZE "
                        f"({vocab_size}), the number of words to keep")
    if config["output_sequence_length"] != caption_length:
        _fail(exercise, f"output_sequence_length is {config['output_sequence_length']}; set it "
                        f"to caption_length ({caption_length}), the length measured above, so "
                        "every caption is padded to the same length")
    vocabulary = layer.get_vocabulary()
    if len(vocabulary) <= 2:
        _fail(exercise, "the vocabulary is empty: call tokenizer.adapt(...) on the captions")
    if "<start>" not in vocabulary or "<end>" not in vocabulary:
        standardize = config["standardize"]
        if callable(standardize):
            _fail(exercise, "'<start>' and '<end>' are not in the vocabulary: your standardize "
                            "function strips '<' and '>'; leave them out of the characters it "
                            "removes")
        if isinstance(standardize, str) and "strip_punctuation" in standardize:
            _fail(exercise, "'<start>' and '<end>' are not in the vocabulary: the default "
                            "standardisation strips '<' and '>'; the layer must use the lesson's "
                            "standardize function")
        _fail(exercise, "'<start>' and '<end>' are not in the vocabulary: adapt the tokenizer "
                        "on the captions with add_start_end(...) applied")
    # A stray "." is its own word after splitting, so it shows even when "dog" is unknown.
    tidy, messy = _run(exercise, "the tokenizer", layer,
                       tf.constant(["<start> a dog <end>", "<start> A dog . <end>"])).numpy()
    if not np.array_equal(tidy, messy):
        _fail(exercise, "'A dog .' and 'a dog' give different tokens: capitals or punctuation "
                        "survive; the layer must use the lesson's standardize function")
    _pass(exercise, f"{len(vocabulary)} tokens, captions padded to {caption_length}")


# Exercise 2 ---------------------------------------------------------------------------------

def ds_fn(create_ds_fn: Callable, tokenizer_layer) -> None:
    """create_ds_fn: ((image, tokens), target) with the target shifted left by one."""
    exercise = "Exercise 2 (create_ds_fn)"
    image = tf.fill([4, 4, 3], 0.5)
    caption = tf.constant("<start> a dog runs <end>")
    result = _run(exercise, "create_ds_fn", create_ds_fn, image, caption)
    try:
        (image_out, tokens), target = result
    except (TypeError, ValueError):
        _fail(exercise, "return ((image, tokens), target): a pair whose first item is a pair")
    tokens, target = np.asarray(tokens), np.asarray(target)
    expected_tokens = tokenizer_layer(caption).numpy()
    if not np.array_equal(np.asarray(image_out), image.numpy()):
        _fail(exercise, "the image must pass through unchanged as the first input")
    if not np.array_equal(tokens, expected_tokens):
        _fail(exercise, "the second input must be tokenizer(caption), the caption's token ids")
    if target.shape != tokens.shape:
        _fail(exercise, f"the target has shape {target.shape} but the tokens {tokens.shape}: "
                        "the target is as long as the tokens: one token leaves at the front, "
                        "one padding id joins at the end")
    if np.array_equal(target, tokens):
        _fail(exercise, "the target is not shifted: it equals the input; position t must hold "
                        "the token at t + 1")
    if np.array_equal(target, np.concatenate([[0], tokens[:-1]])):
        _fail(exercise, "the target is shifted right; it must move left: position t holds the "
                        "token at t + 1")
    if np.array_equal(target, np.roll(tokens, -1)) and tokens[0] != 0:
        _fail(exercise, "the last target is the <start> token wrapped around by tf.roll; the "
                        "end must be padding 0")
    expected = np.concatenate([tokens[1:], [0]])
    if not np.array_equal(target, expected):
        _fail(exercise, f"the target should be {expected[:8].tolist()}..., got "
                        f"{target[:8].tolist()}...: every token one place to the left, then "
                        "padding")
    # make_batches calls it inside tf.data, where there are no NumPy values to take.
    try:
        tf.data.Dataset.from_tensors((image, caption)).map(create_ds_fn)
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        _fail(exercise, "the value is right, but create_ds_fn fails inside tf.data as in "
                        f"training: use TensorFlow ops, not NumPy; it raised {_one_line(error)}",
              error)
    _pass(exercise, "target is the input shifted left by one and padded with 0")


# Exercise 3 ---------------------------------------------------------------------------------

def _close(a: np.ndarray, b: np.ndarray) -> bool:
    # Under a mixed-precision policy layers compute in 16 bits: two or three digits.
    half = keras.mixed_precision.global_policy().compute_dtype != "float32"
    rtol, atol = (3e-2, 1e-2) if half else (1e-3, 1e-5)
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=atol)


def _attend_outputs(exercise: str, attend: Callable, query: np.ndarray, value: np.ndarray):
    """attend's (context, weights) as arrays, or a failure naming what it returned instead."""
    result = _run(exercise, "attend", attend, tf.constant(query, dtype="float32"),
                  tf.constant(value, dtype="float32"))
    if result is None:
        _fail(exercise, "attend returns None: return what decoder_attention(...) returns")
    if not isinstance(result, tuple | list) and hasattr(result, "shape"):
        _fail(exercise, "attend returns a single tensor, the context only: call "
                        "decoder_attention with return_attention_scores=True so it returns "
                        "the weights too")
    both = ("attend should return two tensors, the context vectors and the attention "
            "weights, as decoder_attention(..., return_attention_scores=True) does")
    if not isinstance(result, tuple | list):
        _fail(exercise, f"{both}; it returns a {type(result).__name__}")
    if len(result) != 2:
        _fail(exercise, f"{both}; it returns {len(result)} items")
    try:
        context, weights = (np.asarray(item, dtype="float64") for item in result)
    except (TypeError, ValueError):
        _fail(exercise, both)
    if any(item is None for item in result) or context.ndim != 3 or weights.ndim != 3:
        _fail(exercise, f"{both}; it returns items of shapes {context.shape} and "
                        f"{weights.shape}")
    return context, weights


def _weighted_sum_of(context: np.ndarray, weights: np.ndarray, tensors: dict) -> str | None:
    """The name of the tensor whose rows, mixed by `weights`, give `context`."""
    for name, tensor in tensors.items():
        if (weights.ndim == 3 and weights.shape[0] == tensor.shape[0]
                and weights.shape[-1] == tensor.shape[1]):
            if _close(context, weights @ tensor):
                return name
    return None


def attention(embedding, gru, attend: Callable, vocab_size: int, attention_dim: int, *,
              words: int = 5, regions: int = 7) -> None:
    """The decoder's Embedding and GRU settings, and attend's query, value and outputs.

    attend runs on a made-up GRU output of `words` positions and image features of `regions`
    regions. The roles are read from the values, not only the shapes, so a swap is named
    even when `words == regions`: the image features are positive, like the encoder's ReLU
    output, and the context must be a weighted sum of their rows; reversing the words must
    reverse the output rows (the words ask), and reversing the regions must leave the context
    unchanged (the regions answer, whatever their order).
    """
    exercise = "Exercise 3 (embedding, GRU and attention)"
    if not isinstance(embedding, keras.layers.Embedding):
        _fail(exercise, f"word_embedding should be a layers.Embedding, got "
                        f"{type(embedding).__name__}")
    if (embedding.input_dim, embedding.output_dim) != (vocab_size, attention_dim):
        _fail(exercise, f"the Embedding maps {embedding.input_dim} ids to "
                        f"{embedding.output_dim} values; it should map the vocabulary "
                        f"(len(vocabulary) = {vocab_size} ids) to ATTENTION_DIM "
                        f"({attention_dim}) values")
    if not isinstance(gru, keras.layers.GRU):
        _fail(exercise, f"decoder_gru should be a layers.GRU, got {type(gru).__name__}")
    if gru.units != attention_dim:
        _fail(exercise, f"the GRU has {gru.units} units; use ATTENTION_DIM ({attention_dim}) "
                        "so its output can be added to the context vector")
    if not (gru.return_sequences or gru.return_state):
        _fail(exercise, "the GRU needs return_sequences=True (a vector per word) and "
                        "return_state=True (the inference model carries the state)")
    if not gru.return_sequences:
        _fail(exercise, "the GRU needs return_sequences=True: one output vector per word, "
                        "not only the last one")
    if not gru.return_state:
        _fail(exercise, "the GRU needs return_state=True: the inference model carries the "
                        "state from one word to the next")

    rng = np.random.default_rng(0)
    scale = (9 / attention_dim) ** 0.25  # dot products of about unit size
    gru_output = rng.uniform(-1, 1, (2, words, attention_dim)) * scale
    features = rng.uniform(0, 1, (2, regions, attention_dim)) * scale
    context, weights = _attend_outputs(exercise, attend, gru_output, features)
    if not (np.isfinite(context).all() and np.isfinite(weights).all()):
        _fail(exercise, "attend returns NaN or infinite values")
    inputs = {"image_features": features, "gru_output": gru_output}
    value = _weighted_sum_of(context, weights, inputs)
    if value is None and _weighted_sum_of(weights, context, inputs):
        _fail(exercise, "attend returns the weights first: return the context vectors, then "
                        "the weights, in the order decoder_attention gives them")
    if value is None:
        _fail(exercise, "the context is not a weighted sum of the image features: return what "
                        "decoder_attention gives when the image features are the value")
    if (weights == 0).any():
        _fail(exercise, "some attention weights are 0: pass no mask and no use_causal_mask; "
                        "every word may look at every region")
    reversed_words = _attend_outputs(exercise, attend, gru_output[:, ::-1], features)
    words_ask = _close(reversed_words[0], context[:, ::-1])  # one context row per word
    if value == "gru_output":
        if words_ask:
            _fail(exercise, "the value is the GRU output itself, so the words attend to each "
                            "other: the value must be the image features")
        _fail(exercise, "query and value are swapped: the words ask (query), the image "
                        "answers (value)")
    reversed_regions = _attend_outputs(exercise, attend, gru_output, features[:, ::-1])
    regions_answer = (_close(reversed_regions[0], context)  # the regions' order is irrelevant
                      and _close(reversed_regions[1], weights[:, :, ::-1]))
    wrong_key = ("the weights do not compare the words with the image regions: leave out the "
                 "key (it defaults to the value) or pass the image features")
    if _close(reversed_regions[1], weights):  # the weights ignore the regions altogether
        _fail(exercise, wrong_key)
    if not words_ask:
        _fail(exercise, "the attention query must be the GRU output: the words ask, the image "
                        "answers")
    if not regions_answer:
        _fail(exercise, wrong_key)
    if context.shape != (2, words, attention_dim) or weights.shape != (2, words, regions):
        _fail(exercise, f"for {words} words and {regions} regions attend returns a context of "
                        f"shape {context.shape} and weights of shape {weights.shape}; expected "
                        f"{(2, words, attention_dim)} and {(2, words, regions)}")
    _pass(exercise, "embedding and GRU sized right; the GRU output attends over the image "
                    "features")


# Exercise 4 ---------------------------------------------------------------------------------

# A fixed batch of three captions of 3, 4 and 2 tokens, padded to 7 with 0, over 300 ids.
LOSS_TARGETS = np.array([[3, 4, 2, 0, 0, 0, 0], [5, 6, 3, 2, 0, 0, 0], [4, 2, 0, 0, 0, 0, 0]])
# The logits are built to give these per-token losses, and their argmax is a word (not 0)
# exactly where PREDICTED_WORD is 1: chosen so that every typical mistake gives a loss far
# from the right one and from each other (the tests assert it).
PER_TOKEN_LOSS = np.array([[0.2, 0.2, 1.2, 6.0, 7.5, 7.5, 0.2],
                           [2.2, 2.3, 2.5, 7.0, 3.4, 8.0, 0.2],
                           [0.2, 1.0, 2.6, 4.0, 8.0, 8.0, 1.4]])
PREDICTED_WORD = np.array([[1, 1, 0, 1, 1, 1, 0], [0, 1, 1, 0, 1, 1, 0], [1, 0, 1, 1, 1, 1, 0]])


def _loss_logits(vocab_size: int = 300) -> np.ndarray:
    logits = np.full((*LOSS_TARGETS.shape, vocab_size), -30.0)
    for position in np.ndindex(LOSS_TARGETS.shape):
        target, loss = LOSS_TARGETS[position], PER_TOKEN_LOSS[position]
        logits[position][target] = 0.0
        if PREDICTED_WORD[position] == (target != 0):  # the target wins, with `loss` left
            others = np.arange(vocab_size) != target
            logits[position][others] = np.log(np.expm1(loss) / (vocab_size - 1))
        else:  # another id wins: padding for a word, a word for padding
            logits[position][0 if target else 9] = np.log(np.expm1(loss))
    return logits.astype("float32")


LOSS_LOGITS = _loss_logits()

# What each typical mistake is told; a variant "name:detail" is told the message of "name".
LOSS_MISTAKES = {
    "predicted_mask": "the mask comes from the predictions: build it from the targets, "
                      "targets != 0, which say where the real words are",
    "shifted_mask": "the mask is shifted by one position: build it from targets != 0 at the "
                    "same positions as the per-token losses",
    "padding_counted": "padding is counted: multiply the per-token loss by a mask of "
                       "targets != 0 before averaging",
    "mean_of_masked": "the masked losses are averaged over every position, padding "
                      "included: divide their sum by the number of real tokens, ops.sum(mask)",
    "summed": "the loss is summed; divide by the number of real tokens",
    "unmasked_sum": "the padded positions' losses are still in the sum: multiply by the "
                    "mask before summing",
    "per_caption": "each caption is averaged separately, so short captions weigh more; "
                   "divide the batch's total by its number of real tokens",
    "logits_as_probabilities": "the cross-entropy treats the logits as probabilities: the "
                               "decoder outputs raw logits, so pass from_logits=True",
    "softmax_twice": "softmax is applied twice: with from_logits=True pass the raw logits, "
                     "not softmax(logits)",
}


def loss_variants() -> dict[str, float]:
    """The right masked loss ("correct") and each typical mistake's value on the fixed batch."""
    def cross_entropy(predictions, from_logits=True):
        return keras.losses.sparse_categorical_crossentropy(
            tf.constant(LOSS_TARGETS), tf.constant(predictions), from_logits=from_logits
        ).numpy().astype("float64")

    def masked_mean(per_token, mask):
        return float((per_token * mask).sum() / mask.sum())

    per_token = cross_entropy(LOSS_LOGITS)
    real = (LOSS_TARGETS != 0).astype("float64")
    column = np.ones_like(real[:, :1])
    return {
        "correct": masked_mean(per_token, real),
        "predicted_mask": masked_mean(per_token, LOSS_LOGITS.argmax(-1) != 0),
        "shifted_mask:later": masked_mean(per_token, np.hstack([0 * column, real[:, :-1]])),
        "shifted_mask:inputs": masked_mean(per_token, np.hstack([column, real[:, :-1]])),
        "shifted_mask:earlier": masked_mean(per_token, np.hstack([real[:, 1:], 0 * column])),
        "shifted_mask:rolled": masked_mean(per_token, np.hstack([real[:, 1:], column])),
        "padding_counted": float(per_token.mean()),
        "mean_of_masked": float((per_token * real).mean()),
        "summed": float((per_token * real).sum()),
        "unmasked_sum": float(per_token.sum() / real.sum()),
        "per_caption": float(((per_token * real).sum(1) / real.sum(1)).mean()),
        "logits_as_probabilities": masked_mean(cross_entropy(LOSS_LOGITS, from_logits=False),
                                               real),
        "softmax_twice": masked_mean(cross_entropy(keras.ops.softmax(LOSS_LOGITS).numpy()),
                                     real),
    }


def masked_loss(loss: Callable, exercise: str = "Exercise 4 (masked_loss)") -> None:
    """The loss averages cross-entropy from logits over real (target != 0) tokens only.

    Every lesson with a masked loss checks it here; `exercise` is its name in that lesson.
    """
    result = _run(exercise, "masked_loss", loss, tf.constant(LOSS_TARGETS),
                  tf.constant(LOSS_LOGITS))
    if result is None:
        _fail(exercise, "masked_loss returns None: return the averaged loss")
    try:
        value = np.asarray(result, dtype="float64")
    except (TypeError, ValueError):
        _fail(exercise, f"return one number (a scalar), not a {type(result).__name__}")
    if value.shape != ():
        _fail(exercise, f"return one number (a scalar), not shape {value.shape}")
    value = float(value)
    if not np.isfinite(value):
        _fail(exercise, f"the loss is {value}: look for a division by zero or the log of 0")
    variants = loss_variants()
    if np.isclose(value, variants["correct"], rtol=1e-4):
        try:  # as in training, where Keras traces the loss into a graph
            tf.function(loss)(tf.constant(LOSS_TARGETS), tf.constant(LOSS_LOGITS))
        except Exception as error:  # noqa: BLE001 (any mistake in the answer)
            _fail(exercise, "the value is right, but masked_loss fails inside a tf.function as "
                            "in training: use keras.ops, not NumPy; it raised "
                            f"{_one_line(error, 100)}", error)
        _pass(exercise, "padding is ignored and the loss is averaged over real tokens")
        return
    for name, expected in variants.items():
        if np.isclose(value, expected, rtol=1e-4):
            _fail(exercise, LOSS_MISTAKES[name.partition(":")[0]])
    _fail(exercise, f"expected {variants['correct']:.4f} for a fixed batch, got {value:.4f}: "
                    "cross-entropy from logits, masked where targets == 0, averaged")


# Exercise 5 ---------------------------------------------------------------------------------

CHECK_VOCABULARY = ["", "[UNK]", "<start>", "<end>", "a", "red", "circle", "left"]
BANNED_WORDS = ("", "[UNK]", "<start>")
# Two images with scripted captions: the scripted step model says which word follows which,
# and its state counts the steps, so a loop that drops the state or the fed-back word is seen.
SCRIPTS = (["a", "red", "circle", "left"], ["red", "circle"])
# At these (image, step) a banned id gets the top logit and the scripted word the second:
# only a loop that chooses with choose_next writes the scripted captions.
BANNED_ON_TOP = {(0, 1): "[UNK]", (0, 3): "", (1, 0): "<start>"}


class ScriptedStepModel:
    """Stands in for the trained step model with predictable answers."""

    def __init__(self, state_size: int = 3):
        self.state_size = state_size
        self.inputs = [keras.KerasTensor((None, 1)), keras.KerasTensor((None, state_size)),
                       keras.KerasTensor((None, 4, 2))]
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def predict_on_batch(self, inputs):
        if not isinstance(inputs, list | tuple) or len(inputs) != 3:
            raise ValueError("step_model takes a list of three inputs: [tokens, state, "
                             "image_features]")
        tokens, state, features = (np.asarray(x) for x in inputs)
        batch = len(features)
        if tokens.shape != (batch, 1):
            raise ValueError(f"step_model expects tokens of shape ({batch}, 1), one id per "
                             f"image, got shape {tokens.shape}")
        if state.shape != (batch, self.state_size):
            raise ValueError(f"step_model expects a state of shape ({batch}, "
                             f"{self.state_size}), got shape {state.shape}")
        self.calls.append((tokens.copy(), state.copy()))
        logits = np.full((batch, 1, len(CHECK_VOCABULARY)), -10.0, dtype="float32")
        for i, script in enumerate(SCRIPTS[:batch]):
            step = int(round(state[i, 0]))
            word = script[step] if step < len(script) else "<end>"
            logits[i, 0, CHECK_VOCABULARY.index(word)] = 10.0
            if (i, step) in BANNED_ON_TOP:
                logits[i, 0, CHECK_VOCABULARY.index(BANNED_ON_TOP[i, step])] = 11.0
        weights = features[:, None, :, 0]  # any (batch, 1, regions) array will do
        return logits, state + 1.0, weights

    # A Keras model answers these too; a student may use any of them.
    def __call__(self, inputs, training=False):
        return self.predict_on_batch(inputs)

    def predict(self, inputs, verbose="auto", **kwargs):
        return self.predict_on_batch(inputs)


def _locals_where_raised(error: BaseException, function: Callable) -> dict:
    """The local variables of `function` at the moment `error` passed through it."""
    found: dict = {}
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code is getattr(function, "__code__", None):
            found = dict(frame.f_locals)
    return found


SAMPLE_TOP_K, SAMPLE_T = 3, 0.5


def _sampling_settings(decode_fn: Callable, features: np.ndarray) -> set[tuple]:
    """The (top_k, temperature) that choose_next receives when decode is asked to sample.

    choose_next is looked up in the module that defines decode (the notebook), and wrapped
    only for this call."""
    module = getattr(decode_fn, "__globals__", {})
    choose_next = module.get("choose_next")
    if not callable(choose_next):
        return set()
    seen = set()

    def recording(logits, banned, top_k, temperature):
        seen.add((top_k, temperature))
        return choose_next(logits, banned, top_k, temperature)

    module["choose_next"] = recording
    try:
        decode_fn(features, ScriptedStepModel(), CHECK_VOCABULARY, top_k=SAMPLE_TOP_K,
                  temperature=SAMPLE_T)
    except Exception:  # noqa: BLE001, S110 (the greedy run above already judged the loop)
        pass
    finally:
        module["choose_next"] = choose_next
    return seen


def decode(decode_fn: Callable) -> None:
    """The decoding loop: state carried, next word chosen and fed back, stop at <end>."""
    exercise = "Exercise 5 (decoding loop)"
    model = ScriptedStepModel()
    features = np.stack([np.full((4, 2), 0.25), np.full((4, 2), 0.5)]).astype("float32")
    batch = len(features)
    try:
        result = decode_fn(features, model, CHECK_VOCABULARY)
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        next_ids = _locals_where_raised(error, decode_fn).get("next_ids")
        shape = np.shape(next_ids) if next_ids is not None else (batch,)
        if shape in ((len(CHECK_VOCABULARY),), (1, len(CHECK_VOCABULARY))):
            _fail(exercise, f"next_ids has shape {shape}, one id per vocabulary word: take the "
                            "argmax over the words, the last axis, not over the images "
                            "(choose_next does it)", error)
        if shape != (batch,):
            _fail(exercise, f"next_ids has shape {shape}; it needs one id per image, shape "
                            f"({batch},): pass choose_next the last position's logits, "
                            "logits[:, -1, :]", error)
        _fail(exercise, f"decode raised {_one_line(error)}", error)
    try:
        captions, attention = result
        captions, attention = list(captions), list(attention)
    except (TypeError, ValueError):
        _fail(exercise, "decode should return two lists: the captions and their attention")
    if not all(isinstance(caption, str) for caption in captions):
        _fail(exercise, "each caption should be a string: the words joined with spaces")
    expected = [" ".join(script) for script in SCRIPTS]
    states = [state[0, 0] for _, state in model.calls]
    if len(states) > 1 and not any(states[1:]):
        _fail(exercise, "the state is not carried: pass the state returned by the previous "
                        "step back into step_model")
    start = CHECK_VOCABULARY.index("<start>")
    if len(model.calls) > 1 and all((tokens == start).all() for tokens, _ in model.calls):
        _fail(exercise, "the chosen word is not fed back: the next step's input must be the "
                        "ids just chosen, one per image")
    if any("<end>" in caption.split() for caption in captions):
        _fail(exercise, "'<end>' is part of a caption: stop before appending it")
    if len(model.calls) > len(SCRIPTS[0]) + 1:
        _fail(exercise, f"the loop ran {len(model.calls)} steps for a {len(SCRIPTS[0])}-word "
                        "caption: break once every caption has reached <end>")
    if any(word in BANNED_WORDS for caption in captions for word in caption.split(" ")):
        _fail(exercise, "a caption contains padding, '[UNK]' or '<start>': use choose_next: it "
                        "never picks padding, [UNK] or <start> and samples when top_k > 1")
    if captions != expected:
        _fail(exercise, f"expected captions {expected}, got {captions}: keep appending words "
                        "only to captions not yet done")
    if [len(a) for a in attention] != [len(s) for s in SCRIPTS]:
        _fail(exercise, "keep one attention map per generated word")
    if _sampling_settings(decode_fn, features) not in (set(), {(SAMPLE_TOP_K, SAMPLE_T)}):
        _fail(exercise, "decode(..., top_k=3, temperature=0.5) does not hand top_k and "
                        "temperature on to choose_next, so sampling never happens")
    _pass(exercise, "state carried, words chosen with choose_next and fed back, stops at <end>")


# Lesson 2, image_captioning_custom_loop: Exercises 1 and 2 --------------------------------------

def _arrays(items) -> list[np.ndarray] | None:
    """Each item as a float64 array, or None when one is not a number array."""
    try:
        return [np.asarray(item, dtype="float64") for item in items]
    except (TypeError, ValueError):
        return None


def _fixed_weights(model, seed: int) -> None:
    """Give every float variable of the check's own `model` fixed values (Glorot-sized), so
    that a check gives the same verdict on every run whatever the initialisers, without
    touching the student's random seeds."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if "float" in str(variable.dtype):
            shape = tuple(variable.shape)
            limit = (6 / sum(shape[-2:])) ** 0.5 if len(shape) >= 2 else 0.5
            variable.assign(rng.uniform(-limit, limit, shape).astype(variable.dtype))


ATTENTION_EXERCISES = ("Exercise 1 (attention scores and weights)",
                       "Exercise 2 (context vector)")
# Two images of 5 regions with 6 positive features (the encoder ends with a ReLU), a state of 8.
BAHDANAU_UNITS = 8
BAHDANAU_FEATURES = np.random.default_rng(21).uniform(0, 2, (2, 5, 6)).astype("float32")
BAHDANAU_HIDDEN = np.random.default_rng(22).uniform(-1, 1, (2, 2, BAHDANAU_UNITS)).astype(
    "float32")  # two states for the same images: the weights must follow the state


def _attention_call(layer, features: np.ndarray, hidden: np.ndarray, graph: bool = False):
    """The layer's (context, weights, error) on these inputs.

    When the layer raises after its `attention_weights` exist (in exercise 2's lines), they
    are returned with the error and no context; when it raises before, the error alone.
    When it returns the weights first, they are put back in place and error is "swapped".
    Outputs are float64 arrays, except in a tf.function (`graph`), where only errors count.
    """
    def attend(features, hidden):
        return layer(features, hidden)

    try:
        result = (tf.function(attend) if graph else attend)(tf.constant(features),
                                                            tf.constant(hidden))
    except SelfCheckFailed:
        raise
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        weights = _locals_where_raised(error, type(layer).call).get("attention_weights")
        if not graph and weights is not None:
            weights = (_arrays([weights]) or [None])[0]
        return None, weights, error
    if graph:
        return result, None, None
    both = ("the layer should return two tensors, context_vector and attention_weights, in "
            "that order")
    if not isinstance(result, tuple | list):
        _fail(ATTENTION_EXERCISES[0], f"{both}; it returns a {type(result).__name__}")
    if len(result) != 2:
        _fail(ATTENTION_EXERCISES[0], f"{both}; it returns {len(result)} items")
    arrays = _arrays(result) if all(item is not None for item in result) else None
    if arrays is None:
        _fail(ATTENTION_EXERCISES[0], both)
    context, weights = arrays
    batch, regions, dim = features.shape
    if weights.shape == (batch, dim) and context.shape in ((batch, regions, 1), (batch, regions)):
        return weights, context, "swapped"  # told in exercise 2, once the weights are judged
    return context, weights, None


def _attention_scores(layer, features: np.ndarray, hidden: np.ndarray, *, tanh: bool = True,
                      regions_axis: bool = True, roles: str = "W1W2") -> np.ndarray | None:
    """The reference weights from the layer's own W1, W2 and V, shape (batch, regions), or
    None if its layers do not fit this computation (they were built for other shapes).

    `roles` "W2W1" projects the features with W2 and the state with W1, as good a model.
    Without `regions_axis`, the projected state is broadcast against the regions as
    (batch, units) would be: region r of every image gets image r's state."""
    for_features, for_state = (layer.W1, layer.W2) if roles == "W1W2" else (layer.W2, layer.W1)
    try:
        projected = np.asarray(for_features(tf.constant(features)), dtype="float64")
        state = np.asarray(for_state(tf.constant(hidden)), dtype="float64")
        summed = projected + (state[:, None] if regions_axis else state)
        score = np.asarray(layer.V(tf.constant(np.tanh(summed) if tanh else summed, "float32")),
                           dtype="float64")[..., 0]
    except Exception:  # noqa: BLE001 (the layers do not fit this computation)
        return None
    score = np.exp(score - score.max(axis=1, keepdims=True))
    return score / score.sum(axis=1, keepdims=True)


def _scored_like(weights: np.ndarray, layer, features: np.ndarray, hidden: np.ndarray,
                 **variant) -> bool:
    """Whether `weights` are the reference weights (or a `variant` of them), with W1 and W2
    in either role."""
    return any(_close(weights, reference) for roles in ("W1W2", "W2W1")
               if (reference := _attention_scores(layer, features, hidden, roles=roles,
                                                  **variant)) is not None)


def _hidden_without_regions_axis(layer) -> bool:
    """Whether the layer, which failed on 2 images of 5 regions, runs on 3 images of 3
    regions and gives the weights of W2(hidden) broadcast without a regions axis."""
    features = np.random.default_rng(23).uniform(0, 2, (3, 3, BAHDANAU_FEATURES.shape[2]))
    hidden = np.random.default_rng(24).uniform(-1, 1, (3, BAHDANAU_UNITS))
    features, hidden = features.astype("float32"), hidden.astype("float32")
    _, weights, error = _attention_call(layer, features, hidden)
    if error is not None or weights is None or weights.size != 9:
        return False
    return _scored_like(weights.reshape(3, 3), layer, features, hidden, regions_axis=False)


def bahdanau_attention(attention_cls) -> None:
    """BahdanauAttention: softmax weights over the regions of V(tanh(W1 f + W2 h)) (exercise
    1), and the context, the regions' features weighted and summed (exercise 2).

    The reference is computed from the layer's own W1, W2 and V, so any formulation passes.
    Failures name the exercise whose lines are wrong: an error raised once
    `attention_weights` exists is exercise 2's."""
    first, second = ATTENTION_EXERCISES
    features, hidden, other_hidden = BAHDANAU_FEATURES, *BAHDANAU_HIDDEN
    batch, regions, dim = features.shape
    name = getattr(attention_cls, "__name__", "the attention class")
    layer = _run(first, f"{name}({BAHDANAU_UNITS})", attention_cls, BAHDANAU_UNITS)
    _attention_call(layer, features, hidden)  # builds the sublayers the answer uses
    for roles in ("W1W2", "W2W1"):  # and those it leaves out, before fixing the weights
        _attention_scores(layer, features, hidden, roles=roles)
    _fixed_weights(layer, seed=1)
    context, weights, error = _attention_call(layer, features, hidden)
    if weights is None:  # it raised before the weights existed
        if _hidden_without_regions_axis(layer):
            _fail(first, "W2(hidden) has no regions axis, so it is not added to W1(features) "
                         "region by region: give the state one, ops.expand_dims(hidden, 1), "
                         "shape (batch, 1, units)", error)
        _fail(first, f"the attention layer raised {_one_line(error)}", error)
    if weights.ndim == 3 and weights.shape[:2] == (batch, regions) and weights.shape[2] != 1:
        _fail(first, f"the weights have shape {weights.shape}, one per region and feature: "
                     "apply the softmax to the score V(tanh(...)), one number per region, "
                     "shape (batch, regions, 1)")
    if weights.shape not in ((batch, regions, 1), (batch, regions)):
        _fail(first, f"the weights have shape {weights.shape}; expected {(batch, regions, 1)}: "
                     "one weight per image and region")
    weights = weights.reshape(batch, regions)
    if _close(weights, np.ones_like(weights)):
        _fail(first, "the weights are all 1: the softmax runs over the last axis, which holds "
                     "one score per region; take it over the regions, axis=1")
    if not _close(weights.sum(axis=1), np.ones(batch)):
        _fail(first, "the weights do not sum to 1 over the regions: take the softmax over "
                     "axis=1, the regions")
    if not _scored_like(weights, layer, features, hidden):
        if _scored_like(weights, layer, features, hidden, tanh=False):
            _fail(first, "the score has no tanh: score = V(tanh(W1(features) + W2(hidden))); "
                         "without it the state adds the same to every region's score, and "
                         "the softmax cancels it")
        _, weights_for_other, _ = _attention_call(layer, features, other_hidden)
        if (weights_for_other is not None and weights_for_other.size == weights.size
                and _close(weights_for_other.reshape(weights.shape), weights)):
            _fail(first, "the weights do not change with the hidden state: add W2 of the "
                         "state, with a regions axis (ops.expand_dims(hidden, 1)), to "
                         "W1(features) inside the tanh")
        _fail(first, "the weights are not softmax(V(tanh(W1(features) + W2(hidden))), "
                     "axis=1): score every region with the layer's W1, W2 and V")
    _, graph_weights, graph_error = _attention_call(layer, features, hidden, graph=True)
    tf_function = ("fails inside a tf.function as in training: use keras.ops, not NumPy; it "
                   "raised ")
    if graph_error is not None and graph_weights is None:
        _fail(first, f"the weights are right, but the layer {tf_function}"
                     f"{_one_line(graph_error, 100)}", graph_error)
    _pass(first, "softmax over the regions of V(tanh(W1(features) + W2(hidden)))")

    if error == "swapped":
        _fail(second, "the layer returns the weights first: return context_vector, "
                      "attention_weights, in that order")
    if error is not None:
        _fail(second, f"the attention layer raised {_one_line(error)}", error)
    if context.shape != (batch, dim):
        _fail(second, f"the context vector has shape {context.shape}; expected (batch, "
                      f"embedding_dim) = {(batch, dim)}: sum attention_weights * features over "
                      "the regions, axis=1")
    expected = (weights[:, :, None] * features).sum(axis=1)
    if not _close(context, expected):
        if _close(context, expected / regions):
            _fail(second, "the context vector is a mean over the regions: the weights already "
                          "sum to 1, so take the sum, ops.sum(..., axis=1), not the mean")
        if _close(context, features.mean(axis=1)):
            _fail(second, "the context vector is the plain mean of the features: weight each "
                          "region by attention_weights, then sum over the regions")
        _fail(second, "the context vector is not the sum over the regions of "
                      "attention_weights * features")
    if graph_error is not None:
        _fail(second, f"the context is right, but the layer {tf_function}"
                      f"{_one_line(graph_error, 100)}", graph_error)
    _pass(second, "the features weighted by the attention weights, summed over the regions")


# Lesson 2, image_captioning_custom_loop: Exercise 3 ---------------------------------------------

DECODER_EXERCISE = "Exercise 3 (decoder step)"
# RNNDecoder(embedding_dim=6, units=8, vocab_size=11) on two images of 5 regions.
DECODER_SIZES = (6, 8, 11)
DECODER_WORDS = np.array([[3], [7]])
DECODER_FEATURES = np.random.default_rng(31).uniform(0, 2, (2, 5, 6)).astype("float32")
DECODER_HIDDEN = np.random.default_rng(32).uniform(-1, 1, (2, 8)).astype("float32")


def _decoder_inputs() -> tuple:
    return (tf.constant(DECODER_WORDS), tf.constant(DECODER_FEATURES),
            tf.constant(DECODER_HIDDEN))


def _decoder_step(decoder) -> Callable:
    def step(word_ids, features, hidden):
        return decoder(word_ids, features, hidden)

    return step


def _decoder_call(decoder) -> tuple:
    """The decoder's (logits, state, attention weights) on the fixed step, as arrays."""
    result = _run(DECODER_EXERCISE, "the decoder", _decoder_step(decoder), *_decoder_inputs())
    three = "the decoder should return three tensors: logits, state and attention_weights"
    if not isinstance(result, tuple | list):
        _fail(DECODER_EXERCISE, f"{three}; it returns a {type(result).__name__}")
    if len(result) != 3:
        _fail(DECODER_EXERCISE, f"{three}; it returns {len(result)} items")
    arrays = _arrays(result) if all(item is not None for item in result) else None
    if arrays is None:
        _fail(DECODER_EXERCISE, three)
    return tuple(arrays)


def _decoder_attention(decoder, hidden: np.ndarray) -> np.ndarray:
    """The weights of the decoder's own attention layer for this state, (batch, regions);
    NaN if it cannot give them, so that they match nothing."""
    try:
        _, weights = decoder.attention(tf.constant(DECODER_FEATURES), tf.constant(hidden))
        return np.asarray(weights, dtype="float64").reshape(DECODER_FEATURES.shape[:2])
    except Exception:  # noqa: BLE001 (then the answer is judged without it)
        return np.full(DECODER_FEATURES.shape[:2], np.nan)


def _decoder_reference(decoder, *, start: np.ndarray = DECODER_HIDDEN,
                       context: str = "first", fc1: bool = True) -> tuple | None:
    """(logits, state) of one step computed from the decoder's own layers: attention with
    the previous state, its context next to the word's embedding (`context` "first", "last"
    or "none"), the GRU from `start`, then fc1 (unless skipped) and fc2. None if the layers
    cannot run it (they were built for other shapes)."""
    features, hidden = tf.constant(DECODER_FEATURES), tf.constant(DECODER_HIDDEN)
    try:
        context_vector, _ = decoder.attention(features, hidden)
        words = decoder.embedding(tf.constant(DECODER_WORDS))
        context_vector = keras.ops.cast(context_vector[:, None], words.dtype)
        inputs = {"first": [context_vector, words], "last": [words, context_vector],
                  "none": [words]}[context]
        output, state = decoder.gru(keras.ops.concatenate(inputs, axis=-1),
                                    initial_state=tf.constant(start))
        hidden_layer = decoder.fc1(output[:, 0]) if fc1 else output[:, 0]
        return tuple(np.asarray(x, dtype="float64") for x in (decoder.fc2(hidden_layer), state))
    except Exception:  # noqa: BLE001 (the layers do not fit this computation)
        return None


def _same_step(outputs: tuple, reference: tuple | None) -> bool:
    return reference is not None and all(_close(a, b) for a, b in zip(outputs, reference,
                                                                       strict=True))


def decoder_step(decoder_cls) -> None:
    """RNNDecoder.call: attention with the previous state, the context concatenated with the
    word's embedding, the GRU from `hidden`, fc1 then fc2 to logits.

    The reference step is computed from the decoder's own layers (the context may come
    before or after the embedding), so any formulation passes."""
    exercise = DECODER_EXERCISE
    embedding_dim, units, vocab_size = DECODER_SIZES
    batch, regions, _ = DECODER_FEATURES.shape
    name = getattr(decoder_cls, "__name__", "the decoder class")
    decoder = _run(exercise, f"{name}{DECODER_SIZES}", decoder_cls, *DECODER_SIZES)
    _decoder_call(decoder)  # builds the layers the answer uses
    for context in ("first", "none"):  # and those it skips, before fixing the weights
        _decoder_reference(decoder, context=context)
    _fixed_weights(decoder, seed=3)
    logits, state, weights = _decoder_call(decoder)
    if logits.shape == (batch, 1, vocab_size):
        _fail(exercise, f"the logits have shape {logits.shape}: drop the time axis, "
                        "output[:, 0] or ops.squeeze(output, 1), for (batch, vocab_size)")
    if logits.shape != (batch, vocab_size):
        _fail(exercise, f"the logits have shape {logits.shape}; expected (batch, vocab_size) = "
                        f"{(batch, vocab_size)}")
    if state.shape != (batch, units):
        _fail(exercise, f"the new state has shape {state.shape}; expected (batch, units) = "
                        f"{(batch, units)}: return the GRU's state")
    if weights.shape not in ((batch, regions, 1), (batch, regions)):
        _fail(exercise, f"the attention weights have shape {weights.shape}; expected "
                        f"{(batch, regions, 1)}: return the weights self.attention gives")
    if (logits >= 0).all() and _close(logits.sum(axis=1), np.ones(batch)):
        _fail(exercise, "the decoder returns probabilities (a softmax of the logits): return "
                        "fc2's output, the logits; the loss applies the softmax itself")
    weights = weights.reshape(batch, regions)
    if not _close(weights, _decoder_attention(decoder, DECODER_HIDDEN)):
        if _close(weights, _decoder_attention(decoder, state.astype("float32"))):
            _fail(exercise, "the attention uses the new state: attend with `hidden`, the "
                            "previous state, before the GRU; its context is part of the GRU's "
                            "input")
        _fail(exercise, "the attention weights are not self.attention(features, hidden)'s: "
                        "attend over the image features with the previous state")
    if _decoder_reference(decoder, context="none") is not None:
        _fail(exercise, f"the GRU's input has {embedding_dim} values, so the context vector "
                        "is not concatenated with the word's embedding: ops.concatenate("
                        "[ops.expand_dims(context_vector, 1), x], axis=-1)")
    outputs = (logits, state)
    if not any(_same_step(outputs, _decoder_reference(decoder, context=context))
               for context in ("first", "last")):
        zeros = np.zeros_like(DECODER_HIDDEN)
        if any(_same_step(outputs, _decoder_reference(decoder, start=zeros, context=context))
               for context in ("first", "last")):
            _fail(exercise, "the GRU starts from zeros: pass initial_state=hidden, so the step "
                            "continues from the previous state")
        if any(_same_step(outputs, _decoder_reference(decoder, context=context, fc1=False))
               for context in ("first", "last")):
            _fail(exercise, "fc1 is skipped: the logits are self.fc2(self.fc1(output)), the two "
                            "Dense layers in turn")
        _fail(exercise, "the logits or the state differ from the step computed from your "
                        "layers: attention with hidden, context and embedding concatenated, "
                        "the GRU from hidden, then fc1 and fc2")
    try:  # as in training, inside train_step's tf.function
        tf.function(_decoder_step(decoder))(*_decoder_inputs())
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        _fail(exercise, "the step is right, but the decoder fails inside a tf.function as in "
                        f"training: use keras.ops, not NumPy; it raised {_one_line(error, 100)}",
              error)
    _pass(exercise, "attention with the previous state, context and word into the GRU from "
                    "hidden, fc1 and fc2 to logits")


# Lesson 2, image_captioning_custom_loop: Exercise 4 ---------------------------------------------

TEACHER_EXERCISE = "Exercise 4 (teacher forcing)"
# Two captions of 6 ids over 7 words, starting with <start> (1). No caption's next word is
# the word the scripted decoder predicts, so feeding the prediction is seen at once.
TEACHER_CAPTIONS = np.array([[1, 5, 2, 6, 3, 4], [1, 3, 5, 2, 0, 0]], dtype="int64")
TEACHER_FEATURES = np.random.default_rng(41).uniform(0, 2, (2, 4, 3)).astype("float32")
TEACHER_START_STATE = np.array([[0.5, -1.0, 0.25], [0.25, 2.0, -0.5]], dtype="float32")


class ScriptedDecoder:
    """Stands in for the RNN decoder in the teacher-forcing check, with predictable answers.

    Its new state counts the steps and accumulates the words and features it was given; its
    logits encode that state, and their argmax is (word + 3) mod 7, so the stacked logits
    show which words were fed, in which order, with which state. Eager calls are recorded.
    """

    vocab_size, units = 7, 3

    def __init__(self):
        self.calls: list[dict] = []

    def reset_state(self, batch_size):
        return tf.constant(TEACHER_START_STATE)

    def __call__(self, word_ids, features, hidden, training=None):
        hidden, features = tf.cast(hidden, "float32"), tf.cast(features, "float32")
        if features.shape.rank != 3:
            raise ValueError("the decoder takes (word_ids, features, hidden): features of "
                             "shape (batch, regions, embedding_dim), got shape "
                             f"{tuple(features.shape)}")
        if hidden.shape.rank != 2 or hidden.shape[1] != self.units:
            raise ValueError("the decoder takes (word_ids, features, hidden): a state of "
                             f"shape (batch, {self.units}), got shape {tuple(hidden.shape)}")
        ids = tf.reshape(tf.cast(word_ids, "float32"), [tf.shape(hidden)[0], -1])
        word = tf.reduce_sum(ids[:, :1], axis=1)  # any shape still gives one id per image
        state = tf.stack([hidden[:, 0] + 1.0, 0.5 * hidden[:, 1] + word,
                          0.9 * hidden[:, 2] + tf.reduce_mean(features, axis=[1, 2])], axis=1)
        predicted = tf.math.floormod(tf.cast(word, "int32") + 3, self.vocab_size)
        logits = (10.0 * tf.one_hot(predicted, self.vocab_size) + state[:, :1]
                  + 0.01 * tf.range(self.vocab_size, dtype="float32") * state[:, 1:2])
        attention = tf.ones_like(features[:, :, :1]) / tf.cast(tf.shape(features)[1], "float32")
        if tf.executing_eagerly():
            self.calls.append({"shape": tuple(np.shape(word_ids)),
                               "ids": np.asarray(word_ids), "hidden": np.asarray(hidden),
                               "features": np.asarray(features), "logits": logits.numpy(),
                               "state": state.numpy()})
        return logits, state, attention


def _teacher_forcing_steps(calls: list[dict], length: int) -> None:
    """The eager run's recorded steps: their number, words, states and features."""
    exercise, captions = TEACHER_EXERCISE, TEACHER_CAPTIONS
    batch = len(captions)
    steps = len(calls)
    if steps != length - 1:
        how = ("one too many" if steps == length else "too many" if steps > length
               else "too few")
        _fail(exercise, f"teacher_forcing runs {steps} decoder steps for captions of length "
                        f"{length}, {how}: every word after the first is predicted once, from "
                        "the word before it: range(1, length)")
    for step, call in enumerate(calls, 1):
        if call["shape"] == (batch,):
            _fail(exercise, f"the decoder is fed word ids of shape {call['shape']}; it takes "
                            "(batch, 1): slice captions[:, position - 1:position], not "
                            "captions[:, position - 1]")
        if call["shape"] != (batch, 1):
            _fail(exercise, f"step {step} feeds word ids of shape {call['shape']}; the decoder "
                            "takes (batch, 1): captions[:, position - 1:position]")
    fed = [call["ids"].reshape(batch) for call in calls]
    if not all(np.array_equal(ids, captions[:, step]) for step, ids in enumerate(fed)):
        if all(np.array_equal(ids, captions[:, step + 1]) for step, ids in enumerate(fed)):
            _fail(exercise, "each step is fed captions[:, position], the word it must predict, "
                            "so the decoder sees the answer: feed the word before it, "
                            "captions[:, position - 1:position]")
        predictions = [captions[:, 0]] + [call["logits"].argmax(-1) for call in calls[:-1]]
        if all(np.array_equal(a, b) for a, b in zip(fed, predictions, strict=True)):
            _fail(exercise, "each step is fed the word the decoder predicted (the argmax of its "
                            "logits): teacher forcing feeds the true previous word, "
                            "captions[:, position - 1:position]")
        step = next(step for step, ids in enumerate(fed)
                    if not np.array_equal(ids, captions[:, step]))
        _fail(exercise, f"step {step + 1} is fed the ids {fed[step].tolist()}; teacher forcing "
                        f"feeds the true previous word, captions[:, {step}] = "
                        f"{captions[:, step].tolist()}")
    states = [TEACHER_START_STATE] + [call["state"] for call in calls[:-1]]
    for step, (call, state) in enumerate(zip(calls, states, strict=True), 1):
        if not _close(call["hidden"].astype("float64"), state.astype("float64")):
            if step == 1:
                _fail(exercise, "the first step does not start from decoder.reset_state(...)'s "
                                "state")
            _fail(exercise, "the state is not carried: give each step the state the previous "
                            "step returned, logits, hidden, _ = decoder(..., hidden)")
        if not _close(call["features"].astype("float64"), TEACHER_FEATURES.astype("float64")):
            _fail(exercise, f"step {step} is not given image_features, the same for every step")


def teacher_forcing(fn: Callable) -> None:
    """teacher_forcing(decoder, image_features, captions): one decoder step per position
    after the first, fed the true previous word (batch, 1) and the carried state, logits
    stacked to (batch, length - 1, vocab); eagerly on NumPy captions and in a tf.function
    on a tensor, as train_step calls it."""
    exercise, captions = TEACHER_EXERCISE, TEACHER_CAPTIONS
    batch, length = captions.shape
    vocab_size = ScriptedDecoder.vocab_size
    decoder = ScriptedDecoder()
    try:
        result = fn(decoder, tf.constant(TEACHER_FEATURES), captions.copy())
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        for call in decoder.calls:
            if call["shape"] == (batch,):
                _fail(exercise, f"the decoder is fed word ids of shape {call['shape']}; it "
                                "takes (batch, 1): slice captions[:, position - 1:position], "
                                "not captions[:, position - 1]", error)
        _fail(exercise, f"teacher_forcing raised {_one_line(error)}", error)
    _teacher_forcing_steps(decoder.calls, length)
    if result is None:
        _fail(exercise, "teacher_forcing returns None: return the logits stacked along the "
                        "time axis, ops.stack(all_logits, axis=1)")
    if isinstance(result, list | tuple):
        _fail(exercise, f"teacher_forcing returns a {type(result).__name__}: stack the logits "
                        "into one tensor, ops.stack(all_logits, axis=1)")
    arrays = _arrays([result])
    if arrays is None:
        _fail(exercise, f"teacher_forcing should return a tensor of logits, not a "
                        f"{type(result).__name__}")
    [logits] = arrays
    wanted = (batch, length - 1, vocab_size)
    if logits.shape == (length - 1, batch, vocab_size):
        _fail(exercise, f"the logits are stacked along the first axis, shape {logits.shape}: "
                        "stack along axis=1 for (batch, length - 1, vocab)")
    if logits.shape != wanted:
        _fail(exercise, f"the result has shape {logits.shape}; expected (batch, length - 1, "
                        f"vocab) = {wanted}")
    expected = np.stack([call["logits"] for call in decoder.calls], axis=1).astype("float64")
    if not _close(logits, expected):
        _fail(exercise, "the result is not the steps' logits in order: keep each step's logits "
                        "and stack them along axis=1")

    def train_step_like(features, captions):
        return fn(ScriptedDecoder(), features, captions)

    in_graph = ("the value is right, but teacher_forcing fails inside a tf.function as in "
                "train_step, where captions is a tensor: use keras.ops or tf, not NumPy")
    try:
        graph_logits = tf.function(train_step_like)(tf.constant(TEACHER_FEATURES),
                                                    tf.constant(captions))
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        _fail(exercise, f"{in_graph}; it raised {_one_line(error, 100)}", error)
    graph_logits = (_arrays([graph_logits]) or [None])[0]
    if graph_logits is None or not _close(graph_logits, expected):
        _fail(exercise, f"{in_graph}; there it gives other logits")
    _pass(exercise, "each step fed the true previous word and the carried state; logits "
                    "stacked to (batch, length - 1, vocab)")


# Lesson 3, Transformer captioning: Exercises 1 to 6 ---------------------------------------------

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
IN_A_TF_FUNCTION = "fails inside a tf.function as in training: use keras.ops, not NumPy; it raised "


def _as_float32(array) -> tf.Tensor:
    return tf.constant(np.asarray(array, dtype="float64").astype("float32"))


def _forward(layer, *inputs, graph: bool = False):
    """The layer called on these inputs as the model calls it, eagerly or in a tf.function."""
    def forward(*tensors):
        return layer(*tensors, training=False)

    return (tf.function(forward) if graph else forward)(*(_as_float32(x) for x in inputs))


def _layer_output(exercise: str, result, hint: str) -> np.ndarray:
    """The layer's output as a float64 array, or a failure naming what it returned instead."""
    if result is None:
        _fail(exercise, f"the layer returns None: return {hint}")
    if isinstance(result, tuple | list | dict):
        _fail(exercise, f"the layer returns a {type(result).__name__} of {len(result)} items: "
                        f"return one tensor, {hint}")
    arrays = _arrays([result])
    if arrays is None:
        _fail(exercise, f"the layer returns a {type(result).__name__}: return {hint}")
    return arrays[0]


def _new_layer(exercise: str, layer_cls, sublayers: tuple[str, ...], **settings):
    name = getattr(layer_cls, "__name__", "the layer class")
    arguments = ", ".join(f"{key}={value}" for key, value in settings.items())
    layer = _run(exercise, f"{name}({arguments})", layer_cls, **settings)
    missing = [sublayer for sublayer in sublayers if not hasattr(layer, sublayer)]
    if missing:
        _fail(exercise, f"the layer has no {', '.join(missing)}: keep the __init__ the lesson "
                        "gives and write only the marked lines")
    return layer


def _residual_variants(x: np.ndarray, attention: np.ndarray, prenormed_attention: np.ndarray,
                       layernorm: Callable) -> dict[str, np.ndarray]:
    """What a layer gives with each typical mistake around its attention and layer norm."""
    return {
        "no_residual": layernorm(attention),
        "no_norm": x + attention,
        "norm_before_add": x + layernorm(attention),
        "pre_norm:sum": x + prenormed_attention,
        "pre_norm:normed_sum": layernorm(x) + prenormed_attention,
        "attention_only": attention,
    }


def _same_as(output: np.ndarray, variants: dict[str, np.ndarray]) -> str | None:
    """The name (before any ":") of the first variant `output` equals, if any."""
    return next((name.partition(":")[0] for name, variant in variants.items()
                 if _close(output, variant)), None)


def _in_a_graph(exercise: str, layer, inputs: tuple, expected: np.ndarray) -> None:
    """The layer gives `expected` inside a tf.function too, as when Keras trains it."""
    try:
        output = _forward(layer, *inputs, graph=True)
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        _fail(exercise, f"the output is right, but the layer {IN_A_TF_FUNCTION}"
                        f"{_one_line(error, 100)}", error)
    output = (_arrays([output]) if not isinstance(output, tuple | list) else None) or [None]
    if output[0] is None or not _close(output[0], expected):
        _fail(exercise, "the output is right when called eagerly, but not inside a tf.function "
                        "as in training: use keras.ops on the tensors, not NumPy or Python "
                        "values")


# Exercise 1: causal self-attention

def _self_attention_references(layer, x: np.ndarray) -> dict[str, np.ndarray] | None:
    """The right output (key "correct") and each mistake's, from the layer's own mha and
    layernorm; None if they cannot compute it."""
    try:
        def layernorm(a):
            return np.asarray(layer.layernorm(_as_float32(a), training=False), dtype="float64")

        def attend(q):
            q = _as_float32(q)
            return np.asarray(layer.mha(query=q, value=q, use_causal_mask=True, training=False),
                              dtype="float64")

        attention = attend(x)
        return {"correct": layernorm(x + attention),
                **_residual_variants(x, attention, attend(layernorm(x)), layernorm)}
    except Exception:  # noqa: BLE001 (the layers do not fit this computation)
        return None


def causal_self_attention(layer_cls) -> None:
    """CausalSelfAttention.call: layernorm(x + mha(query=x, value=x, use_causal_mask=True)).

    The reference is computed from the layer's own mha and layernorm, so any formulation
    passes (positional arguments, an explicit lower-triangular attention_mask, x + attention).
    Causality is seen directly: changing the later words must leave the earlier outputs."""
    exercise = SELF_ATTENTION_EXERCISE
    x, other_x = WORDS[0], WORDS[1]
    hint = "self.layernorm(self.add([x, attention]))"
    layer = _new_layer(exercise, layer_cls, ("mha", "layernorm"), **ATTENTION_SETTINGS)
    _run(exercise, "the layer", _forward, layer, other_x)  # builds the sublayers it uses
    if _self_attention_references(layer, x) is None:  # and builds those it skips
        _fail(exercise, "the layer's own self.mha and self.layernorm cannot compute "
                        "layernorm(x + mha(query=x, value=x)) on words of 8 values: keep the "
                        "__init__ the lesson gives")
    _fixed_weights(layer, seed=51)
    output = _layer_output(exercise, _run(exercise, "the layer", _forward, layer, x), hint)
    if output.shape != x.shape:
        _fail(exercise, f"the layer returns shape {output.shape}; expected (batch, words, "
                        f"features) = {x.shape}, the shape of its input")
    references = _self_attention_references(layer, x)
    if not _close(output, references.pop("correct")):
        changed = x.copy()
        changed[:, EARLIER_WORDS:] = other_x[:, EARLIER_WORDS:]
        later_changed = _layer_output(exercise, _run(exercise, "the layer", _forward, layer,
                                                     changed), hint)
        if not _close(later_changed[:, :EARLIER_WORDS], output[:, :EARLIER_WORDS]):
            _fail(exercise, "later words leak into earlier positions: pass use_causal_mask=True "
                            "so that each word attends only to itself and the words before it")
        mistake = _same_as(output, references)
        if mistake:
            _fail(exercise, RESIDUAL_MISTAKES[mistake])
        _fail(exercise, "the output is not self.layernorm(x + self.mha(query=x, value=x, "
                        "use_causal_mask=True)) computed with the layer's own mha and layernorm")
    _in_a_graph(exercise, layer, (x,), output)
    _pass(exercise, "layernorm(x + causal self-attention); no word sees a later one")


# Exercise 2: cross-attention to the image

CROSS_SWAPPED = ("query and value are swapped: the output has one row per region instead of "
                 "one per word; the words ask, self.mha(query=x, value=context, ...)")


def _regions_ask(scores) -> bool:
    """Whether these attention scores have one row per region, one column per word."""
    words, regions = WORDS.shape[2], REGIONS.shape[2]
    return np.ndim(scores) == 4 and tuple(np.shape(scores)[-2:]) == (regions, words)


def _kept_scores(exercise: str, layer, attribute: str = "last_attention_scores"):
    """The layer's kept attention scores as an array, or None when it keeps none."""
    scores = getattr(layer, attribute, None)
    if scores is None:
        return None
    if isinstance(scores, tuple | list):
        arrays = None
    else:
        try:
            arrays = _arrays([scores])
        except Exception:  # noqa: BLE001 (a symbolic tensor, kept from Keras's tracing call)
            _fail(exercise, f"{attribute} are stale, an earlier call's (a tensor from the "
                            f"call Keras traces to build the layer): set self.{attribute} in "
                            "call, on every call")
    if arrays is None:
        _fail(exercise, f"{attribute} is a {type(scores).__name__}: keep the scores tensor the "
                        "attention returns with return_attention_scores=True")
    return arrays[0]


def _cross_output(exercise: str, layer, x: np.ndarray, context: np.ndarray) -> np.ndarray:
    hint = "self.layernorm(self.add([x, attention]))"
    try:
        result = _forward(layer, x, context)
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        if isinstance(error, ValueError | TypeError) and re.search(r"unpack|iterat", str(error)):
            _fail(exercise, "self.mha(...) returns the attention alone unless asked for the "
                            "scores too: pass return_attention_scores=True to get (attention, "
                            "scores)", error)
        kept = getattr(layer, "last_attention_scores", None)
        scores = _locals_where_raised(error, type(layer).call).get("scores", kept)
        if _regions_ask(scores) or _regions_ask(kept):
            _fail(exercise, CROSS_SWAPPED, error)
        _fail(exercise, f"the layer raised {_one_line(error)}", error)
    return _layer_output(exercise, result, hint)


def _cross_shapes(exercise: str, layer, output: np.ndarray, x: np.ndarray) -> None:
    """The output's and the kept scores' shapes show a swap of words and regions."""
    if output.ndim == 3 and output.shape[1] == REGIONS.shape[2]:
        _fail(exercise, CROSS_SWAPPED)
    if output.shape != x.shape:
        _fail(exercise, f"the layer returns shape {output.shape}; expected (batch, words, "
                        f"features) = {x.shape}, the shape of the text x")
    scores = _kept_scores(exercise, layer)
    if scores is not None and scores.ndim == 4 and scores.shape[-1] == x.shape[1]:
        _fail(exercise, "the scores have one column per word, so the words attend to each "
                        "other: the value is the image, self.mha(query=x, value=context, ...)")


def _cross_attention_references(layer, x: np.ndarray,
                                context: np.ndarray) -> dict[str, np.ndarray] | None:
    """The right output ("correct") and scores ("scores"), and each mistake's output, from
    the layer's own mha and layernorm; None if they cannot compute it."""
    try:
        def layernorm(a):
            return np.asarray(layer.layernorm(_as_float32(a), training=False), dtype="float64")

        def attend(q, **options):
            return layer.mha(query=_as_float32(q), value=_as_float32(context),
                             return_attention_scores=True, training=False, **options)

        attention, scores = (np.asarray(a, dtype="float64") for a in attend(x))
        prenormed = np.asarray(attend(layernorm(x))[0], dtype="float64")
        causal = np.asarray(attend(x, use_causal_mask=True)[0], dtype="float64")
        return {"correct": layernorm(x + attention), "scores": scores,
                "causal": layernorm(x + causal),
                **_residual_variants(x, attention, prenormed, layernorm)}
    except Exception:  # noqa: BLE001 (the layers do not fit this computation)
        return None


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
    layer = _new_layer(exercise, layer_cls, ("mha", "layernorm"), **ATTENTION_SETTINGS)
    built = _cross_output(exercise, layer, other_x, other_context)  # builds what it uses
    _cross_shapes(exercise, layer, built, other_x)
    if _cross_attention_references(layer, x, context) is None:  # and builds those it skips
        _fail(exercise, "the layer's own self.mha and self.layernorm cannot compute "
                        "layernorm(x + mha(query=x, value=context)) for words of 8 values and "
                        "regions of 6: the words are the query, the image regions the value")
    _fixed_weights(layer, seed=52)
    _cross_output(exercise, layer, other_x, other_context)
    earlier_scores = _kept_scores(exercise, layer)
    output = _cross_output(exercise, layer, x, context)
    scores = _kept_scores(exercise, layer)
    _cross_shapes(exercise, layer, output, x)
    references = _cross_attention_references(layer, x, context)
    if not _close(output, references.pop("correct")):
        if _close(output, references["causal"]):
            _fail(exercise, "a causal mask is used: cross-attention lets every word look at "
                            "every region; leave out use_causal_mask")
        mistake = _same_as(output, references)
        if mistake:
            _fail(exercise, RESIDUAL_MISTAKES[mistake])
        _fail(exercise, "the output is not self.layernorm(x + attention) with attention = "
                        "self.mha(query=x, value=context), from the layer's own mha and "
                        "layernorm")
    if scores is None:
        _fail(exercise, "the scores are not kept: self.last_attention_scores is missing or None; "
                        "get them with return_attention_scores=True and set "
                        "self.last_attention_scores = scores")
    wanted = (batch, heads, words, regions)
    if scores.shape != wanted:
        _fail(exercise, f"last_attention_scores has shape {scores.shape}; expected (batch, "
                        f"heads, words, regions) = {wanted}: keep the scores self.mha returns "
                        "with return_attention_scores=True")
    if not _close(scores, references["scores"]):
        if (scores == 0).any():
            _fail(exercise, "some attention scores are 0, as with a causal mask: cross-attention "
                            "lets every word look at every region; leave out use_causal_mask")
        if earlier_scores is not None and _close(scores, earlier_scores):
            _fail(exercise, "last_attention_scores are stale, an earlier call's: set "
                            "self.last_attention_scores = scores in call, on every call")
        _fail(exercise, "last_attention_scores are not the scores of this call's "
                        "self.mha(query=x, value=context, return_attention_scores=True)")
    _in_a_graph(exercise, layer, (x, context), output)
    _pass(exercise, "layernorm(x + attention over the image regions); last scores kept")


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
    hint = "self.feed_forward(text)"
    try:
        result = _forward(layer, text, image)  # positionally, as the Captioner calls it
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        if _regions_ask(getattr(layer.cross_attention, "last_attention_scores", None)):
            _fail(exercise, "the image and the text are swapped in the cross-attention: call "
                            "self.cross_attention(text, image), the words ask, the image answers",
                  error)
        if isinstance(error, AttributeError) and "last_attention_scores" in str(error):
            _fail(exercise, "self.cross_attention.last_attention_scores does not exist yet: the "
                            "cross-attention is skipped or runs after it is read; call "
                            "self.cross_attention(text, image) before reading its scores", error)
        _fail(exercise, f"the layer raised {_one_line(error)}", error)
    return _layer_output(exercise, result, hint)


def _decoder_layer_references(layer, text: np.ndarray,
                              image: np.ndarray) -> dict[str, np.ndarray] | None:
    """The right output ("correct") and scores ("scores"), and each mistake's output, from
    the layer's own sublayers (the lesson's classes); None if they cannot compute it."""
    def self_attention(t):
        return layer.self_attention(t, training=False)

    def cross(t):
        return layer.cross_attention(t, _as_float32(image), training=False)

    def feed_forward(t):
        return layer.feed_forward(t, training=False)

    try:
        t = _as_float32(text)
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
    layer = _new_layer(exercise, layer_cls, DECODER_SUBLAYERS, **DECODER_LAYER_SETTINGS)
    built = _decoder_layer_output(exercise, layer, other_text, other_image)  # builds what it uses
    if built.shape != other_text.shape:
        _fail(exercise, f"the layer returns shape {built.shape}; expected (batch, words, "
                        f"units) = {other_text.shape}, the shape of the text")
    scores = _kept_scores(exercise, layer.cross_attention)
    if scores is not None and scores.ndim == 4 and scores.shape[-1] == words:
        _fail(exercise, "the cross-attention is given the text as its context: pass the image, "
                        "self.cross_attention(text, image)")
    if _decoder_layer_references(layer, text, image) is None:  # and builds the others
        _fail(exercise, "the layer's own self_attention, cross_attention and feed_forward "
                        "cannot compute feed_forward(cross_attention(self_attention(text), "
                        "image)): keep the __init__ the lesson gives; check Exercises 1 and 2")
    _fixed_weights(layer, seed=53)
    _decoder_layer_output(exercise, layer, other_text, other_image)
    earlier_scores = _kept_scores(exercise, layer)
    output = _decoder_layer_output(exercise, layer, text, image)
    scores = _kept_scores(exercise, layer)
    references = _decoder_layer_references(layer, text, image)
    if not _close(output, references.pop("correct")):
        mistake = _same_as(output, references)
        if mistake:
            _fail(exercise, DECODER_LAYER_MISTAKES[mistake])
        _fail(exercise, "the output is not self.feed_forward(self.cross_attention("
                        "self.self_attention(text), image)), computed with the layer's own "
                        "sublayers")
    keep = ("self.last_attention_scores = self.cross_attention.last_attention_scores, after "
            "the cross-attention")
    if scores is None:
        _fail(exercise, f"the decoder layer keeps no scores: set {keep}")
    if not _close(scores, references["scores"]):
        if earlier_scores is not None and _close(scores, earlier_scores):
            _fail(exercise, f"last_attention_scores are stale, an earlier call's: set {keep}, "
                            "on every call")
        _fail(exercise, "last_attention_scores are not the cross-attention's scores of this "
                        f"call: set {keep}")
    _in_a_graph(exercise, layer, (text, image), output)
    _pass(exercise, "self-attention, cross-attention to the image, feed-forward, in order; "
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
    except IndexError as error:
        if isinstance(banned, tuple):
            _fail(exercise, f"log_frequency_bias raised {_one_line(error, 80)}: banned_ids is a "
                            "tuple, which indexes several axes; index with a list, "
                            "counts[list(banned_ids)]", error)
        _fail(exercise, f"log_frequency_bias raised {_one_line(error)}", error)
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        _fail(exercise, f"log_frequency_bias raised {_one_line(error)}", error)
    if result is None:
        _fail(exercise, "log_frequency_bias returns None: return the array of biases")
    arrays = _arrays([result])
    if arrays is None:
        _fail(exercise, f"return an array of numbers, not a {type(result).__name__}")
    return arrays[0]


def log_frequency_bias(fn: Callable) -> None:
    """log_frequency_bias(counts, banned_ids): log-probabilities of the tokens among the
    allowed ones, up to a constant (softmax of the biases gives the frequencies), and a large
    finite negative number for banned and never-seen tokens; the caller's counts unchanged."""
    exercise = BIAS_EXERCISE
    counts = BIAS_COUNTS.copy()
    vocab_size = len(counts)
    banned = np.isin(np.arange(vocab_size), BIAS_BANNED)
    unseen = (counts == 0) & ~banned
    allowed = ~banned & ~unseen
    probabilities = np.where(allowed, counts, 0) / counts[allowed].sum()
    result = _bias_result(fn, counts, BIAS_BANNED)
    if not np.array_equal(counts, BIAS_COUNTS):
        _fail(exercise, "the caller's counts are changed in place: work on a copy, "
                        "np.array(counts, dtype='float64')")
    if result.shape != (vocab_size,):
        _fail(exercise, f"the result has shape {result.shape}; expected ({vocab_size},), one "
                        "bias per token of the vocabulary")
    kept = result[allowed]
    if (kept >= 0).all() and (kept <= 1).all() and np.isclose(kept.sum(), 1, atol=1e-3):
        _fail(exercise, "these are probabilities, not log-probabilities: take np.log of them; "
                        "the output layer adds the bias to logits")
    if np.isneginf(result).any():
        _fail(exercise, f"some biases are -inf (ids {np.flatnonzero(np.isneginf(result)).tolist()}"
                        "): use a large finite negative number such as -1e9 (with -inf the "
                        "softmax gives NaN losses and gradients)")
    if not np.isfinite(result).all():
        _fail(exercise, "some biases are NaN or infinite: take the log only where counts > 0, "
                        "np.log(p, out=np.full(len(counts), -1e9), where=counts > 0)")
    if (result[banned] > BANNED_AT_MOST).any():
        _fail(exercise, f"banned tokens are not banned: ids {BIAS_BANNED} get "
                        f"{np.round(result[banned], 2).tolist()}; set counts[list(banned_ids)] "
                        "= 0 before normalising (padding would keep its huge count), so they "
                        "get -1e9")
    if (result[unseen] > BANNED_AT_MOST).any():
        _fail(exercise, f"never-seen tokens get {np.round(result[unseen], 2).tolist()}: give "
                        "every token with count 0 a large negative number, -1e9, as the banned "
                        "ones")
    if (kept <= BANNED_AT_MOST).any():
        wrongly = np.flatnonzero(allowed & (result <= BANNED_AT_MOST)).tolist()
        _fail(exercise, f"ids {wrongly} are banned though they are seen and not in banned_ids "
                        f"{BIAS_BANNED}: ban exactly banned_ids and the never-seen tokens")
    softmax = np.exp(kept - kept.max())
    if not np.allclose(softmax / softmax.sum(), probabilities[allowed], rtol=1e-4, atol=1e-9):
        _fail(exercise, "softmax(biases) is not the tokens' frequencies: the bias of a token is "
                        "log(count / sum of the allowed counts), np.log, the natural log")
    as_list = _bias_result(fn, BIAS_COUNTS.copy(), list(BIAS_BANNED))
    if as_list.shape != result.shape or not np.allclose(as_list, result):
        _fail(exercise, "banned_ids given as a list gives other biases than as a tuple: use "
                        "list(banned_ids) to index")
    _pass(exercise, "log-frequencies of the allowed tokens; banned and unseen ones at "
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
    labels, logits = tf.constant(CAPTION_LABELS), tf.constant(CAPTION_LOGITS)

    def cross_entropy(predictions, from_logits=True):
        return keras.losses.sparse_categorical_crossentropy(
            labels, predictions, from_logits=from_logits).numpy().astype("float64")

    def masked_mean(per_token, mask):
        return float((per_token * mask).sum() / mask.sum())

    per_token = cross_entropy(logits)
    real = ((CAPTION_LABELS != 0) & (CAPTION_LABELS != CAPTION_UNKNOWN_ID)).astype("float64")
    return {
        "correct": masked_mean(per_token, real),
        "unk_counted": masked_mean(per_token, CAPTION_LABELS != 0),
        "padding_counted": masked_mean(per_token, CAPTION_LABELS != CAPTION_UNKNOWN_ID),
        "no_mask": float(per_token.mean()),
        "unmasked_sum": float(per_token.sum() / real.sum()),
        "mean_of_masked": float((per_token * real).mean()),
        "summed": float((per_token * real).sum()),
        "per_caption": float(((per_token * real).sum(1) / real.sum(1)).mean()),
        "end_excluded": masked_mean(per_token, CAPTION_LABELS > 3),
        "logits_as_probabilities": masked_mean(cross_entropy(logits, from_logits=False), real),
        "softmax_twice": masked_mean(cross_entropy(keras.ops.softmax(logits).numpy()), real),
    }


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


def _scalar(exercise: str, name: str, result, what: str) -> float:
    if result is None:
        _fail(exercise, f"{name} returns None: return {what}")
    arrays = _arrays([result]) if not isinstance(result, tuple | list) else None
    if arrays is None:
        _fail(exercise, f"return one number (a scalar), not a {type(result).__name__}")
    if arrays[0].shape != ():
        _fail(exercise, f"return one number (a scalar), not shape {arrays[0].shape}")
    return float(arrays[0])


def _caption_inputs(dtype: str) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.constant(CAPTION_LABELS, dtype=dtype), tf.constant(CAPTION_LOGITS)


def _judge_value(exercise: str, value: float, variants: dict[str, float],
                 mistakes: dict[str, str], name: str) -> None:
    expected = variants["correct"]
    if np.isclose(value, expected, rtol=1e-4):
        return
    for mistake, wrong in variants.items():
        if mistake != "correct" and np.isclose(value, wrong, rtol=1e-4, atol=1e-6):
            _fail(exercise, mistakes[mistake])
    if name == "masked_loss" and abs(value) > 1e6:
        _fail(exercise, f"the loss is {value:.3g}: labels the output layer bans (padding, "
                        "[UNK]) cost about 1e9 each; leave them out of the mask")
    _fail(exercise, f"expected {expected:.4f} on a fixed batch, got {value:.4f}")


def _judge_in_a_graph(exercise: str, fn: Callable, name: str, expected: float) -> None:
    for dtype in ("int64", "int32"):
        try:
            value = tf.function(fn)(*_caption_inputs(dtype))
        except Exception as error:  # noqa: BLE001 (any mistake in the answer)
            _fail(exercise, f"the value is right, but {name} {IN_A_TF_FUNCTION}"
                            f"{_one_line(error, 100)}", error)
        arrays = _arrays([value]) if not isinstance(value, tuple | list) else None
        if arrays is None or arrays[0].shape != () or not np.isclose(arrays[0], expected,
                                                                       rtol=1e-4):
            _fail(exercise, f"the value is right eagerly, but {name} gives another inside a "
                            "tf.function as in training: use keras.ops, not NumPy")


def _caption_loss(loss_fn: Callable) -> None:
    exercise, name = CAPTION_LOSS_EXERCISE, "masked_loss"
    variants = caption_loss_variants()
    for dtype in ("int64", "int32"):  # Keras hands the labels in either
        result = _run(exercise, f"{name} on {dtype} labels", loss_fn, *_caption_inputs(dtype))
        value = _scalar(exercise, name, result, "the averaged loss")
        if np.isnan(value):
            _fail(exercise, "the loss is NaN: look for a division by zero or the log of 0")
        _judge_value(exercise, value, variants, CAPTION_LOSS_MISTAKES, name)
    _judge_in_a_graph(exercise, loss_fn, name, variants["correct"])
    _pass(exercise, "cross-entropy from logits averaged over real words; padding and [UNK] "
                    "left out")


def _caption_accuracy(accuracy_fn: Callable) -> None:
    exercise, name = CAPTION_ACC_EXERCISE, "masked_acc"
    variants = caption_accuracy_variants()
    vocab_size = CAPTION_VOCAB_SIZE
    for dtype in ("int64", "int32"):
        try:
            result = accuracy_fn(*_caption_inputs(dtype))
        except Exception as error:  # noqa: BLE001 (any mistake in the answer)
            text = str(error)
            if "int32" in text and "int64" in text:
                _fail(exercise, f"with {dtype} labels {name} raised {type(error).__name__} "
                                "comparing int64 with int32: cast the argmax and the labels to "
                                "one integer type, ops.cast(ops.argmax(logits, axis=-1), "
                                "labels.dtype)", error)
            if re.search(rf"\b{vocab_size}\b", text) and re.search("shape", text, re.I):
                _fail(exercise, "the argmax runs over the wrong axis, so the predictions have "
                                "one value per vocabulary word: take ops.argmax(logits, "
                                "axis=-1), one prediction per position", error)
            _fail(exercise, f"{name} on {dtype} labels raised {_one_line(error)}", error)
        value = _scalar(exercise, name, result, "the share of real words predicted right")
        _judge_value(exercise, value, variants, CAPTION_ACC_MISTAKES, name)
    _judge_in_a_graph(exercise, accuracy_fn, name, variants["correct"])
    _pass(exercise, "share of real words whose argmax is the label; padding and [UNK] left out")


def masked_loss_and_accuracy(loss_fn: Callable, accuracy_fn: Callable) -> None:
    """masked_loss (exercise 5), checked fully first, then masked_acc (exercise 6): on labels
    with padding and [UNK] and logits with padding, [UNK] and [START] banned, both label
    dtypes Keras hands in (int32, int64), eagerly and in a tf.function."""
    _caption_loss(loss_fn)
    _caption_accuracy(accuracy_fn)
