"""The self-checks of image_captioning_custom_loop, the custom training loop: exercises 1
to 5 (attention, context, decoder step, teacher forcing, training step)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from captioning_course.check.core import (
    SelfCheckFailed,
    as_arrays,
    calling,
    check_in_a_graph,
    close,
    fail,
    fail_in_a_graph,
    fix_weights,
    judge,
    locals_where_raised,
    masked_loss_variants,
    one_line,
    print_pass,
    run_answer,
    run_in_a_graph,
    same_number,
    scalar,
)

# Exercises 1 and 2: the attention weights and the context vector

ATTENTION_EXERCISES = ("Exercise 1 (attention scores and weights)",
                       "Exercise 2 (context vector)")
# Two images of 5 regions with 6 positive features (the encoder ends with a ReLU), a state of 8.
BAHDANAU_UNITS = 8
BAHDANAU_FEATURES = np.random.default_rng(21).uniform(0, 2, (2, 5, 6)).astype("float32")
BAHDANAU_HIDDEN = np.random.default_rng(22).uniform(-1, 1, (2, 2, BAHDANAU_UNITS)).astype(
    "float32")  # two states for the same images: the weights must follow the state


def _weights_when_raised(layer, error: BaseException):
    """The layer's `attention_weights` when it raised `error`: it raised in exercise 2's
    lines if they exist."""
    return locals_where_raised(error, type(layer).call).get("attention_weights")


def _attention_call(layer, features: np.ndarray, hidden: np.ndarray):
    """The layer's (context, weights, error) on these inputs, as float64 arrays.

    When the layer raises after its `attention_weights` exist, they are returned with the
    error and no context; when it raises before, the error alone. When it returns the
    weights first, they are put back in place and error is "swapped".
    """
    try:
        result = layer(tf.constant(features), tf.constant(hidden))
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        weights = _weights_when_raised(layer, error)
        if weights is not None:
            weights = (as_arrays([weights]) or [None])[0]
        return None, weights, error
    both = ("the layer should return two tensors, context_vector and attention_weights, in "
            "that order")
    if not isinstance(result, tuple | list):
        fail(ATTENTION_EXERCISES[0], f"{both}; it returns a {type(result).__name__}")
    if len(result) != 2:
        fail(ATTENTION_EXERCISES[0], f"{both}; it returns {len(result)} items")
    arrays = as_arrays(result) if all(item is not None for item in result) else None
    if arrays is None:
        fail(ATTENTION_EXERCISES[0], both)
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
    return any(close(weights, reference) for roles in ("W1W2", "W2W1")
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
    layer = run_answer(first, f"{name}({BAHDANAU_UNITS})", attention_cls, BAHDANAU_UNITS)
    _attention_call(layer, features, hidden)  # builds the sublayers the answer uses
    for roles in ("W1W2", "W2W1"):  # and those it leaves out, before fixing the weights
        _attention_scores(layer, features, hidden, roles=roles)
    fix_weights(layer, seed=1)
    context, weights, error = _attention_call(layer, features, hidden)
    if weights is None:  # it raised before the weights existed
        if _hidden_without_regions_axis(layer):
            fail(first, "W2(hidden) has no regions axis, so it is not added to W1(features) "
                        "region by region: give the state one, ops.expand_dims(hidden, 1), "
                        "shape (batch, 1, units)", error)
        fail(first, f"the attention layer raised {one_line(error)}", error)
    if weights.ndim == 3 and weights.shape[:2] == (batch, regions) and weights.shape[2] != 1:
        fail(first, f"the weights have shape {weights.shape}, one per region and feature: "
                    "apply the softmax to the score V(tanh(...)), one number per region, "
                    "shape (batch, regions, 1)")
    if weights.shape not in ((batch, regions, 1), (batch, regions)):
        fail(first, f"the weights have shape {weights.shape}; expected {(batch, regions, 1)}: "
                    "one weight per image and region")
    weights = weights.reshape(batch, regions)
    if close(weights, np.ones_like(weights)):
        fail(first, "the weights are all 1: the softmax runs over the last axis, which holds "
                    "one score per region; take it over the regions, axis=1")
    if not close(weights.sum(axis=1), np.ones(batch)):
        fail(first, "the weights do not sum to 1 over the regions: take the softmax over "
                    "axis=1, the regions")
    if not _scored_like(weights, layer, features, hidden):
        if _scored_like(weights, layer, features, hidden, tanh=False):
            fail(first, "the score has no tanh: score = V(tanh(W1(features) + W2(hidden))); "
                        "without it the state adds the same to every region's score, and "
                        "the softmax cancels it")
        _, weights_for_other, _ = _attention_call(layer, features, other_hidden)
        if (weights_for_other is not None and weights_for_other.size == weights.size
                and close(weights_for_other.reshape(weights.shape), weights)):
            fail(first, "the weights do not change with the hidden state: add W2 of the "
                        "state, with a regions axis (ops.expand_dims(hidden, 1)), to "
                        "W1(features) inside the tanh")
        fail(first, "the weights are not softmax(V(tanh(W1(features) + W2(hidden))), "
                    "axis=1): score every region with the layer's W1, W2 and V")
    _, graph_error = run_in_a_graph(calling(layer), tf.constant(features), tf.constant(hidden))
    if graph_error is not None and _weights_when_raised(layer, graph_error) is None:
        fail_in_a_graph(first, "the weights are right", "the layer", graph_error)
    print_pass(first, "softmax over the regions of V(tanh(W1(features) + W2(hidden)))")

    if error == "swapped":
        fail(second, "the layer returns the weights first: return context_vector, "
                     "attention_weights, in that order")
    if error is not None:
        fail(second, f"the attention layer raised {one_line(error)}", error)
    if context.shape != (batch, dim):
        fail(second, f"the context vector has shape {context.shape}; expected (batch, "
                     f"embedding_dim) = {(batch, dim)}: sum attention_weights * features over "
                     "the regions, axis=1")
    expected = (weights[:, :, None] * features).sum(axis=1)
    if not close(context, expected):
        if close(context, expected / regions):
            fail(second, "the context vector is a mean over the regions: the weights already "
                         "sum to 1, so take the sum, ops.sum(..., axis=1), not the mean")
        if close(context, features.mean(axis=1)):
            fail(second, "the context vector is the plain mean of the features: weight each "
                         "region by attention_weights, then sum over the regions")
        fail(second, "the context vector is not the sum over the regions of "
                     "attention_weights * features")
    if graph_error is not None:
        fail_in_a_graph(second, "the context is right", "the layer", graph_error)
    print_pass(second, "the features weighted by the attention weights, summed over the regions")


# Exercise 3: one decoder step

DECODER_EXERCISE = "Exercise 3 (decoder step)"
# RNNDecoder(embedding_dim=6, units=8, vocab_size=11) on two images of 5 regions.
DECODER_SIZES = (6, 8, 11)
DECODER_WORDS = np.array([[3], [7]])
DECODER_FEATURES = np.random.default_rng(31).uniform(0, 2, (2, 5, 6)).astype("float32")
DECODER_HIDDEN = np.random.default_rng(32).uniform(-1, 1, (2, 8)).astype("float32")


def _decoder_inputs() -> tuple:
    return (tf.constant(DECODER_WORDS), tf.constant(DECODER_FEATURES),
            tf.constant(DECODER_HIDDEN))


def _decoder_call(decoder) -> tuple:
    """The decoder's (logits, state, attention weights) on the fixed step, as arrays."""
    result = run_answer(DECODER_EXERCISE, "the decoder", calling(decoder), *_decoder_inputs())
    three = "the decoder should return three tensors: logits, state and attention_weights"
    if not isinstance(result, tuple | list):
        fail(DECODER_EXERCISE, f"{three}; it returns a {type(result).__name__}")
    if len(result) != 3:
        fail(DECODER_EXERCISE, f"{three}; it returns {len(result)} items")
    arrays = as_arrays(result) if all(item is not None for item in result) else None
    if arrays is None:
        fail(DECODER_EXERCISE, three)
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
    return reference is not None and all(close(a, b) for a, b in zip(outputs, reference,
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
    decoder = run_answer(exercise, f"{name}{DECODER_SIZES}", decoder_cls, *DECODER_SIZES)
    _decoder_call(decoder)  # builds the layers the answer uses
    for context in ("first", "none"):  # and those it skips, before fixing the weights
        _decoder_reference(decoder, context=context)
    fix_weights(decoder, seed=3)
    logits, state, weights = _decoder_call(decoder)
    if logits.shape == (batch, 1, vocab_size):
        fail(exercise, f"the logits have shape {logits.shape}: drop the time axis, "
                       "output[:, 0] or ops.squeeze(output, 1), for (batch, vocab_size)")
    if logits.shape != (batch, vocab_size):
        fail(exercise, f"the logits have shape {logits.shape}; expected (batch, vocab_size) = "
                       f"{(batch, vocab_size)}")
    if state.shape != (batch, units):
        fail(exercise, f"the new state has shape {state.shape}; expected (batch, units) = "
                       f"{(batch, units)}: return the GRU's state")
    if weights.shape not in ((batch, regions, 1), (batch, regions)):
        fail(exercise, f"the attention weights have shape {weights.shape}; expected "
                       f"{(batch, regions, 1)}: return the weights self.attention gives")
    if (logits >= 0).all() and close(logits.sum(axis=1), np.ones(batch)):
        fail(exercise, "the decoder returns probabilities (a softmax of the logits): return "
                       "fc2's output, the logits; the loss applies the softmax itself")
    weights = weights.reshape(batch, regions)
    if not close(weights, _decoder_attention(decoder, DECODER_HIDDEN)):
        if close(weights, _decoder_attention(decoder, state.astype("float32"))):
            fail(exercise, "the attention uses the new state: attend with `hidden`, the "
                           "previous state, before the GRU; its context is part of the GRU's "
                           "input")
        fail(exercise, "the attention weights are not self.attention(features, hidden)'s: "
                       "attend over the image features with the previous state")
    if _decoder_reference(decoder, context="none") is not None:
        fail(exercise, f"the GRU's input has {embedding_dim} values, so the context vector "
                       "is not concatenated with the word's embedding: ops.concatenate("
                       "[ops.expand_dims(context_vector, 1), x], axis=-1)")
    outputs = (logits, state)
    if not any(_same_step(outputs, _decoder_reference(decoder, context=context))
               for context in ("first", "last")):
        zeros = np.zeros_like(DECODER_HIDDEN)
        if any(_same_step(outputs, _decoder_reference(decoder, start=zeros, context=context))
               for context in ("first", "last")):
            fail(exercise, "the GRU starts from zeros: pass initial_state=hidden, so the step "
                           "continues from the previous state")
        if any(_same_step(outputs, _decoder_reference(decoder, context=context, fc1=False))
               for context in ("first", "last")):
            fail(exercise, "fc1 is skipped: the logits are self.fc2(self.fc1(output)), the two "
                           "Dense layers in turn")
        fail(exercise, "the logits or the state differ from the step computed from your "
                       "layers: attention with hidden, context and embedding concatenated, "
                       "the GRU from hidden, then fc1 and fc2")
    check_in_a_graph(exercise, calling(decoder), _decoder_inputs(), right="the step is right",
                     who="the decoder")
    print_pass(exercise, "attention with the previous state, context and word into the GRU from "
                         "hidden, fc1 and fc2 to logits")


# Exercise 4: teacher forcing

TEACHER_EXERCISE = "Exercise 4 (teacher forcing)"
# Two captions of 6 ids over 7 words, starting with <start> (1). No caption's next word is
# the word the scripted decoder predicts, so feeding the prediction is seen at once.
TEACHER_CAPTIONS = np.array([[1, 5, 2, 6, 3, 4], [1, 3, 5, 2, 0, 0]], dtype="int64")
TEACHER_FEATURES = np.random.default_rng(41).uniform(0, 2, (2, 4, 3)).astype("float32")
TEACHER_START_STATE = np.array([[0.5, -1.0, 0.25], [0.25, 2.0, -0.5]], dtype="float32")
IN_TRAIN_STEP = ("fails inside a tf.function as in train_step, where captions is a tensor: use "
                 "keras.ops or tf, not NumPy")


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
        fail(exercise, f"teacher_forcing runs {steps} decoder steps for captions of length "
                       f"{length}, {how}: every word after the first is predicted once, from "
                       "the word before it: range(1, length)")
    for step, call in enumerate(calls, 1):
        if call["shape"] == (batch,):
            fail(exercise, f"the decoder is fed word ids of shape {call['shape']}; it takes "
                           "(batch, 1): slice captions[:, position - 1:position], not "
                           "captions[:, position - 1]")
        if call["shape"] != (batch, 1):
            fail(exercise, f"step {step} feeds word ids of shape {call['shape']}; the decoder "
                           "takes (batch, 1): captions[:, position - 1:position]")
    fed = [call["ids"].reshape(batch) for call in calls]
    if not all(np.array_equal(ids, captions[:, step]) for step, ids in enumerate(fed)):
        if all(np.array_equal(ids, captions[:, step + 1]) for step, ids in enumerate(fed)):
            fail(exercise, "each step is fed captions[:, position], the word it must predict, "
                           "so the decoder sees the answer: feed the word before it, "
                           "captions[:, position - 1:position]")
        predictions = [captions[:, 0]] + [call["logits"].argmax(-1) for call in calls[:-1]]
        if all(np.array_equal(a, b) for a, b in zip(fed, predictions, strict=True)):
            fail(exercise, "each step is fed the word the decoder predicted (the argmax of its "
                           "logits): teacher forcing feeds the true previous word, "
                           "captions[:, position - 1:position]")
        step = next(step for step, ids in enumerate(fed)
                    if not np.array_equal(ids, captions[:, step]))
        fail(exercise, f"step {step + 1} is fed the ids {fed[step].tolist()}; teacher forcing "
                       f"feeds the true previous word, captions[:, {step}] = "
                       f"{captions[:, step].tolist()}")
    states = [TEACHER_START_STATE] + [call["state"] for call in calls[:-1]]
    for step, (call, state) in enumerate(zip(calls, states, strict=True), 1):
        if not close(call["hidden"].astype("float64"), state.astype("float64")):
            if step == 1:
                fail(exercise, "the first step does not start from decoder.reset_state(...)'s "
                               "state")
            fail(exercise, "the state is not carried: give each step the state the previous "
                           "step returned, logits, hidden, _ = decoder(..., hidden)")
        if not close(call["features"].astype("float64"), TEACHER_FEATURES.astype("float64")):
            fail(exercise, f"step {step} is not given image_features, the same for every step")


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
                fail(exercise, f"the decoder is fed word ids of shape {call['shape']}; it "
                               "takes (batch, 1): slice captions[:, position - 1:position], "
                               "not captions[:, position - 1]", error)
        fail(exercise, f"teacher_forcing raised {one_line(error)}", error)
    _teacher_forcing_steps(decoder.calls, length)
    if result is None:
        fail(exercise, "teacher_forcing returns None: return the logits stacked along the "
                       "time axis, ops.stack(all_logits, axis=1)")
    if isinstance(result, list | tuple):
        fail(exercise, f"teacher_forcing returns a {type(result).__name__}: stack the logits "
                       "into one tensor, ops.stack(all_logits, axis=1)")
    arrays = as_arrays([result])
    if arrays is None:
        fail(exercise, f"teacher_forcing should return a tensor of logits, not a "
                       f"{type(result).__name__}")
    [logits] = arrays
    wanted = (batch, length - 1, vocab_size)
    if logits.shape == (length - 1, batch, vocab_size):
        fail(exercise, f"the logits are stacked along the first axis, shape {logits.shape}: "
                       "stack along axis=1 for (batch, length - 1, vocab)")
    if logits.shape != wanted:
        fail(exercise, f"the result has shape {logits.shape}; expected (batch, length - 1, "
                       f"vocab) = {wanted}")
    expected = np.stack([call["logits"] for call in decoder.calls], axis=1).astype("float64")
    if not close(logits, expected):
        fail(exercise, "the result is not the steps' logits in order: keep each step's logits "
                       "and stack them along axis=1")

    def train_step_like(features, captions):
        return fn(ScriptedDecoder(), features, captions)

    graph_inputs = tf.constant(TEACHER_FEATURES), tf.constant(captions)
    check_in_a_graph(exercise, train_step_like, graph_inputs, right="the value is right",
                     who="teacher_forcing", fails=IN_TRAIN_STEP, expected=expected,
                     differs=f"the value is right, but teacher_forcing {IN_TRAIN_STEP}; there "
                             "it gives other logits")
    print_pass(exercise, "each step fed the true previous word and the carried state; logits "
                         "stacked to (batch, length - 1, vocab)")


# Exercise 5: the training step

TRAIN_EXERCISE = "Exercise 5 (training step)"
# A batch as the lesson gives train_step: 4 images of 6 regions with 10 standardised channels
# (float32) and captions of 7 ids (int64) starting with <start> (2), padded with 0.
TRAIN_FEATURES = np.random.default_rng(51).normal(0, 1, (4, 6, 10)).astype("float32")
TRAIN_CAPTIONS = np.array([[2, 5, 7, 3, 0, 0, 0], [2, 4, 6, 8, 5, 3, 0],
                           [2, 6, 3, 0, 0, 0, 0], [2, 7, 7, 4, 5, 6, 3]], dtype="int64")
TRAIN_SIZES = {"embedding_dim": 5, "units": 6, "vocab_size": 9}
TRAIN_LEARNING_RATE = 0.5
# The check's encoder "drops" this fixed pattern in training mode (0 or 2, as a dropout of 0.5
# scales what it keeps), so the loss and the updates show whether the step ran in training mode.
TRAIN_DROPPED = np.random.default_rng(52).integers(0, 2, (6, TRAIN_SIZES["embedding_dim"])) * 2.0
TRAIN_MISTAKES = {
    "eval_mode": "the loss is the one with the encoder's dropout off: call the encoder with "
                 "training=True inside train_step",
    "unshifted": "the targets are not aligned with the logits: position t of teacher forcing "
                 "predicts word t + 1, so the targets are captions[:, 1:]",
    "padding_counted": "the loss counts the padding: use masked_loss(captions[:, 1:], logits), "
                       "the main lesson's masked loss",
    "mean_of_masked": "the loss is averaged over every position, padding included: use "
                      "masked_loss, which divides by the number of real tokens",
    "summed": "the loss is summed, not averaged over the real tokens: use masked_loss",
    "unmasked_sum": "the loss counts the padding: use masked_loss(captions[:, 1:], logits)",
    "per_caption": "the loss is averaged caption by caption: use masked_loss, which averages "
                   "over every real token of the batch",
    "logits_as_probabilities": "the loss reads the logits as probabilities: use masked_loss, "
                               "the cross-entropy from logits",
    "softmax_twice": "the loss applies a softmax to the logits first: give masked_loss the "
                     "logits teacher_forcing returns",
}


class CallLog:
    """What the check's models and optimizer were asked to do while train_step was traced."""

    def __init__(self):
        self.trainings: list = []  # the `training` of every encoder call
        self.applied: list[tuple[list, list | None]] = []  # (None-ness of grads, variables)


class RecordingEncoder(keras.Model):
    """A small encoder like the lesson's: a Dense layer with a ReLU and, in training mode, a
    fixed "dropout" pattern. It notes the `training` of every call, and holds a seed state
    (a non-trainable variable), as the lesson's Dropout does."""

    def __init__(self, embedding_dim, log, **kwargs):
        super().__init__(**kwargs)
        self.fc = keras.layers.Dense(embedding_dim, activation="relu")
        self.seed = keras.random.SeedGenerator(0)
        self.log = log

    def call(self, regions, training=None):
        self.log.trainings.append(training)
        encoded = self.fc(regions)
        return encoded * TRAIN_DROPPED.astype("float32") if training else encoded


class StepDecoder(keras.Model):
    """A small decoder with the lesson's interface: (word_ids, features, hidden) -> (logits,
    state, attention weights), and reset_state."""

    def __init__(self, embedding_dim, units, vocab_size, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim)
        self.step = keras.layers.Dense(units, activation="tanh")
        self.fc = keras.layers.Dense(vocab_size)

    def call(self, word_ids, features, hidden):
        words = keras.ops.reshape(self.embedding(word_ids), (-1, self.embedding.output_dim))
        context = keras.ops.mean(keras.ops.cast(features, "float32"), axis=1)
        state = self.step(keras.ops.concatenate([words, context, hidden], axis=-1))
        attention = keras.ops.ones_like(features[:, :, :1]) / features.shape[1]
        return self.fc(state), state, attention

    def reset_state(self, batch_size):
        return keras.ops.zeros((batch_size, self.units))


class RecordingSGD(keras.optimizers.SGD):
    """Plain SGD, whose updates are -learning_rate * gradient; it notes what it is asked to
    apply (apply_gradients calls apply)."""

    def __init__(self, log, **kwargs):
        super().__init__(**kwargs)
        self.log = log

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        variables = None if trainable_variables is None else list(trainable_variables)
        self.log.applied.append(([grad is None for grad in grads], variables))
        return super().apply(grads, variables)


def _training_setup() -> tuple:
    """The check's encoder, decoder and optimizer, built as start_training builds the lesson's,
    with fixed weights, and the log they share."""
    log = CallLog()
    sizes = TRAIN_SIZES
    encoder = RecordingEncoder(sizes["embedding_dim"], log)
    decoder = StepDecoder(sizes["embedding_dim"], sizes["units"], sizes["vocab_size"])
    decoder(tf.constant(TRAIN_CAPTIONS[:, :1]), encoder(tf.constant(TRAIN_FEATURES)),
            decoder.reset_state(len(TRAIN_CAPTIONS)))
    fix_weights(encoder, seed=5)
    fix_weights(decoder, seed=6)
    optimizer = RecordingSGD(log, learning_rate=TRAIN_LEARNING_RATE)
    optimizer.build(encoder.trainable_variables + decoder.trainable_variables)
    log.trainings.clear()
    return encoder, decoder, optimizer, log


def _reference_logits(encoder, decoder, training: bool):
    """Teacher forcing on the check's batch, computed here, and the variables it uses."""
    captions = TRAIN_CAPTIONS
    encoded = encoder(tf.constant(TRAIN_FEATURES), training=training)
    hidden = decoder.reset_state(len(captions))
    all_logits = []
    for position in range(1, captions.shape[1]):
        logits, hidden, _ = decoder(tf.constant(captions[:, position - 1:position]), encoded,
                                    hidden)
        all_logits.append(logits)
    return keras.ops.stack(all_logits, axis=1)


def _reference_step(encoder, decoder) -> tuple[dict, list[np.ndarray]]:
    """The right loss and each mistake's, and the right gradients of every trainable
    variable (encoder's, then decoder's), before any update."""
    variables = encoder.trainable_variables + decoder.trainable_variables
    targets = TRAIN_CAPTIONS[:, 1:]
    with tf.GradientTape() as tape:
        logits = _reference_logits(encoder, decoder, training=True)
        per_token = keras.losses.sparse_categorical_crossentropy(
            tf.constant(targets), logits, from_logits=True)
        mask = tf.cast(targets != 0, per_token.dtype)
        loss = tf.reduce_sum(per_token * mask) / tf.reduce_sum(mask)
    gradients = [np.asarray(tf.convert_to_tensor(g), dtype="float64")
                 for g in tape.gradient(loss, variables)]
    real = targets != 0
    logits = np.asarray(logits)
    variants = _loss_variants(targets, logits, real)
    unshifted = TRAIN_CAPTIONS[:, :-1]
    variants["unshifted"] = _loss_variants(unshifted, logits, unshifted != 0)["correct"]
    off = np.asarray(_reference_logits(encoder, decoder, training=False))
    variants["eval_mode"] = _loss_variants(targets, off, real)["correct"]
    return variants, gradients


def _loss_variants(targets: np.ndarray, logits: np.ndarray, real: np.ndarray) -> dict:
    """The masked loss of these logits and its typical mistakes' values."""
    return masked_loss_variants(targets, logits, real, {"padding_counted": np.ones_like(real)})


def _raised(error: BaseException) -> str:
    """What a train_step that raised did wrong, in one line."""
    text = str(error)
    if "No gradients provided for any variable" in text:
        return ("every gradient is None: compute the loss inside the `with tf.GradientTape() "
                "as tape:` block, so that the tape records what it differentiates")
    if "Only input tensors may be passed as positional arguments" in text:
        return ("a model was given training positionally: Keras takes only tensors "
                "positionally, so write encoder(features, training=True)")
    if "non-persistent GradientTape can only be used to compute one set" in text:
        return ("tape.gradient is called twice on one tape: ask for the gradients of all the "
                "variables in one call, encoder's and decoder's together")
    if "Unknown variable" in text or "does not belong to" in text:
        return ("the optimizer is given variables it does not update, such as a dropout's "
                "seed state: take the gradients of trainable_variables, not variables")
    if "numpy" in text and "Tensor" in text:
        return (f"train_step runs inside a tf.function, where tensors have no value to read: "
                f"return the loss tensor itself; it raised {one_line(error, 100)}")
    return f"train_step raised {one_line(error)}"


def train_step(fn: Callable) -> None:
    """train_step(encoder, decoder, optimizer, features, captions) -> loss, run once inside a
    tf.function (as the lesson's @tf.function runs it) on a batch of the lesson's dtypes, with
    a small encoder whose dropout pattern is fixed, a small decoder and plain SGD: the loss it
    returns and the update it makes must be the masked loss of teacher forcing with the
    encoder in training mode, and one SGD step along its gradients for every trainable
    variable of both models. Any way of writing it passes (apply or apply_gradients, lists or
    tuples, zip strict or not)."""
    exercise = TRAIN_EXERCISE
    encoder, decoder, optimizer, log = _training_setup()
    variants, gradients = _reference_step(encoder, decoder)
    log.trainings.clear()
    encoder_variables = encoder.trainable_variables
    variables = encoder_variables + decoder.trainable_variables
    before = [np.asarray(v, dtype="float64") for v in variables]
    inputs = tf.constant(TRAIN_FEATURES), tf.constant(TRAIN_CAPTIONS)
    try:
        with warnings.catch_warnings():  # Keras warns of missing gradients: the check names them
            warnings.simplefilter("ignore", UserWarning)
            result = tf.function(fn)(encoder, decoder, optimizer, *inputs)
    except SelfCheckFailed:
        raise
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        fail(exercise, _raised(error), error)
    if not log.trainings:
        fail(exercise, "train_step never calls the encoder: encode the features with it, in "
                       "training mode, and give teacher_forcing what it returns")
    if any(training is not True and training != 1 for training in log.trainings):
        wrong = next(t for t in log.trainings if t is not True and t != 1)
        fail(exercise, f"the encoder is called with training={wrong}, so its dropout is off "
                       "during the step: pass training=True")
    loss = scalar(exercise, "train_step", result, "the loss of the batch")
    judge(exercise, loss, variants, TRAIN_MISTAKES,
          f"the returned loss is {loss:.4f}, not {variants['correct']:.4f}, the masked loss "
          "of teacher forcing on the encoded features: masked_loss(captions[:, 1:], logits)",
          same=same_number)
    updates = [np.asarray(v, dtype="float64") - b for v, b in zip(variables, before, strict=True)]
    expected = [-TRAIN_LEARNING_RATE * g for g in gradients]
    if all(close(u, e) for u, e in zip(updates, expected, strict=True)):
        print_pass(exercise, "the masked loss under the tape, with dropout on; the gradients of "
                             "both models' weights, applied by the optimizer")
        return
    fail(exercise, _update_problem(log, updates, expected, encoder_variables, variables))


def _update_problem(log: CallLog, updates: list, expected: list, encoder_variables: list,
                    variables: list) -> str:
    """Why the weights did not move by one SGD step along the loss's gradients."""
    if not log.applied or not any(np.any(u) for u in updates):
        return ("the loss is right, but the weights did not change: apply the gradients with "
                "optimizer.apply_gradients(...)")
    if len(log.applied) > 1:
        return (f"the optimizer is applied {len(log.applied)} times in one step: apply the "
                "gradients once")
    missing, given = log.applied[0]
    given = variables if given is None else given
    encoder_ids = {id(v) for v in encoder_variables}
    without = {id(v) for v, none in zip(given, missing, strict=False) if none}
    with_grads = {id(v) for v, none in zip(given, missing, strict=False) if not none}
    if encoder_ids & without:
        return ("the encoder's gradients are None: call the encoder inside the tape too, so "
                "that the tape records its operations")
    if without:
        return ("the decoder's gradients are None: run teacher forcing inside the tape, so "
                "that the tape records its operations")
    if not encoder_ids & with_grads:
        return ("the encoder's weights are not updated: take the gradients with respect to the "
                "encoder's trainable variables too, encoder.trainable_variables + "
                "decoder.trainable_variables")
    if not with_grads - encoder_ids:
        return ("the decoder's weights are not updated: take the gradients with respect to the "
                "decoder's trainable variables too")
    if all(close(u, -e) for u, e in zip(updates, expected, strict=True)):
        return "the weights move up the gradient: give the optimizer the gradients themselves"
    return ("the weights' updates are not one optimizer step along the loss's gradients: "
            "differentiate the loss you return with respect to every trainable variable, and "
            "pair each gradient with its own variable")
