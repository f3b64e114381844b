"""Self-checks: they pass on the solution and name the typical wrong answers precisely."""

from __future__ import annotations

import contextlib
import itertools
import linecache
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops

from captioning_course import check, labs
from captioning_course.check import SelfCheckFailed
from conftest import REPO, code_cells, notebook_definitions, printed_text

LESSON = REPO / "solutions" / "image_captioning.ipynb"
CAPTIONS = ["<start> a red circle on the left <end>", "<start> A big, blue square. <end>"]
VOCAB_SIZE, MAX_LEN = 50, 12


@pytest.fixture(scope="module")
def lesson() -> dict:
    """The solution's functions, with a tokenizer adapted on two captions."""
    namespace = notebook_definitions(LESSON, "standardize", "create_ds_fn", "masked_loss",
                                     "decode", "choose_next")
    namespace["tokenizer"] = make_tokenizer(namespace["standardize"])
    # The lesson measures it from the training captions; decode reads it.
    namespace["caption_length"] = namespace["MAX_CAPTION_LEN"]
    return namespace


def make_tokenizer(standardize="lower_and_strip_punctuation", **overrides):
    arguments = {"max_tokens": VOCAB_SIZE, "standardize": standardize,
                 "output_sequence_length": MAX_LEN, **overrides}
    tokenizer = layers.TextVectorization(**arguments)
    tokenizer.adapt(tf.constant(CAPTIONS))
    return tokenizer


def solution_cell(marker: str, replace: tuple[str, str] | None = None) -> str:
    """The solution's code cell containing `marker`, optionally with one text replaced."""
    [source] = [c.source for c in code_cells(LESSON) if marker in c.source]
    if replace:
        assert replace[0] in source, replace[0]
        source = source.replace(*replace)
    return source


@contextlib.contextmanager
def fails_with(pattern: str):
    """The check fails with a message matching `pattern`, on one line."""
    with pytest.raises(SelfCheckFailed, match=pattern) as failure:
        yield failure
    assert "\n" not in str(failure.value), str(failure.value)


def test_checks_use_public_keras_apis_only():
    source = (REPO / "src" / "captioning_course" / "check.py").read_text()
    assert not re.findall(r"\._(?!_)\w+", source)


@pytest.mark.parametrize("lesson", [p.stem for p in sorted((REPO / "notebooks").glob("*.ipynb"))])
def test_every_check_passes_in_the_executed_solution(smoke_run, lesson):
    import nbformat

    printed = printed_text(smoke_run[lesson].executed)
    numbers = {ex.number for ex in labs.exercises(
        nbformat.read(REPO / "notebooks" / f"{lesson}.ipynb", as_version=4))}
    passed = {int(n) for n in re.findall(r"^PASS Exercise (\d+)", printed, flags=re.M)}
    assert passed == numbers


# Exercise 1: the tokenizer

def test_tokenizer_passes_with_the_solution_arguments(lesson, capsys):
    check.tokenizer(lesson["tokenizer"], VOCAB_SIZE, MAX_LEN)
    assert capsys.readouterr().out.startswith("PASS Exercise 1")


def test_tokenizer_default_standardize_loses_the_start_token():
    with fails_with("'<start>' and '<end>' are not in the vocabulary: the default "
                    "standardisation strips '<' and '>'; the layer must use the lesson's "
                    "standardize"):
        check.tokenizer(make_tokenizer(), VOCAB_SIZE, MAX_LEN)


def strips_angle_brackets(text):
    return tf.strings.regex_replace(tf.strings.lower(text), r"[<>.,]", "")


def test_tokenizer_own_standardize_loses_the_start_token():
    with fails_with("'<start>' and '<end>' are not in the vocabulary: your standardize "
                    "function strips '<' and '>'"):
        check.tokenizer(make_tokenizer(strips_angle_brackets), VOCAB_SIZE, MAX_LEN)


def keeps_capitals(text):
    return tf.strings.regex_replace(text, r"[.,]", "")


def keeps_punctuation(text):
    return tf.strings.lower(text)


@pytest.mark.parametrize("standardize", [keeps_capitals, keeps_punctuation])
def test_tokenizer_half_standardised(standardize):
    with fails_with("capitals or punctuation survive"):
        check.tokenizer(make_tokenizer(standardize), VOCAB_SIZE, MAX_LEN)


