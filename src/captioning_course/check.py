"""Self-checks for the lab exercises: run a student's object on a tiny fixed input.

Each check prints one line starting with "PASS" when the answer behaves like the solution,
and otherwise raises `SelfCheckFailed` with one line saying what is wrong and where to look,
so a lab stops at the exercise that needs work instead of failing later in a confusing way.
Checks take seconds on a CPU and need no dataset.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import NoReturn

import keras
import numpy as np
import tensorflow as tf


class SelfCheckFailed(Exception):
    """An exercise's answer does not behave as it should; the message says why."""


def _fail(exercise: str, problem: str) -> NoReturn:
    raise SelfCheckFailed(f"{exercise}: {problem}")


def _pass(exercise: str, what: str) -> None:
    print(f"PASS {exercise}: {what}")


# Exercise 1 ---------------------------------------------------------------------------------

def tokenizer(layer, vocab_size: int, max_caption_len: int) -> None:
    """The TextVectorization layer: vocabulary size, standardisation, output length."""
    exercise = "Exercise 1 (tokenizer)"
    if not isinstance(layer, keras.layers.TextVectorization):
        _fail(exercise, f"expected a layers.TextVectorization, got {type(layer).__name__}")
    config = layer.get_config()
    if config["max_tokens"] != vocab_size:
        _fail(exercise, f"max_tokens is {config['max_tokens']}; it should be VOCAB_SIZE "
                        f"({vocab_size}), the number of words to keep")
    if config["output_sequence_length"] != max_caption_len:
        _fail(exercise, f"output_sequence_length is {config['output_sequence_length']}; set it "
                        f"to MAX_CAPTION_LEN ({max_caption_len}) so every caption is padded "
                        "to the same length")
    vocabulary = layer.get_vocabulary()
    if len(vocabulary) <= 2:
        _fail(exercise, "the vocabulary is empty: call tokenizer.adapt(...) on the captions")
    if "<start>" not in vocabulary or "<end>" not in vocabulary:
        _fail(exercise, "'<start>' and '<end>' are not in the vocabulary: the default "
                        "standardisation strips '<' and '>'; pass standardize=standardize")
    # A stray "." is its own word after splitting, so it shows even when "dog" is unknown.
    tidy, messy = layer(tf.constant(["<start> a dog <end>", "<start> A dog . <end>"])).numpy()
    if not np.array_equal(tidy, messy):
        _fail(exercise, "'A dog .' and 'a dog' give different tokens: capitals or punctuation "
                        "survive; pass standardize=standardize")
    _pass(exercise, f"{len(vocabulary)} tokens, captions padded to {max_caption_len}")


# Exercise 2 ---------------------------------------------------------------------------------

def ds_fn(create_ds_fn: Callable, tokenizer_layer) -> None:
    """create_ds_fn: ((image, tokens), target) with the target shifted left by one."""
    exercise = "Exercise 2 (create_ds_fn)"
    image = tf.fill([4, 4, 3], 0.5)
    caption = tf.constant("<start> a dog runs <end>")
    result = create_ds_fn(image, caption)
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
                        "drop the first token and append one 0")
    if np.array_equal(target, tokens):
        _fail(exercise, "the target is not shifted: it equals the input; position t must hold "
                        "the token at t + 1")
    if np.array_equal(target, np.concatenate([[0], tokens[:-1]])):
        _fail(exercise, "the target is shifted right; shift it left (tokens[1:], then a 0)")
    if np.array_equal(target, np.roll(tokens, -1)) and tokens[0] != 0:
        _fail(exercise, "the last target is the <start> token wrapped around by tf.roll; the "
                        "end must be padding 0")
    expected = np.concatenate([tokens[1:], [0]])
    if not np.array_equal(target, expected):
        _fail(exercise, f"the target should be {expected[:8].tolist()}..., got "
                        f"{target[:8].tolist()}...: tokens[1:] followed by a 0")
    _pass(exercise, "target is the input shifted left by one and padded with 0")


# Exercise 3 ---------------------------------------------------------------------------------

def decoder(decoder_model, embedding, gru, attention, vocab_size: int,
            attention_dim: int) -> None:
    """The decoder's Embedding and GRU settings, and which tensors feed the attention."""
    exercise = "Exercise 3 (decoder)"
    if (embedding.input_dim, embedding.output_dim) != (vocab_size, attention_dim):
        _fail(exercise, f"the Embedding maps {embedding.input_dim} ids to "
                        f"{embedding.output_dim} values; it should map the vocabulary "
                        f"({vocab_size} ids) to ATTENTION_DIM ({attention_dim}) values")
    if gru.units != attention_dim:
        _fail(exercise, f"the GRU has {gru.units} units; use ATTENTION_DIM ({attention_dim}) "
                        "so its output can be added to the context vector")
    if not (gru.return_sequences and gru.return_state):
        _fail(exercise, "the GRU needs return_sequences=True (a vector per word) and "
                        "return_state=True (the inference model carries the state)")
    if attention not in decoder_model.layers or not attention._inbound_nodes:
        _fail(exercise, "the decoder model does not use the attention layer")
    # The decoder is the layer's first caller (the inference model reuses it later).
    query, value = attention._inbound_nodes[0].arguments.args[0][:2]
    if query._keras_history.operation is not gru:
        swapped = value._keras_history.operation is gru
        _fail(exercise, "query and value are swapped: call attention([gru_output, "
                        "image_features]); the words ask, the image answers" if swapped else
                        "the attention query must be the GRU output")
    inputs = [tensor._keras_history.operation for tensor in decoder_model.inputs]
    if value._keras_history.operation not in inputs:
        _fail(exercise, "the attention value must be the image features input of the decoder")
    _pass(exercise, "embedding and GRU sized right; GRU output attends over image features")


