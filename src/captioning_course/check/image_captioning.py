"""The self-checks of the main lesson, image_captioning: exercises 1 to 5.

`masked_loss` serves every lesson with a masked loss, under that lesson's exercise name.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from captioning_course.check.core import (
    check_in_a_graph,
    close,
    fail,
    judge,
    locals_where_raised,
    loss_as_fit_calls,
    masked_loss_variants,
    one_line,
    print_pass,
    run_answer,
    same_number,
    scalar,
)

# Exercise 1 ---------------------------------------------------------------------------------

def tokenizer(layer, vocab_size: int, caption_length: int) -> None:
    """The TextVectorization layer: vocabulary size, standardisation, output length."""
    exercise = "Exercise 1 (tokenizer)"
    if not isinstance(layer, keras.layers.TextVectorization):
        fail(exercise, f"expected a layers.TextVectorization, got {type(layer).__name__}")
    config = layer.get_config()
    if config["max_tokens"] != vocab_size:
        fail(exercise, f"max_tokens is {config['max_tokens']}; it should be VOCAB_SIZE "
                       f"({vocab_size}), the number of words to keep")
    if config["output_sequence_length"] != caption_length:
        fail(exercise, f"output_sequence_length is {config['output_sequence_length']}; set it "
                       f"to caption_length ({caption_length}), the length measured above, so "
                       "every caption is padded to the same length")
    vocabulary = layer.get_vocabulary()
    if len(vocabulary) <= 2:
        fail(exercise, "the vocabulary is empty: call tokenizer.adapt(...) on the captions")
    if "<start>" not in vocabulary or "<end>" not in vocabulary:
        standardize = config["standardize"]
        if callable(standardize):
            fail(exercise, "'<start>' and '<end>' are not in the vocabulary: your standardize "
                           "function strips '<' and '>'; leave them out of the characters it "
                           "removes")
        if isinstance(standardize, str) and "strip_punctuation" in standardize:
            fail(exercise, "'<start>' and '<end>' are not in the vocabulary: the default "
                           "standardisation strips '<' and '>'; the layer must use the lesson's "
                           "standardize function")
        fail(exercise, "'<start>' and '<end>' are not in the vocabulary: adapt the tokenizer "
                       "on the captions with add_start_end(...) applied")
    # A stray "." is its own word after splitting, so it shows even when "dog" is unknown.
    tidy, messy = run_answer(exercise, "the tokenizer", layer,
                             tf.constant(["<start> a dog <end>", "<start> A dog . <end>"])).numpy()
    if not np.array_equal(tidy, messy):
        fail(exercise, "'A dog .' and 'a dog' give different tokens: capitals or punctuation "
                       "survive; the layer must use the lesson's standardize function")
    print_pass(exercise, f"{len(vocabulary)} tokens, captions padded to {caption_length}")


# Exercise 2 ---------------------------------------------------------------------------------

def ds_fn(create_ds_fn: Callable, tokenizer_layer) -> None:
    """create_ds_fn: ((image, tokens), target) with the target shifted left by one."""
    exercise = "Exercise 2 (create_ds_fn)"
    image = tf.fill([4, 4, 3], 0.5)
    caption = tf.constant("<start> a dog runs <end>")
    result = run_answer(exercise, "create_ds_fn", create_ds_fn, image, caption)
    try:
        (image_out, tokens), target = result
    except (TypeError, ValueError):
        fail(exercise, "return ((image, tokens), target): a pair whose first item is a pair")
    tokens, target = np.asarray(tokens), np.asarray(target)
    expected_tokens = tokenizer_layer(caption).numpy()
    if not np.array_equal(np.asarray(image_out), image.numpy()):
        fail(exercise, "the image must pass through unchanged as the first input")
    if not np.array_equal(tokens, expected_tokens):
        fail(exercise, "the second input must be tokenizer(caption), the caption's token ids")
    if target.shape != tokens.shape:
        fail(exercise, f"the target has shape {target.shape} but the tokens {tokens.shape}: "
                       "the target is as long as the tokens: one token leaves at the front, "
                       "one padding id joins at the end")
    if np.array_equal(target, tokens):
        fail(exercise, "the target is not shifted: it equals the input; position t must hold "
                       "the token at t + 1")
    if np.array_equal(target, np.concatenate([[0], tokens[:-1]])):
        fail(exercise, "the target is shifted right; it must move left: position t holds the "
                       "token at t + 1")
    if np.array_equal(target, np.roll(tokens, -1)) and tokens[0] != 0:
        fail(exercise, "the last target is the <start> token wrapped around by tf.roll; the "
                       "end must be padding 0")
    expected = np.concatenate([tokens[1:], [0]])
    if not np.array_equal(target, expected):
        fail(exercise, f"the target should be {expected[:8].tolist()}..., got "
                       f"{target[:8].tolist()}...: every token one place to the left, then "
                       "padding")
    # make_batches calls it inside tf.data, where there are no NumPy values to take.
    try:
        tf.data.Dataset.from_tensors((image, caption)).map(create_ds_fn)
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        fail(exercise, "the value is right, but create_ds_fn fails inside tf.data as in "
                       f"training: use TensorFlow ops, not NumPy; it raised {one_line(error)}",
             error)
    print_pass(exercise, "target is the input shifted left by one and padded with 0")


# Exercise 3 ---------------------------------------------------------------------------------

def _attend_outputs(exercise: str, attend: Callable, query: np.ndarray, value: np.ndarray):
    """attend's (context, weights) as arrays, or a failure naming what it returned instead."""
    result = run_answer(exercise, "attend", attend, tf.constant(query, dtype="float32"),
                        tf.constant(value, dtype="float32"))
    if result is None:
        fail(exercise, "attend returns None: return what decoder_attention(...) returns")
    if not isinstance(result, tuple | list) and hasattr(result, "shape"):
        fail(exercise, "attend returns a single tensor, the context only: call "
                       "decoder_attention with return_attention_scores=True so it returns "
                       "the weights too")
    both = ("attend should return two tensors, the context vectors and the attention "
            "weights, as decoder_attention(..., return_attention_scores=True) does")
    if not isinstance(result, tuple | list):
        fail(exercise, f"{both}; it returns a {type(result).__name__}")
    if len(result) != 2:
        fail(exercise, f"{both}; it returns {len(result)} items")
    try:
        context, weights = (np.asarray(item, dtype="float64") for item in result)
    except (TypeError, ValueError):
        fail(exercise, both)
    if any(item is None for item in result) or context.ndim != 3 or weights.ndim != 3:
        fail(exercise, f"{both}; it returns items of shapes {context.shape} and "
                       f"{weights.shape}")
    return context, weights