def test_tokenizer_wrong_vocabulary_size(lesson):
    with fails_with("max_tokens is 5000; it should be VOCAB_SIZE"):
        check.tokenizer(make_tokenizer(lesson["standardize"], max_tokens=5000), VOCAB_SIZE,
                        MAX_LEN)


def test_tokenizer_without_output_length(lesson):
    with fails_with("output_sequence_length is None"):
        check.tokenizer(make_tokenizer(lesson["standardize"], output_sequence_length=None),
                        VOCAB_SIZE, MAX_LEN)


# Exercise 2: the shifted target

def test_ds_fn_passes_on_the_solution(lesson, capsys):
    check.ds_fn(lesson["create_ds_fn"], lesson["tokenizer"])
    assert capsys.readouterr().out.startswith("PASS Exercise 2")


@pytest.mark.parametrize("wrong_target,message", [
    ("tokens", "not shifted"),
    ("tf.concat([tf.zeros([1], dtype=tokens.dtype), tokens[:-1]], axis=0)", "shifted right"),
    ("tf.roll(tokens, -1, 0)", "wrapped around by tf.roll"),
    ("tokens[1:]", "one token leaves at the front, one padding id joins at the end"),
    ("tf.constant(np.append(tokens.numpy()[1:], 0))", "fails inside tf.data as in training"),
])
def test_ds_fn_wrong_targets(lesson, wrong_target, message):
    tokenizer = lesson["tokenizer"]

    def create_ds_fn(image, caption):
        tokens = tokenizer(caption)
        target = eval(wrong_target)  # noqa: S307
        return (image, tokens), target

    with fails_with(message):
        check.ds_fn(create_ds_fn, tokenizer)


# Exercise 3: the embedding, the GRU and attend

ATTENTION_DIM = 16
SOLUTION_CALL = "decoder_attention([gru_output, image_features], return_attention_scores=True)"
# The check's own probe (5 words, 7 regions), then sizes where every wiring has the right
# shapes (as many words as regions, and as many as ATTENTION_DIM): the roles must be read
# from the values, not from the shapes.
PROBES = [{}, {"words": 6, "regions": 6}, {"words": ATTENTION_DIM, "regions": ATTENTION_DIM}]
PROBE_IDS = ["5x7", "6x6", "16x16"]


def attention_layers(replace=None) -> dict:
    """The solution's exercise 3 cell run on its own, optionally with one text replaced."""
    namespace = {"keras": keras, "layers": layers, "vocabulary": ["x"] * VOCAB_SIZE,
                 "ATTENTION_DIM": ATTENTION_DIM}
    exec(solution_cell("def attend(", replace), namespace)  # noqa: S102
    return namespace


def run_attention_check(namespace, **probe):
    check.attention(namespace["word_embedding"], namespace["decoder_gru"], namespace["attend"],
                    VOCAB_SIZE, ATTENTION_DIM, **probe)


def test_attention_passes_on_the_solution_and_the_decoder_still_builds(capsys):
    namespace = attention_layers()
    run_attention_check(namespace)
    assert capsys.readouterr().out.startswith("PASS Exercise 3")
    # The check calls the attention layer first, on its own sizes: the models still build.
    namespace.update(caption_length=MAX_LEN, NUM_REGIONS=9, strategy=tf.distribute.get_strategy())
    exec(solution_cell("decoder = keras.Model("), namespace)  # noqa: S102
    exec(solution_cell("step_model = keras.Model("), namespace)  # noqa: S102
    assert namespace["decoder"].output_shape == (None, MAX_LEN, VOCAB_SIZE)
    logits, state, weights = namespace["step_model"].predict_on_batch(
        [np.ones((2, 1)), np.zeros((2, ATTENTION_DIM)), np.ones((2, 9, ATTENTION_DIM))])
    assert (logits.shape, state.shape, weights.shape) == ((2, 1, VOCAB_SIZE),
                                                         (2, ATTENTION_DIM), (2, 1, 9))


