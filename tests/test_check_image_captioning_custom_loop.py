"""Self-checks of image_captioning_custom_loop: they pass on the lesson's own code and its
equivalent forms, and name each typical wrong answer, made by editing that code."""

from __future__ import annotations

import keras
import nbformat
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops
from test_check_core import fails_with, passes

from captioning_course import check, labs
from captioning_course.check.image_captioning_custom_loop import decoder as decoder_checks
from captioning_course.training import masked_loss
from conftest import REPO, edited_definitions, notebook_definitions

LESSON_2 = REPO / "solutions" / "image_captioning_custom_loop.ipynb"
ANSWERS = ("BahdanauAttention", "RNNDecoder", "teacher_forcing", "train_step")
# Each exercise's marked block in the authored lesson: the answer, and the lab's placeholder.
EXERCISES = {exercise.number: exercise for exercise in labs.exercises(
    nbformat.read(REPO / "notebooks" / LESSON_2.name, as_version=4))}
SCORE = "ops.tanh(self.W1(features) + self.W2(hidden_with_regions_axis))"
CONTEXT = "ops.sum(attention_weights * features, axis=1)"
STACKED = "ops.stack(all_logits, axis=1)"
FED = "captions[:, position - 1:position]"


def answer(number: int) -> str:
    return "\n".join(EXERCISES[number].answer) + "\n"


def unanswered(number: int) -> tuple[str, str]:
    """The edit that leaves exercise `number` as the lab gives it."""
    return answer(number), "\n".join(EXERCISES[number].placeholder()) + "\n"


def lesson_2(*replace: tuple[str, str]) -> dict:
    """The lesson's answers defined in a fresh namespace, each (old, new) replaced once."""
    namespace = {"keras": keras, "layers": layers, "ops": ops, "tf": tf, "np": np,
                 "masked_loss": masked_loss}
    return edited_definitions(LESSON_2, ANSWERS, namespace, *replace)


def test_lesson_2_checks_pass_on_the_solution(capsys):
    namespace = lesson_2()
    check.bahdanau_attention(namespace["BahdanauAttention"])
    check.decoder_step(namespace["RNNDecoder"])
    check.teacher_forcing(namespace["teacher_forcing"])
    check.train_step(namespace["train_step"])
    passes(capsys, 1, 2, 3, 4, 5)


