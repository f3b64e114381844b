"""Exercises 3 and 4 of the custom-loop lesson: one decoder step, and teacher forcing over a
caption."""


from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from captioning_course.check.core import (
    as_arrays,
    calling,
    check_in_a_graph,
    close,
    fail,
    fix_weights,
    one_line,
    print_pass,
    run_answer,
)

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