@pytest.mark.parametrize("call", [
    "decoder_attention(inputs=[gru_output, image_features], return_attention_scores=True)",
    "layers.Attention()([gru_output, image_features], return_attention_scores=True)",
    "decoder_attention([gru_output, image_features, image_features], "
    "return_attention_scores=True)",
    "list(decoder_attention([gru_output, image_features], return_attention_scores=True))",
])
@pytest.mark.parametrize("probe", PROBES, ids=PROBE_IDS)
def test_attention_accepts_equivalent_calls(call, probe, capsys):
    run_attention_check(attention_layers((SOLUTION_CALL, call)), **probe)
    assert capsys.readouterr().out.startswith("PASS Exercise 3")


@pytest.mark.parametrize("call,message", [
    ("decoder_attention([image_features, gru_output], return_attention_scores=True)",
     "query and value are swapped"),
    ("decoder_attention([gru_output, gru_output], return_attention_scores=True)",
     "the value is the GRU output itself"),
    ("decoder_attention([image_features, image_features], return_attention_scores=True)",
     "the attention query must be the GRU output"),
    ("decoder_attention([gru_output, image_features])",
     "attend returns a single tensor.*return_attention_scores=True"),
    ("decoder_attention([gru_output, image_features], return_attention_scores=True)[::-1]",
     "attend returns the weights first"),
])
@pytest.mark.parametrize("probe", PROBES, ids=PROBE_IDS)
def test_attention_wrong_calls(call, message, probe):
    with fails_with(message):
        run_attention_check(attention_layers((SOLUTION_CALL, call)), **probe)


@pytest.mark.parametrize("probe", PROBES, ids=PROBE_IDS)
def test_attention_key_from_the_words(probe):
    namespace = attention_layers(("[gru_output, image_features]",
                                  "[gru_output, image_features, gru_output]"))
    # Scores of 5 words against 5 words cannot weigh 7 regions: the layer raises, in one line.
    message = ("the weights do not compare the words with the image regions" if probe
               else r"attend raised InvalidArgumentError: Matrix size-incompatible: "
               r"In\[0\]: \[2,5,5\], In\[1\]: \[2,7,16\]")
    with fails_with(message):
        run_attention_check(namespace, **probe)


@pytest.mark.parametrize("replace,message", [
    (("return decoder_attention", "decoder_attention"), "attend returns None"),
    ((SOLUTION_CALL, "decoder_attention(gru_output, image_features, "
                     "return_attention_scores=True)"),
     r"attend raised ValueError: Attention layer must be called on a list of inputs"),
    ((SOLUTION_CALL, "decoder_attention([gru_output, image_features], return_scores=True)"),
     "attend raised TypeError: .*return_scores"),
    ((SOLUTION_CALL, "decoder_attention([gru_output, image_features], "
                     "return_attention_scores=True, use_causal_mask=True)"),
     "some attention weights are 0: pass no mask and no use_causal_mask"),
    ((SOLUTION_CALL, "(*" + SOLUTION_CALL + ", None)"),
     "attend should return two tensors, .*; it returns 3 items"),
    ((SOLUTION_CALL, SOLUTION_CALL + "[0], None"),
     r"attend should return two tensors, .*; it returns items of shapes \(2, 5, 16\) and \(\)"),
])
def test_attention_errors_in_attend_are_one_line(replace, message):
    with fails_with(message):
        run_attention_check(attention_layers(replace))


@pytest.mark.parametrize("layer,replacement,message", [
    ("layers.Embedding(len(vocabulary), ATTENTION_DIM)",
     "layers.Embedding(len(vocabulary), 2 * ATTENTION_DIM)",
     r"the Embedding maps 50 ids to 32 values; it should map the vocabulary"),
    ("layers.Embedding(len(vocabulary), ATTENTION_DIM)",
     "layers.Embedding(5000, ATTENTION_DIM)", r"the Embedding maps 5000 ids to 16 values"),
    ("layers.Embedding(len(vocabulary), ATTENTION_DIM)",
     "layers.Dense(ATTENTION_DIM)", "word_embedding should be a layers.Embedding, got Dense"),
    ("layers.GRU(ATTENTION_DIM, return_sequences=True, return_state=True)",
     "layers.GRU(2 * ATTENTION_DIM, return_sequences=True, return_state=True)",
     r"the GRU has 32 units; use ATTENTION_DIM \(16\)"),
    ("layers.GRU(ATTENTION_DIM, return_sequences=True, return_state=True)",
     "layers.GRU(ATTENTION_DIM, return_state=True)",
     "the GRU needs return_sequences=True: one output vector per word"),
    ("layers.GRU(ATTENTION_DIM, return_sequences=True, return_state=True)",
     "layers.GRU(ATTENTION_DIM, return_sequences=True)",
     "the GRU needs return_state=True: the inference model carries the state"),
    ("layers.GRU(ATTENTION_DIM, return_sequences=True, return_state=True)",
     "layers.GRU(ATTENTION_DIM)",
     r"needs return_sequences=True \(a vector per word\) and return_state=True"),
    ("layers.GRU(ATTENTION_DIM, return_sequences=True, return_state=True)",
     "layers.LSTM(ATTENTION_DIM, return_sequences=True, return_state=True)",
     "decoder_gru should be a layers.GRU, got LSTM"),
])
def test_attention_wrong_layers(layer, replacement, message):
    with fails_with(message):
        run_attention_check(attention_layers((layer, replacement)))