def test_lesson_2_checks_pass_under_mixed_precision(capsys):
    namespace = lesson_2()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        check.bahdanau_attention(namespace["BahdanauAttention"])
        check.decoder_step(namespace["RNNDecoder"])
        check.teacher_forcing(namespace["teacher_forcing"])
        with fails_with("Exercise 1 .*: the score has no tanh"):
            check.bahdanau_attention(lesson_2((SCORE, SCORE[9:-1]))["BahdanauAttention"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    passes(capsys, 1, 2, 3, 4)


def test_lesson_2_checks_pass_on_the_notebook(capsys):
    namespace = notebook_definitions(LESSON_2, *ANSWERS)
    check.bahdanau_attention(namespace["BahdanauAttention"])
    check.decoder_step(namespace["RNNDecoder"])
    check.teacher_forcing(namespace["teacher_forcing"])
    check.train_step(namespace["train_step"])
    passes(capsys, 1, 2, 3, 4, 5)


# Exercises 1 and 2: the attention weights and the context vector

@pytest.mark.parametrize("replace", [
    pytest.param(("ops.softmax(score, axis=1)", "tf.nn.softmax(score, axis=1)"), id="tf.nn"),
    pytest.param(("ops.softmax(score, axis=1)", "keras.activations.softmax(score, axis=1)"),
                 id="activations"),
    pytest.param(("ops.softmax(score, axis=1)", "ops.softmax(score, axis=-2)"), id="axis-2"),
    pytest.param((CONTEXT, "tf.reduce_sum(attention_weights * features, axis=1)"),
                 id="reduce_sum"),
    pytest.param((CONTEXT, "ops.squeeze(ops.matmul(ops.transpose(attention_weights, (0, 2, 1)), "
                           "features), 1)"), id="matmul"),
    pytest.param(("ops.expand_dims(hidden, 1)", "hidden[:, None, :]"), id="slice"),
    pytest.param(("self.W2(hidden_with_regions_axis)", "ops.expand_dims(self.W2(hidden), 1)"),
                 id="axis-after-W2"),
    pytest.param(("self.V(ops.tanh(", "self.V(inputs=ops.tanh("), id="keyword"),
    pytest.param(("ops.tanh(", "tf.math.tanh("), id="tf.tanh"),
    pytest.param(("self.W1(features) + self.W2", "self.W2(features) + self.W1"),
                 id="W1-W2-roles-swapped"),
    pytest.param((answer(1) + answer(2), """\
        score = self.V(ops.tanh(self.W1(features) + self.W2(hidden)[:, None]))
        attention_weights = ops.softmax(ops.squeeze(score, -1))
        context_vector = ops.einsum("br,brd->bd", attention_weights, features)
"""), id="weights-without-last-axis"),
])
def test_bahdanau_attention_accepts_equivalent_forms(replace, capsys):
    check.bahdanau_attention(lesson_2(replace)["BahdanauAttention"])
    passes(capsys, 1, 2)


EX1, EX2 = r"^Exercise 1 \(attention scores and weights\): ", r"^Exercise 2 \(context vector\): "


@pytest.mark.parametrize("replace,message", [
    pytest.param(("ops.softmax(score, axis=1)", "ops.softmax(score)"),
                 EX1 + "the weights are all 1: the softmax runs over the last axis", id="last"),
    pytest.param(("ops.softmax(score, axis=1)", "ops.softmax(score, axis=0)"),
                 EX1 + "the weights do not sum to 1 over the regions", id="batch-axis"),
    pytest.param((SCORE, SCORE[9:-1]), EX1 + r"the score has no tanh: score = V\(tanh\(",
                 id="no-tanh"),
    pytest.param((SCORE, "ops.tanh(self.W1(features))"),
                 EX1 + "the weights do not change with the hidden state", id="no-hidden"),
    pytest.param(("ops.expand_dims(hidden, 1)", "hidden"),
                 EX1 + r"W2\(hidden\) has no regions axis, so it is not added", id="no-axis"),
    pytest.param(("ops.softmax(score, axis=1)", "ops.softmax(features, axis=1)"),
                 EX1 + r"the weights have shape \(2, 5, 6\), one per region and feature",
                 id="features"),
    pytest.param(("self.V(ops.tanh(", "(ops.tanh("),
                 EX1 + r"the weights have shape \(2, 5, 8\), one per region and feature: apply "
                       r"the softmax to the score V\(tanh\(\.\.\.\)\)", id="no-V"),
    pytest.param(("ops.softmax(score, axis=1)", "ops.sigmoid(score)"),
                 EX1 + "the weights do not sum to 1", id="sigmoid"),
    pytest.param(unanswered(1),
                 EX1 + "the attention layer raised NotImplementedError: Exercise 1: attention "
                       "scores and weights$", id="unanswered"),
])
def test_bahdanau_attention_wrong_weights(replace, message, capsys):
    with fails_with(message):
        check.bahdanau_attention(lesson_2(replace)["BahdanauAttention"])
    passes(capsys)


@pytest.mark.parametrize("replace,message", [
    pytest.param((CONTEXT, "ops.sum(attention_weights * features, axis=-1)"),
                 EX2 + r"the context vector has shape \(2, 5\); expected \(batch, embedding_dim\) "
                       r"= \(2, 6\): sum attention_weights \* features over the regions, axis=1",
                 id="last-axis"),
    pytest.param((CONTEXT, "ops.sum(attention_weights * features, axis=0)"),
                 EX2 + r"the context vector has shape \(5, 6\)", id="batch-axis"),
    pytest.param((CONTEXT, "attention_weights * features"),
                 EX2 + r"the context vector has shape \(2, 5, 6\)", id="not-summed"),
    pytest.param((CONTEXT, "ops.mean(attention_weights * features, axis=1)"),
                 EX2 + "the context vector is a mean over the regions: the weights already sum "
                       "to 1", id="mean"),
    pytest.param((CONTEXT, "ops.mean(features, axis=1)"),
                 EX2 + "the context vector is the plain mean of the features", id="unweighted"),
    pytest.param((CONTEXT, "ops.sum(attention_weights * hidden_with_regions_axis, axis=1)"),
                 EX2 + r"the context vector has shape \(2, 8\)", id="hidden"),
    pytest.param((CONTEXT, "ops.sum(attention_weights * self.W1(features), axis=1)"),
                 EX2 + r"the context vector has shape \(2, 8\)", id="projected"),
    pytest.param((CONTEXT, "ops.max(attention_weights * features, axis=1)"),
                 EX2 + "the context vector is not the sum over the regions of "
                       r"attention_weights \* features$", id="max"),
    pytest.param(("return context_vector, attention_weights",
                  "return attention_weights, context_vector"),
                 EX2 + "the layer returns the weights first: return context_vector, "
                       "attention_weights", id="swapped"),
    pytest.param((CONTEXT, "np.sum(np.asarray(attention_weights) * np.asarray(features), 1)"),
                 EX2 + "the context is right, but the layer fails inside a tf.function as in "
                       "training: use keras.ops, not NumPy", id="numpy"),
    pytest.param(unanswered(2),
                 EX2 + "the attention layer raised NotImplementedError: Exercise 2: the "
                       "context vector$", id="unanswered"),
])
def test_bahdanau_attention_wrong_context(replace, message, capsys):
    """The weights are right, so exercise 1 passes before exercise 2 fails."""
    with fails_with(message):
        check.bahdanau_attention(lesson_2(replace)["BahdanauAttention"])
    passes(capsys, 1)


def test_bahdanau_attention_weights_in_numpy_fail_in_a_tf_function(capsys):
    replace = ("ops.softmax(score, axis=1)", "np.exp(score) / np.exp(score).sum(1, keepdims=True)")
    with fails_with(EX1 + "the weights are right, but the layer fails inside a tf.function"):
        check.bahdanau_attention(lesson_2(replace)["BahdanauAttention"])
    passes(capsys)


# Exercise 3: one decoder step

GRU_FIRST = """\
        x = self.embedding(word_ids)
        output, state = self.gru(x, initial_state=hidden)
        context_vector, attention_weights = self.attention(features, state)
        logits = self.fc2(self.fc1(ops.concatenate([context_vector, output[:, 0]], axis=-1)))
"""
CONCATENATED = "x = ops.concatenate([ops.expand_dims(context_vector, 1), x], axis=-1)"
LOGITS = "logits = self.fc2(self.fc1(output[:, 0]))"


@pytest.mark.parametrize("replace", [
    pytest.param(("output[:, 0]", "ops.squeeze(output, 1)"), id="squeeze"),
    pytest.param(("self.fc1(output[:, 0])", "self.fc1(state)"), id="state"),
    pytest.param((LOGITS, "logits = self.fc2(self.fc1(output))[:, 0]"), id="slice-last"),
    pytest.param(("initial_state=hidden", "initial_state=[hidden]"), id="state-list"),
    pytest.param(("self.attention(features, hidden)",
                  "self.attention(features=features, hidden=hidden)"), id="keywords"),
    pytest.param((CONCATENATED, "x = tf.concat([context_vector[:, tf.newaxis], x], -1)"),
                 id="tf.concat"),
    pytest.param((CONCATENATED, "x = ops.concatenate([x, ops.expand_dims(context_vector, 1)], "
                                "axis=-1)"), id="embedding-first"),
])
def test_decoder_step_accepts_equivalent_forms(replace, capsys):
    check.decoder_step(lesson_2(replace)["RNNDecoder"])
    passes(capsys, 3)


EX3 = r"^Exercise 3 \(decoder step\): "


@pytest.mark.parametrize("replace,message", [
    pytest.param((answer(3), GRU_FIRST), EX3 + "the attention uses the new state: attend with "
                 "`hidden`, the previous state, before the GRU", id="gru-first"),
    pytest.param(("        return logits, state, attention_weights",
                  "        _, attention_weights = self.attention(features, state)\n"
                  "        return logits, state, attention_weights"),
                 EX3 + "the attention uses the new state", id="weights-of-new-state"),
    pytest.param(("        " + CONCATENATED + "\n", ""),
                 EX3 + "the GRU's input has 6 values, so the context vector is not "
                       "concatenated with the word's embedding", id="not-concatenated"),
    pytest.param((CONCATENATED, "x = x + ops.expand_dims(context_vector, 1)"),
                 EX3 + "the GRU's input has 6 values", id="added"),
    pytest.param((CONCATENATED, "x = ops.expand_dims(context_vector, 1)"),
                 EX3 + "the GRU's input has 6 values", id="context-alone"),
    pytest.param(("self.gru(x, initial_state=hidden)", "self.gru(x)"),
                 EX3 + "the GRU starts from zeros: pass initial_state=hidden", id="from-zeros"),
    pytest.param((LOGITS, "logits = self.fc2(self.fc1(output))"),
                 EX3 + r"the logits have shape \(2, 1, 11\): drop the time axis", id="time-axis"),
    pytest.param((LOGITS, "logits = ops.softmax(self.fc2(self.fc1(output[:, 0])))"),
                 EX3 + "the decoder returns probabilities", id="softmax"),
    pytest.param((LOGITS, "logits = self.fc2(output[:, 0])"), EX3 + "fc1 is skipped",
                 id="no-fc1"),
    pytest.param((LOGITS, "logits = self.fc1(output[:, 0])"),
                 EX3 + r"the logits have shape \(2, 8\); expected \(batch, vocab_size\) = "
                       r"\(2, 11\)", id="no-fc2"),
    pytest.param(("self.attention(features, hidden)", "self.attention(hidden, features)"),
                 EX3 + "the decoder raised ", id="attention-arguments-swapped"),
    pytest.param(("output[:, 0]", "np.asarray(output)[:, 0]"),
                 EX3 + "the step is right, but the decoder fails inside a tf.function as in "
                       "training: use keras.ops, not NumPy; it raised NotImplementedError",
                 id="numpy"),
    pytest.param(unanswered(3),
                 EX3 + "the decoder raised NotImplementedError: Exercise 3: one decoder step$",
                 id="unanswered"),
])
def test_decoder_step_wrong_steps(replace, message):
    with fails_with(message):
        check.decoder_step(lesson_2(replace)["RNNDecoder"])


# Exercise 4: teacher forcing

TENSOR_ARRAY = """\
    all_logits = tf.TensorArray(tf.float32, size=captions.shape[1] - 1)
    for position in range(1, captions.shape[1]):
        logits, hidden, _ = decoder(captions[:, position - 1:position], image_features, hidden)
        all_logits = all_logits.write(position - 1, logits)
    return tf.transpose(all_logits.stack(), [1, 0, 2])
"""
GRAPH_LOOP = """\
    steps = tf.shape(captions)[1] - 1
    all_logits = tf.TensorArray(tf.float32, size=steps)
    for position in tf.range(steps):
        logits, hidden, _ = decoder(captions[:, position:position + 1], image_features, hidden)
        all_logits = all_logits.write(position, logits)
    return tf.transpose(all_logits.stack(), [1, 0, 2])
"""
FED_PREDICTIONS = """\
    word_ids = captions[:, :1]
    for position in range(1, captions.shape[1]):
        logits, hidden, _ = decoder(word_ids, image_features, hidden)
        all_logits.append(logits)
        word_ids = ops.expand_dims(ops.argmax(logits, axis=-1), 1)
"""
STEPS = "range(1, captions.shape[1])"
LOOP_AND_RETURN = f"{answer(4)}    return {STACKED}"


@pytest.mark.parametrize("replace", [
    pytest.param((LOOP_AND_RETURN, TENSOR_ARRAY), id="TensorArray"),
    pytest.param((LOOP_AND_RETURN, GRAPH_LOOP), id="tf.range"),
    pytest.param((STACKED, "tf.stack(all_logits, axis=1)"), id="tf.stack"),
    pytest.param((STACKED, "ops.transpose(ops.stack(all_logits), (1, 0, 2))"), id="transpose"),
    pytest.param((STACKED, "ops.concatenate([x[:, None] for x in all_logits], axis=1)"),
                 id="concatenate"),
    pytest.param((FED, "ops.expand_dims(captions[:, position - 1], 1)"), id="expand_dims"),
    pytest.param(("(captions[:, position - 1:position], image_features, hidden)",
                  "(word_ids=captions[:, position - 1:position], features=image_features, "
                  "hidden=hidden, training=True)"), id="keywords"),
    pytest.param((f"{STEPS}:\n        logits, hidden, _ = decoder({FED}",
                  "range(captions.shape[1] - 1):\n        logits, hidden, _ = decoder("
                  "captions[:, position:position + 1]"), id="from-0"),
])
def test_teacher_forcing_accepts_equivalent_forms(replace, capsys):
    check.teacher_forcing(lesson_2(replace)["teacher_forcing"])
    passes(capsys, 4)


EX4 = r"^Exercise 4 \(teacher forcing\): "


@pytest.mark.parametrize("replace,message", [
    pytest.param((answer(4), FED_PREDICTIONS),
                 EX4 + r"each step is fed the word the decoder predicted \(the argmax of its "
                       "logits\\): teacher forcing feeds the true previous word", id="predicted"),
    pytest.param((FED, "captions[:, position:position + 1]"),
                 EX4 + r"each step is fed captions\[:, position\], the word it must predict, so "
                       "the decoder sees the answer", id="the-answer"),
    pytest.param(("logits, hidden, _ = decoder(", "logits, _, _ = decoder("),
                 EX4 + "the state is not carried: give each step the state the previous step "
                       "returned", id="state-dropped"),
    pytest.param(("image_features, hidden)", "image_features, decoder.reset_state(2))"),
                 EX4 + "the state is not carried", id="state-reset"),
    pytest.param((STEPS, "range(1, captions.shape[1] + 1)"),
                 EX4 + "teacher_forcing runs 6 decoder steps for captions of length 6, one too "
                       "many", id="one-too-many"),
    pytest.param((STEPS, "range(captions.shape[1])"),
                 EX4 + "teacher_forcing runs 6 decoder steps for captions of length 6, one too "
                       "many", id="from-0"),
    pytest.param((STEPS, "range(1, captions.shape[1] - 1)"),
                 EX4 + "teacher_forcing runs 4 decoder steps for captions of length 6, too few",
                 id="too-few"),
    pytest.param((STACKED, "ops.stack(all_logits)"),
                 EX4 + r"the logits are stacked along the first axis, shape \(5, 2, 7\): stack "
                       "along axis=1", id="axis-0"),
    pytest.param((STACKED, "ops.concatenate(all_logits, axis=-1)"),
                 EX4 + r"the result has shape \(2, 35\); expected \(batch, length - 1, vocab\)",
                 id="concatenated"),
    pytest.param((STACKED, "ops.stack(all_logits[::-1], axis=1)"),
                 EX4 + "the result is not the steps' logits in order", id="reversed"),
    pytest.param((FED, "captions[:, position - 1]"),
                 EX4 + r"the decoder is fed word ids of shape \(2,\); it takes \(batch, 1\): "
                       r"slice captions\[:, position - 1:position\]", id="ids-without-axis"),
    pytest.param((FED, "captions[:, :position]"),
                 EX4 + r"step 2 feeds word ids of shape \(2, 2\)", id="prefix"),
    pytest.param((FED, "np.asarray(captions)[:, position - 1:position]"),
                 EX4 + "the value is right, but teacher_forcing fails inside a tf.function as "
                       "in train_step, where captions is a tensor: use keras.ops or tf, not "
                       "NumPy; it raised NotImplementedError", id="numpy"),
    pytest.param(("image_features, hidden)", "hidden, image_features)"),
                 EX4 + r"teacher_forcing raised ValueError: the decoder takes \(word_ids, "
                       r"features, hidden\): features of shape \(batch, regions, embedding_dim\), "
                       r"got shape \(2, 3\)$", id="arguments-swapped"),
    pytest.param(("    return " + STACKED, "    " + STACKED),
                 EX4 + "teacher_forcing returns None", id="returns-nothing"),
    pytest.param(unanswered(4),
                 EX4 + "teacher_forcing raised NotImplementedError: Exercise 4: teacher "
                       "forcing$", id="unanswered"),
])
def test_teacher_forcing_wrong_loops(replace, message):
    with fails_with(message):
        check.teacher_forcing(lesson_2(replace)["teacher_forcing"])


def test_teacher_forcing_check_works_with_the_real_decoder():
    """The scripted decoder stands in for RNNDecoder: the solution runs on the real one too,
    eagerly on NumPy captions and in a tf.function on a tensor."""
    namespace = lesson_2()
    decoder = namespace["RNNDecoder"](6, 8, 11)
    captions = decoder_checks.TEACHER_CAPTIONS
    features = np.random.default_rng(0).uniform(0, 1, (2, 5, 6)).astype("float32")
    eager = namespace["teacher_forcing"](decoder, features, captions)
    graph = tf.function(namespace["teacher_forcing"])(decoder, features, tf.constant(captions))
    assert eager.shape == graph.shape == (2, 5, 11)
    np.testing.assert_allclose(eager, graph, rtol=1e-4, atol=1e-5)


# Exercise 5: the training step

EX5 = r"^Exercise 5 \(training step\): "
TAPE = """\
    with tf.GradientTape() as tape:
        encoded = encoder(features, training=True)
"""
ENCODED = "encoder(features, training=True)"
VARIABLES = "variables = encoder.trainable_variables + decoder.trainable_variables"
APPLIED = "optimizer.apply_gradients(zip(gradients, variables, strict=True))"
GRADIENTS = "gradients = tape.gradient(loss, variables)"
LOSS = "masked_loss(captions[:, 1:], teacher_forcing(decoder, encoded, captions))"
RETURNED = "    return loss"
PER_MODEL = """\
    with tf.GradientTape() as tape:
        loss = masked_loss(captions[:, 1:], teacher_forcing(
            decoder, encoder(features, training=True), captions))
    encoder_gradients, decoder_gradients = tape.gradient(
        loss, [encoder.trainable_variables, decoder.trainable_variables])
    optimizer.apply(encoder_gradients + decoder_gradients,
                    encoder.trainable_variables + decoder.trainable_variables)
    return loss
"""


@pytest.mark.parametrize("replace", [
    pytest.param((APPLIED, "optimizer.apply(gradients, variables)"), id="apply"),
    pytest.param((APPLIED, "optimizer.apply(gradients)"), id="apply-built-variables"),
    pytest.param((APPLIED, "optimizer.apply_gradients(zip(gradients, variables))"),
                 id="zip-not-strict"),
    pytest.param((APPLIED, "optimizer.apply_gradients(list(zip(gradients, variables)))"),
                 id="list-of-pairs"),
    pytest.param((VARIABLES, "variables = (*encoder.trainable_variables, "
                             "*decoder.trainable_variables)"), id="tuple"),
    pytest.param((ENCODED, "encoder(regions=features, training=True)"), id="keywords"),
    pytest.param((f"        loss = {LOSS}\n    {VARIABLES}\n    {GRADIENTS}",
                  f"        loss = {LOSS}\n        {VARIABLES}\n        {GRADIENTS}"),
                 id="gradient-inside-the-tape"),
    pytest.param((LOSS, "masked_loss(targets=captions[:, 1:], "
                        "logits=teacher_forcing(decoder, encoded, captions))"), id="loss-keywords"),
    pytest.param((answer(5).rstrip("\n"), PER_MODEL.rstrip("\n")), id="gradients-per-model"),
])
def test_train_step_accepts_equivalent_forms(replace, capsys):
    check.train_step(lesson_2(replace)["train_step"])
    passes(capsys, 5)


def test_train_step_check_accepts_a_step_without_its_own_tf_function(capsys):
    check.train_step(lesson_2(("@tf.function\ndef train_step", "def train_step"))["train_step"])
    passes(capsys, 5)


@pytest.mark.parametrize("replace,message", [
    pytest.param((f"{TAPE}        loss = ", "    with tf.GradientTape() as tape:\n        pass\n"
                                         "    encoded = encoder(features, training=True)\n"
                                         "    loss = "),
                 EX5 + "every gradient is None: compute the loss inside the `with "
                       "tf.GradientTape\\(\\) as tape:` block", id="no-tape"),
    pytest.param((TAPE, "    encoded = encoder(features, training=True)\n"
                        "    with tf.GradientTape() as tape:\n"),
                 EX5 + "the encoder's gradients are None: call the encoder inside the tape",
                 id="encoder-outside-the-tape"),
    pytest.param((VARIABLES, "variables = decoder.trainable_variables"),
                 EX5 + "the encoder's weights are not updated: take the gradients with respect "
                       "to the encoder's trainable variables too", id="decoder-only"),
    pytest.param((VARIABLES, "variables = encoder.trainable_variables"),
                 EX5 + "the decoder's weights are not updated", id="encoder-only"),
    pytest.param((VARIABLES, "variables = encoder.variables + decoder.variables"),
                 EX5 + "the optimizer is given variables it does not update, such as a "
                       "dropout's seed state: take the gradients of trainable_variables",
                 id="all-variables"),
    pytest.param((GRADIENTS, "gradients = tape.gradient(loss, encoder.trainable_variables) + "
                             "tape.gradient(loss, decoder.trainable_variables)"),
                 EX5 + "tape.gradient is called twice on one tape", id="two-gradient-calls"),
    pytest.param((ENCODED, "encoder(features)"),
                 EX5 + "the encoder is called with training=None, so its dropout is off during "
                       "the step: pass training=True", id="training-not-passed"),
    pytest.param((ENCODED, "encoder(features, training=False)"),
                 EX5 + "the encoder is called with training=False", id="training-false"),
    pytest.param((ENCODED, "encoder(features, True)"),
                 EX5 + "a model was given training positionally: Keras takes only tensors "
                       "positionally", id="training-positional"),
    pytest.param((LOSS, "ops.mean(keras.losses.sparse_categorical_crossentropy("
                        "captions[:, 1:], teacher_forcing(decoder, encoded, captions), "
                        "from_logits=True))"),
                 EX5 + "the loss counts the padding: use masked_loss", id="unmasked"),
    pytest.param((LOSS, "ops.sum(keras.losses.sparse_categorical_crossentropy("
                        "captions[:, 1:], teacher_forcing(decoder, encoded, captions), "
                        "from_logits=True) * ops.cast(captions[:, 1:] != 0, 'float32'))"),
                 EX5 + "the loss is summed, not averaged over the real tokens", id="summed"),
    pytest.param(("masked_loss(captions[:, 1:],", "masked_loss(captions[:, :-1],"),
                 EX5 + "the targets are not aligned with the logits", id="targets-unshifted"),
    pytest.param((f"    {APPLIED}\n", ""),
                 EX5 + "the loss is right, but the weights did not change: apply the gradients",
                 id="no-apply"),
    pytest.param((APPLIED, f"{APPLIED}\n    {APPLIED}"),
                 EX5 + "the optimizer is applied 2 times in one step", id="applied-twice"),
    pytest.param((APPLIED, "optimizer.apply_gradients(zip([-g for g in gradients], variables))"),
                 EX5 + "the weights move up the gradient", id="ascent"),
    pytest.param((RETURNED, ""), EX5 + "train_step returns None", id="returns-nothing"),
    pytest.param((RETURNED, "    return loss, gradients"),
                 EX5 + r"return one number \(a scalar\), not a tuple", id="returns-a-tuple"),
    pytest.param((RETURNED, "    return loss.numpy()"),
                 EX5 + "train_step runs inside a tf.function, where tensors have no value to "
                       "read: return the loss tensor itself", id="numpy"),
    pytest.param(tuple(edit.rstrip("\n") for edit in unanswered(5)),  # the last definition
                 EX5 + "train_step raised NotImplementedError: Exercise 5: the training step$",
                 id="unanswered"),
])
def test_train_step_wrong_steps(replace, message, capsys):
    with fails_with(message):
        check.train_step(lesson_2(replace)["train_step"])
    passes(capsys)