# Exercise 4 ---------------------------------------------------------------------------------

def masked_loss(loss: Callable) -> None:
    """The loss averages cross-entropy over real tokens only."""
    exercise = "Exercise 4 (masked_loss)"
    rng = np.random.default_rng(0)
    targets = np.array([[3, 4, 2, 0, 0, 0], [5, 2, 0, 0, 0, 0]])
    logits = rng.normal(size=(2, 6, 7)).astype("float32")
    per_token = keras.losses.sparse_categorical_crossentropy(
        targets, logits, from_logits=True).numpy()
    real = targets != 0
    value = np.asarray(loss(targets, logits))
    if value.shape != ():
        _fail(exercise, f"return one number (a scalar), not shape {value.shape}")
    value = float(value)
    if np.isclose(value, per_token[real].mean(), rtol=1e-4):
        _pass(exercise, "padding is ignored and the loss is averaged over real tokens")
        return
    if np.isclose(value, per_token.mean(), rtol=1e-4):
        _fail(exercise, "padding is counted: multiply the per-token loss by a mask of "
                        "targets != 0 before averaging")
    if np.isclose(value, per_token[real].sum(), rtol=1e-4):
        _fail(exercise, "the loss is summed; divide by the number of real tokens")
    if np.isclose(value, per_token.sum() / real.sum(), rtol=1e-4):
        _fail(exercise, "the padded positions' losses are still in the sum: multiply by the "
                        "mask before summing")
    if np.isclose(value, np.mean([row[mask].mean() for row, mask in zip(per_token, real,
                                                                         strict=True)]),
                  rtol=1e-4):
        _fail(exercise, "each caption is averaged separately, so short captions weigh more; "
                        "divide the batch's total by its number of real tokens")
    _fail(exercise, f"expected {per_token[real].mean():.4f} for a fixed batch, got {value:.4f}: "
                    "cross-entropy from logits, masked where targets == 0, averaged")


# Exercise 5 ---------------------------------------------------------------------------------

CHECK_VOCABULARY = ["", "[UNK]", "<start>", "<end>", "a", "red", "circle", "left"]
# Two images with scripted captions: the scripted step model says which word follows which,
# and its state counts the steps, so a loop that drops the state or the fed-back word is seen.
SCRIPTS = (["a", "red", "circle", "left"], ["red", "circle"])


class ScriptedStepModel:
    """Stands in for the trained step model with predictable answers."""

    def __init__(self, state_size: int = 3):
        self.inputs = [None, types.SimpleNamespace(shape=(None, state_size)), None]
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def predict_on_batch(self, inputs):
        tokens, state, features = (np.asarray(x) for x in inputs)
        self.calls.append((tokens.copy(), state.copy()))
        logits = np.full((len(tokens), 1, len(CHECK_VOCABULARY)), -10.0, dtype="float32")
        for i, script in enumerate(SCRIPTS[: len(tokens)]):
            step = int(round(state[i, 0]))
            word = script[step] if step < len(script) else "<end>"
            logits[i, 0, CHECK_VOCABULARY.index(word)] = 10.0
        weights = features[:, None, :, 0]  # any (batch, 1, regions) array will do
        return logits, state + 1.0, weights


def decode(decode_fn: Callable) -> None:
    """The decoding loop: state carried, next word fed back, stop at <end>."""
    exercise = "Exercise 5 (decoding loop)"
    model = ScriptedStepModel()
    features = np.stack([np.full((4, 2), 0.25), np.full((4, 2), 0.5)]).astype("float32")
    captions, attention = decode_fn(features, model, CHECK_VOCABULARY)
    expected = [" ".join(script) for script in SCRIPTS]
    states = [state[0, 0] for _, state in model.calls]
    if len(states) > 1 and not any(states[1:]):
        _fail(exercise, "the state is not carried: pass the state returned by the previous "
                        "step back into step_model")
    start = CHECK_VOCABULARY.index("<start>")
    if len(model.calls) > 1 and all((tokens == start).all() for tokens, _ in model.calls):
        _fail(exercise, "the chosen word is not fed back: the next step's input must be the "
                        "ids just chosen (next_ids[:, None])")
    if any("<end>" in caption.split() for caption in captions):
        _fail(exercise, "'<end>' is part of a caption: stop before appending it")
    if len(model.calls) > len(SCRIPTS[0]) + 1:
        _fail(exercise, f"the loop ran {len(model.calls)} steps for a {len(SCRIPTS[0])}-word "
                        "caption: break once every caption has reached <end>")
    if captions != expected:
        _fail(exercise, f"expected captions {expected}, got {captions}: keep appending words "
                        "only to captions not yet done")
    if [len(a) for a in attention] != [len(s) for s in SCRIPTS]:
        _fail(exercise, "keep one attention map per generated word")
    _pass(exercise, "state carried, words fed back, stops at <end>")