# Exercise 4: the masked loss

def test_masked_loss_passes_on_the_solution(lesson, capsys):
    check.masked_loss(lesson["masked_loss"])
    assert capsys.readouterr().out.startswith("PASS Exercise 4")


def test_masked_loss_mistakes_give_clearly_different_values():
    variants = check.loss_variants()
    for (a, x), (b, y) in itertools.combinations(variants.items(), 2):
        assert abs(x - y) > 0.1 * max(abs(x), abs(y)), (a, x, b, y)
    named = {name.partition(":")[0] for name in variants} - {"correct"}
    assert named == set(check.LOSS_MISTAKES)
    assert len(set(check.LOSS_MISTAKES.values())) == len(check.LOSS_MISTAKES)
    # The fixed logits have the per-token losses and argmax they were built for.
    per_token = per_token_loss(check.LOSS_TARGETS, check.LOSS_LOGITS)
    np.testing.assert_allclose(per_token, check.PER_TOKEN_LOSS, rtol=1e-4)
    assert np.array_equal(check.LOSS_LOGITS.argmax(-1) != 0, check.PREDICTED_WORD == 1)


def per_token_loss(targets, logits):
    return keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)


def real_tokens(targets):
    return ops.cast(ops.not_equal(targets, 0), "float32")


def masked_average(per_token, mask):
    return ops.sum(per_token * mask) / ops.sum(mask)


def reduce_sum_divide_no_nan(targets, logits):
    mask = tf.cast(targets != 0, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(per_token_loss(targets, logits) * mask),
                                 tf.reduce_sum(mask))


def loss_object_without_reduction(targets, logits):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    return masked_average(loss_fn(targets, logits), real_tokens(targets))


def loss_object_with_sample_weight(targets, logits):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight")
    return loss_fn(targets, logits, sample_weight=real_tokens(targets))


def boolean_mask_then_mean(targets, logits):
    return tf.reduce_mean(tf.boolean_mask(per_token_loss(targets, logits), targets != 0))


def tf_nn_cross_entropy(targets, logits):
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    return masked_average(per_token, real_tokens(targets))


def softmax_then_probabilities(targets, logits):
    per_token = keras.losses.sparse_categorical_crossentropy(targets, ops.softmax(logits))
    return masked_average(per_token, real_tokens(targets))


@pytest.mark.parametrize("loss", [
    reduce_sum_divide_no_nan, loss_object_without_reduction, loss_object_with_sample_weight,
    boolean_mask_then_mean, tf_nn_cross_entropy, softmax_then_probabilities,
])
def test_masked_loss_accepts_equivalent_forms(loss, capsys):
    check.masked_loss(loss)
    assert capsys.readouterr().out.startswith("PASS Exercise 4")


def mask_from_predictions(targets, logits):
    mask = ops.cast(ops.argmax(logits, -1) != 0, "float32")
    return masked_average(per_token_loss(targets, logits), mask)


def mask_rolled(targets, logits):
    return masked_average(per_token_loss(targets, logits), real_tokens(ops.roll(targets, 1, 1)))


def mask_of_the_inputs(targets, logits):
    """The mask of the decoder's input: <start> then the targets but the last."""
    inputs = ops.concatenate([ops.ones_like(targets[:, :1]), targets[:, :-1]], axis=1)
    return masked_average(per_token_loss(targets, logits), real_tokens(inputs))