def _weighted_sum_of(context: np.ndarray, weights: np.ndarray, tensors: dict) -> str | None:
    """The name of the tensor whose rows, mixed by `weights`, give `context`."""
    for name, tensor in tensors.items():
        if (weights.ndim == 3 and weights.shape[0] == tensor.shape[0]
                and weights.shape[-1] == tensor.shape[1]):
            if close(context, weights @ tensor):
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
        fail(exercise, f"word_embedding should be a layers.Embedding, got "
                       f"{type(embedding).__name__}")
    if (embedding.input_dim, embedding.output_dim) != (vocab_size, attention_dim):
        fail(exercise, f"the Embedding maps {embedding.input_dim} ids to "
                       f"{embedding.output_dim} values; it should map the vocabulary "
                       f"(len(vocabulary) = {vocab_size} ids) to ATTENTION_DIM "
                       f"({attention_dim}) values")
    if not isinstance(gru, keras.layers.GRU):
        fail(exercise, f"decoder_gru should be a layers.GRU, got {type(gru).__name__}")
    if gru.units != attention_dim:
        fail(exercise, f"the GRU has {gru.units} units; use ATTENTION_DIM ({attention_dim}) "
                       "so its output can be added to the context vector")
    if not (gru.return_sequences or gru.return_state):
        fail(exercise, "the GRU needs return_sequences=True (a vector per word) and "
                       "return_state=True (the inference model carries the state)")
    if not gru.return_sequences:
        fail(exercise, "the GRU needs return_sequences=True: one output vector per word, "
                       "not only the last one")
    if not gru.return_state:
        fail(exercise, "the GRU needs return_state=True: the inference model carries the "
                       "state from one word to the next")

    rng = np.random.default_rng(0)
    scale = (9 / attention_dim) ** 0.25  # dot products of about unit size
    gru_output = rng.uniform(-1, 1, (2, words, attention_dim)) * scale
    features = rng.uniform(0, 1, (2, regions, attention_dim)) * scale
    context, weights = _attend_outputs(exercise, attend, gru_output, features)
    if not (np.isfinite(context).all() and np.isfinite(weights).all()):
        fail(exercise, "attend returns NaN or infinite values")
    inputs = {"image_features": features, "gru_output": gru_output}
    value = _weighted_sum_of(context, weights, inputs)
    if value is None and _weighted_sum_of(weights, context, inputs):
        fail(exercise, "attend returns the weights first: return the context vectors, then "
                       "the weights, in the order decoder_attention gives them")
    if value is None:
        fail(exercise, "the context is not a weighted sum of the image features: return what "
                       "decoder_attention gives when the image features are the value")
    if (weights == 0).any():
        fail(exercise, "some attention weights are 0: pass no mask and no use_causal_mask; "
                       "every word may look at every region")
    reversed_words = _attend_outputs(exercise, attend, gru_output[:, ::-1], features)
    words_ask = close(reversed_words[0], context[:, ::-1])  # one context row per word
    if value == "gru_output":
        if words_ask:
            fail(exercise, "the value is the GRU output itself, so the words attend to each "
                           "other: the value must be the image features")
        fail(exercise, "query and value are swapped: the words ask (query), the image "
                       "answers (value)")
    reversed_regions = _attend_outputs(exercise, attend, gru_output, features[:, ::-1])
    regions_answer = (close(reversed_regions[0], context)  # the regions' order is irrelevant
                      and close(reversed_regions[1], weights[:, :, ::-1]))
    wrong_key = ("the weights do not compare the words with the image regions: leave out the "
                 "key (it defaults to the value) or pass the image features")
    if close(reversed_regions[1], weights):  # the weights ignore the regions altogether
        fail(exercise, wrong_key)
    if not words_ask:
        fail(exercise, "the attention query must be the GRU output: the words ask, the image "
                       "answers")
    if not regions_answer:
        fail(exercise, wrong_key)
    if context.shape != (2, words, attention_dim) or weights.shape != (2, words, regions):
        fail(exercise, f"for {words} words and {regions} regions attend returns a context of "
                       f"shape {context.shape} and weights of shape {weights.shape}; expected "
                       f"{(2, words, attention_dim)} and {(2, words, regions)}")
    print_pass(exercise, "embedding and GRU sized right; the GRU output attends over the image "
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
    real = (LOSS_TARGETS != 0).astype("float64")
    column = np.ones_like(real[:, :1])
    return masked_loss_variants(LOSS_TARGETS, LOSS_LOGITS, real, {
        "predicted_mask": LOSS_LOGITS.argmax(-1) != 0,
        "shifted_mask:later": np.hstack([0 * column, real[:, :-1]]),
        "shifted_mask:inputs": np.hstack([column, real[:, :-1]]),
        "shifted_mask:earlier": np.hstack([real[:, 1:], 0 * column]),
        "shifted_mask:rolled": np.hstack([real[:, 1:], column]),
        "padding_counted": np.ones_like(real),
    })


def masked_loss(loss: Callable, exercise: str = "Exercise 4 (masked_loss)") -> None:
    """The loss averages cross-entropy from logits over real (target != 0) tokens only.

    Every lesson with a masked loss checks it here; `exercise` is its name in that lesson.
    """
    inputs = tf.constant(LOSS_TARGETS), tf.constant(LOSS_LOGITS)
    value = scalar(exercise, "masked_loss", run_answer(exercise, "masked_loss", loss, *inputs),
                   "the averaged loss")
    if not np.isfinite(value):
        fail(exercise, f"the loss is {value}: look for a division by zero or the log of 0")
    variants = loss_variants()
    judge(exercise, value, variants, LOSS_MISTAKES,
          f"expected {variants['correct']:.4f} for a fixed batch, got {value:.4f}: "
          "cross-entropy from logits, masked where targets == 0, averaged", same=same_number)
    check_in_a_graph(exercise, loss, inputs, right="the value is right", who="masked_loss")
    as_fit = scalar(exercise, "masked_loss", loss_as_fit_calls(exercise, "masked_loss", loss,
                                                                *inputs), "the averaged loss")
    if not same_number(as_fit, value):
        fail(exercise, f"with the targets as float32, as fit passes them, the loss is "
                       f"{as_fit:.4f} instead of {value:.4f}: cast them to integers where you "
                       "need ids")
    print_pass(exercise, "padding is ignored and the loss is averaged over real tokens")


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


SAMPLE_TOP_K, SAMPLE_T = 3, 0.5


def _sampling_settings(decode_fn: Callable, features: np.ndarray, exercise: str) -> set | None:
    """The (top_k, temperature) that choose_next receives when decode is asked to sample;
    None when decode finds no choose_next of the notebook's to watch.

    decode runs as a copy of itself whose globals see a recording choose_next: the
    notebook's own globals are left alone."""
    module = getattr(decode_fn, "__globals__", None)
    choose_next = module.get("choose_next") if module is not None else None
    if not callable(choose_next) or not hasattr(decode_fn, "__code__"):
        return None
    parameters = inspect.signature(choose_next)
    seen = set()

    def recording(*args, **kwargs):
        given = parameters.bind(*args, **kwargs)
        given.apply_defaults()
        seen.add((given.arguments.get("top_k"), given.arguments.get("temperature")))
        return choose_next(*args, **kwargs)

    watched = types.FunctionType(decode_fn.__code__, {**module, "choose_next": recording},
                                 decode_fn.__name__, decode_fn.__defaults__,
                                 decode_fn.__closure__)
    watched.__kwdefaults__ = decode_fn.__kwdefaults__
    try:
        watched(features, ScriptedStepModel(), CHECK_VOCABULARY, top_k=SAMPLE_TOP_K,
                temperature=SAMPLE_T)
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        fail(exercise, f"decode(..., top_k={SAMPLE_TOP_K}, temperature={SAMPLE_T}) raised "
                       f"{one_line(error)}; greedy decoding works, so look at what differs "
                       "when top_k > 1", error)
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
        next_ids = locals_where_raised(error, decode_fn).get("next_ids")
        shape = np.shape(next_ids) if next_ids is not None else (batch,)
        if shape in ((len(CHECK_VOCABULARY),), (1, len(CHECK_VOCABULARY))):
            fail(exercise, f"next_ids has shape {shape}, one id per vocabulary word: take the "
                           "argmax over the words, the last axis, not over the images "
                           "(choose_next does it)", error)
        if shape != (batch,):
            fail(exercise, f"next_ids has shape {shape}; it needs one id per image, shape "
                           f"({batch},): pass choose_next the last position's logits, "
                           "logits[:, -1, :]", error)
        fail(exercise, f"decode raised {one_line(error)}", error)
    try:
        captions, attention = result
        captions, attention = list(captions), list(attention)
    except (TypeError, ValueError):
        fail(exercise, "decode should return two lists: the captions and their attention")
    if not all(isinstance(caption, str) for caption in captions):
        fail(exercise, "each caption should be a string: the words joined with spaces")
    expected = [" ".join(script) for script in SCRIPTS]
    states = [state[0, 0] for _, state in model.calls]
    if len(states) > 1 and not any(states[1:]):
        fail(exercise, "the state is not carried: pass the state returned by the previous "
                       "step back into step_model")
    start = CHECK_VOCABULARY.index("<start>")
    if len(model.calls) > 1 and all((tokens == start).all() for tokens, _ in model.calls):
        fail(exercise, "the chosen word is not fed back: the next step's input must be the "
                       "ids just chosen, one per image")
    if any("<end>" in caption.split() for caption in captions):
        fail(exercise, "'<end>' is part of a caption: stop before appending it")
    if len(model.calls) > len(SCRIPTS[0]) + 1:
        fail(exercise, f"the loop ran {len(model.calls)} steps for a {len(SCRIPTS[0])}-word "
                       "caption: break once every caption has reached <end>")
    if any(word in BANNED_WORDS for caption in captions for word in caption.split(" ")):
        fail(exercise, "a caption contains padding, '[UNK]' or '<start>': use choose_next: it "
                       "never picks padding, [UNK] or <start> and samples when top_k > 1")
    if captions != expected:
        fail(exercise, f"expected captions {expected}, got {captions}: keep appending words "
                       "only to captions not yet done")
    if [len(a) for a in attention] != [len(s) for s in SCRIPTS]:
        fail(exercise, "keep one attention map per generated word")
    sampled = _sampling_settings(decode_fn, features, exercise)
    if sampled is not None and sampled != {(SAMPLE_TOP_K, SAMPLE_T)}:
        fail(exercise, f"decode(..., top_k={SAMPLE_TOP_K}, temperature={SAMPLE_T}) does not "
                       "hand top_k and temperature on to choose_next, so sampling never happens")
    print_pass(exercise, "state carried, words chosen with choose_next and fed back, "
                         "stops at <end>")