def padding_counted(targets, logits):
    return ops.mean(per_token_loss(targets, logits))


def mean_of_masked(targets, logits):
    return ops.mean(per_token_loss(targets, logits) * real_tokens(targets))


def summed(targets, logits):
    return ops.sum(per_token_loss(targets, logits) * real_tokens(targets))


def unmasked_sum(targets, logits):
    return ops.sum(per_token_loss(targets, logits)) / ops.sum(real_tokens(targets))


def seed_loss(targets, logits):
    """The original lab's loss: the mask length slices the batch axis, padding stays in."""
    loss = per_token_loss(targets, logits)
    sentence_len = int(np.sum(np.asarray(targets) != 0))
    return ops.mean(loss[:sentence_len], axis=1)


def per_caption(targets, logits):
    mask = real_tokens(targets)
    return ops.mean(ops.sum(per_token_loss(targets, logits) * mask, axis=1) / ops.sum(mask, 1))


def from_probabilities(targets, logits):
    per_token = keras.losses.sparse_categorical_crossentropy(targets, logits)
    return masked_average(per_token, real_tokens(targets))


def default_loss_object(targets, logits):
    per_token = keras.losses.SparseCategoricalCrossentropy(reduction=None)(targets, logits)
    return masked_average(per_token, real_tokens(targets))


def softmax_twice(targets, logits):
    return masked_average(per_token_loss(targets, tf.nn.softmax(logits)), real_tokens(targets))


def softmax_by_hand_twice(targets, logits):
    probabilities = ops.exp(logits) / ops.sum(ops.exp(logits), axis=-1, keepdims=True)
    return masked_average(per_token_loss(targets, probabilities), real_tokens(targets))


def numpy_mask(targets, logits):
    mask = (np.asarray(targets) != 0).astype("float32")
    return masked_average(per_token_loss(targets, logits), mask)


def mask_of_the_wrong_rank(targets, logits):
    return masked_average(per_token_loss(targets, logits), ops.cast(logits != 0, "float32"))


def returns_nothing(targets, logits):
    masked_average(per_token_loss(targets, logits), real_tokens(targets))


@pytest.mark.parametrize("wrong_loss,message", [
    (mask_from_predictions, "the mask comes from the predictions"),
    (mask_rolled, "the mask is shifted by one position"),
    (mask_of_the_inputs, "the mask is shifted by one position"),
    (padding_counted, "padding is counted"),
    (mean_of_masked, "the masked losses are averaged over every position"),
    (summed, "the loss is summed"),
    (unmasked_sum, "the padded positions' losses are still in the sum"),
    (seed_loss, r"return one number \(a scalar\), not shape \(3,\)"),
    (per_caption, "each caption is averaged separately"),
    (from_probabilities, "the cross-entropy treats the logits as probabilities"),
    (default_loss_object, "the cross-entropy treats the logits as probabilities"),
    (softmax_twice, "softmax is applied twice"),
    (softmax_by_hand_twice, "softmax is applied twice"),
    (numpy_mask, "the value is right, but masked_loss fails inside a tf.function as in "
                 "training: use keras.ops, not NumPy; it raised NotImplementedError: Cannot "
                 "convert a symbolic tf.Tensor"),
    (returns_nothing, "masked_loss returns None: return the averaged loss"),
    (mask_of_the_wrong_rank, "masked_loss raised InvalidArgumentError: Incompatible shapes: "
                            r"\[3,7\] vs. \[3,7,300\]$"),
])
def test_masked_loss_wrong_answers(wrong_loss, message):
    with fails_with(message):
        check.masked_loss(wrong_loss)


# Exercise 5: the decoding loop

def test_decode_passes_on_the_solution(lesson, capsys):
    check.decode(lesson["decode"])
    assert capsys.readouterr().out.startswith("PASS Exercise 5")


STEP = "logits, state, weights = step_model.predict_on_batch([tokens, state, image_features])"


@pytest.mark.parametrize("call", ["step_model([tokens, state, image_features])",
                                  "step_model.predict([tokens, state, image_features], verbose=0)",
                                  "step_model(inputs=[tokens, state, image_features])"])
def test_decode_accepts_every_way_of_running_the_step_model(lesson, call, capsys):
    namespace = dict(lesson)
    step = STEP.replace("step_model.predict_on_batch([tokens, state, image_features])", call)
    exec(solution_cell("def decode(", (STEP, step)), namespace)  # noqa: S102
    check.decode(namespace["decode"])
    assert capsys.readouterr().out.startswith("PASS Exercise 5")
CHOOSE = "choose_next(logits[:, -1, :], banned, top_k, temperature)"


@pytest.mark.parametrize("replace,message", [
    ((STEP, STEP.replace("logits, state,", "logits, _,")), "the state is not carried"),
    (("        tokens = next_ids[:, None]\n", ""), "the chosen word is not fed back"),
    (("        if done.all():\n            break\n", ""), "break once every caption"),
    (("        done |= next_ids == end_id\n", ""), "'<end>' is part of a caption"),
    ((CHOOSE, "np.argmax(logits[:, -1, :], -1)"),
     "use choose_next: it never picks padding, \\[UNK\\] or <start> and samples when "
     "top_k > 1"),
    ((CHOOSE, "np.argmax(logits[:, -1, :], axis=0)"),
     "take the argmax over the words, the last axis, not over the images"),
    ((CHOOSE, "tf.argmax(logits[:, -1, :]).numpy()"),
     "take the argmax over the words, the last axis, not over the images"),
    ((CHOOSE, "choose_next(logits, banned, top_k, temperature)"),
     r"next_ids has shape \(2, 1\); it needs one id per image.*logits\[:, -1, :\]"),
    (("next_ids[:, None]", "next_ids"),
     r"decode raised ValueError: step_model expects tokens of shape \(2, 1\)"),
    (("[tokens, state, image_features]", "[tokens, image_features]"),
     "decode raised ValueError: step_model takes a list of three inputs"),
    ((CHOOSE, "choose_next(logits[:, -1, :], banned, 1, 1.0)"),
     "does not hand top_k and temperature on to choose_next"),
])
def test_decode_wrong_loops(lesson, replace, message):
    namespace = dict(lesson)
    exec(solution_cell("def decode(", replace), namespace)  # noqa: S102
    with fails_with(message):
        check.decode(namespace["decode"])


# Lesson 2 (image_captioning_custom_loop): exercises 1 to 4 -------------------------------------
# The lesson's solution code for its exercises, written out here so that these tests do not
# wait for the notebook; test_lesson_2_checks_pass_on_the_notebook runs the checks on the
# notebook's own code once it exists.

LESSON_2 = REPO / "solutions" / "image_captioning_custom_loop.ipynb"
LESSON_2_SOURCE = '''
class BahdanauAttention(layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.W1 = layers.Dense(units)
        self.W2 = layers.Dense(units)
        self.V = layers.Dense(1)

    def call(self, features, hidden):
        hidden_with_regions_axis = ops.expand_dims(hidden, 1)
        score = self.V(ops.tanh(self.W1(features) + self.W2(hidden_with_regions_axis)))
        attention_weights = ops.softmax(score, axis=1)
        context_vector = ops.sum(attention_weights * features, axis=1)
        return context_vector, attention_weights


class RNNDecoder(keras.Model):
    def __init__(self, embedding_dim, units, vocab_size, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.embedding = layers.Embedding(vocab_size, embedding_dim)
        self.gru = layers.GRU(units, return_sequences=True, return_state=True,
                              recurrent_initializer="glorot_uniform")
        self.fc1 = layers.Dense(units)
        self.fc2 = layers.Dense(vocab_size)
        self.attention = BahdanauAttention(units)

    def call(self, word_ids, features, hidden):
        context_vector, attention_weights = self.attention(features, hidden)
        x = self.embedding(word_ids)
        x = ops.concatenate([ops.expand_dims(context_vector, 1), x], axis=-1)
        output, state = self.gru(x, initial_state=hidden)
        logits = self.fc2(self.fc1(output[:, 0]))
        return logits, state, attention_weights

    def reset_state(self, batch_size):
        return ops.zeros((batch_size, self.units))


def teacher_forcing(decoder, image_features, captions):
    hidden = decoder.reset_state(batch_size=ops.shape(captions)[0])
    all_logits = []
    for position in range(1, captions.shape[1]):
        logits, hidden, _ = decoder(captions[:, position - 1:position], image_features, hidden)
        all_logits.append(logits)
    return ops.stack(all_logits, axis=1)
'''
# Each exercise's answer, as the lab replaces it with its placeholder.
EXERCISE_1 = """\
        hidden_with_regions_axis = ops.expand_dims(hidden, 1)
        score = self.V(ops.tanh(self.W1(features) + self.W2(hidden_with_regions_axis)))
        attention_weights = ops.softmax(score, axis=1)
"""
EXERCISE_2 = "        context_vector = ops.sum(attention_weights * features, axis=1)\n"
EXERCISE_3 = LESSON_2_SOURCE.split("hidden):\n")[2].split("        return logits")[0]
EXERCISE_4 = LESSON_2_SOURCE.split("all_logits = []\n")[1].split("    return")[0]
SCORE = "ops.tanh(self.W1(features) + self.W2(hidden_with_regions_axis))"
CONTEXT = "ops.sum(attention_weights * features, axis=1)"
STACKED = "ops.stack(all_logits, axis=1)"
FED = "captions[:, position - 1:position]"


def lesson_2(*replace: tuple[str, str]) -> dict:
    """The lesson 2 answers defined in a fresh namespace, each (old, new) replaced once."""
    source = LESSON_2_SOURCE
    for old, new in replace:
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    # A file name that linecache knows, as a notebook cell has: AutoGraph reads the source.
    filename = f"<lesson 2 answers {hash(source)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"keras": keras, "layers": layers, "ops": ops, "tf": tf, "np": np}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102
    return namespace


def placeholder(answer: str, title: str) -> tuple[str, str]:
    indent = answer[:len(answer) - len(answer.lstrip())]
    return answer, f"{indent}raise NotImplementedError({title!r})\n"


def passes(capsys, *numbers: int) -> None:
    printed = capsys.readouterr().out
    assert re.findall(r"^PASS Exercise (\d+)", printed, flags=re.M) == [str(n) for n in numbers]


def test_lesson_2_checks_pass_on_the_solution(capsys):
    namespace = lesson_2()
    check.bahdanau_attention(namespace["BahdanauAttention"])
    check.decoder_step(namespace["RNNDecoder"])
    check.teacher_forcing(namespace["teacher_forcing"])
    passes(capsys, 1, 2, 3, 4)


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
    if not LESSON_2.exists():
        pytest.skip(f"{LESSON_2.name} is not written yet")
    namespace = notebook_definitions(LESSON_2, "BahdanauAttention", "RNNDecoder",
                                     "teacher_forcing", "masked_loss")
    check.bahdanau_attention(namespace["BahdanauAttention"])
    check.decoder_step(namespace["RNNDecoder"])
    check.teacher_forcing(namespace["teacher_forcing"])
    passes(capsys, 1, 2, 3, 4)
    check.masked_loss(namespace["masked_loss"])  # exercise 5
    assert capsys.readouterr().out.startswith("PASS Exercise")


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
    pytest.param((EXERCISE_1 + EXERCISE_2, """\
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
    pytest.param(placeholder(EXERCISE_1, "Exercise 1: attention scores and weights"),
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
    pytest.param(placeholder(EXERCISE_2, "Exercise 2: the context vector"),
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
    pytest.param((EXERCISE_3, GRU_FIRST), EX3 + "the attention uses the new state: attend with "
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
    pytest.param(placeholder(EXERCISE_3, "Exercise 3: one decoder step"),
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
LOOP_AND_RETURN = LESSON_2_SOURCE.split("    all_logits = []\n")[1]


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
    pytest.param((EXERCISE_4, FED_PREDICTIONS),
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
    pytest.param(placeholder(EXERCISE_4, "Exercise 4: teacher forcing"),
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
    captions = check.TEACHER_CAPTIONS
    features = np.random.default_rng(0).uniform(0, 1, (2, 5, 6)).astype("float32")
    eager = namespace["teacher_forcing"](decoder, features, captions)
    graph = tf.function(namespace["teacher_forcing"])(decoder, features, tf.constant(captions))
    assert eager.shape == graph.shape == (2, 5, 11)
    np.testing.assert_allclose(eager, graph, rtol=1e-4, atol=1e-5)
