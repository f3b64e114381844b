"""Self-checks of the main lesson, image_captioning: they pass on the lesson's own code and
name the typical wrong answers precisely."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops
from test_check_core import fails_with

from captioning_course import check
from captioning_course.check import image_captioning as lesson_checks
from conftest import REPO, code_cells, notebook_definitions

LESSON = REPO / "solutions" / "image_captioning.ipynb"
CAPTIONS = ["<start> a red circle on the left <end>", "<start> A big, blue square. <end>"]
VOCAB_SIZE, MAX_LEN = 50, 12


@pytest.fixture(scope="module")
def lesson() -> dict:
    """The solution's functions, with a tokenizer adapted on two captions."""
    namespace = notebook_definitions(LESSON, "PUNCTUATION", "standardize", "create_ds_fn",
                                     "masked_loss", "decode", "choose_next")
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


SHIFTED_TARGET = "tf.concat([tokens[1:], tf.zeros([1], dtype=tokens.dtype)], axis=0)"


@pytest.mark.parametrize("wrong_target,message", [
    ("tokens", "not shifted"),
    ("tf.concat([tf.zeros([1], dtype=tokens.dtype), tokens[:-1]], axis=0)", "shifted right"),
    ("tf.roll(tokens, -1, 0)", "wrapped around by tf.roll"),
    ("tokens[1:]", "one token leaves at the front, one padding id joins at the end"),
    ("tf.constant(np.append(tokens.numpy()[1:], 0))", "fails inside tf.data as in training"),
])
def test_ds_fn_wrong_targets(lesson, wrong_target, message):
    namespace = dict(lesson)
    exec(solution_cell("def create_ds_fn(", (SHIFTED_TARGET, wrong_target)),  # noqa: S102
         namespace)
    with fails_with(message):
        check.ds_fn(namespace["create_ds_fn"], lesson["tokenizer"])


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
    namespace.update(caption_length=MAX_LEN, NUM_REGIONS=9)
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
    variants = lesson_checks.loss_variants()
    for (a, x), (b, y) in itertools.combinations(variants.items(), 2):
        assert abs(x - y) > 0.1 * max(abs(x), abs(y)), (a, x, b, y)
    named = {name.partition(":")[0] for name in variants} - {"correct"}
    assert named == set(lesson_checks.LOSS_MISTAKES)
    assert len(set(lesson_checks.LOSS_MISTAKES.values())) == len(lesson_checks.LOSS_MISTAKES)
    # The fixed logits have the per-token losses and argmax they were built for.
    per_token = per_token_loss(lesson_checks.LOSS_TARGETS, lesson_checks.LOSS_LOGITS)
    np.testing.assert_allclose(per_token, lesson_checks.PER_TOKEN_LOSS, rtol=1e-4)
    assert np.array_equal(lesson_checks.LOSS_LOGITS.argmax(-1) != 0,
                          lesson_checks.PREDICTED_WORD == 1)


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
    labels = tf.cast(targets, "int32")  # fit passes float32 targets; tf.nn wants integers
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
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


def test_decode_fails_a_loop_whose_sampling_path_crashes(lesson):
    namespace = dict(lesson)
    sampling_crashes = "choose_next(logits[:, -1, :], banned, top_k, temperature) if top_k == 1 " \
                       "else undefined_sampler(logits)"
    exec(solution_cell("def decode(", (CHOOSE, sampling_crashes)), namespace)  # noqa: S102
    with fails_with(r"decode\(\.\.\., top_k=3, temperature=0.5\) raised NameError: name "
                    "'undefined_sampler' is not defined"):
        check.decode(namespace["decode"])


def test_decode_accepts_choose_next_called_with_keywords_and_leaves_the_notebook_alone(lesson,
                                                                                      capsys):
    namespace = dict(lesson)
    # What the notebook's own choose_next is while decode runs, seen from inside decode.
    seen_in_notebook = []
    namespace.update(NOTEBOOK=namespace, SEEN=seen_in_notebook)
    keywords = ("(SEEN.append(NOTEBOOK['choose_next']), choose_next(logits[:, -1, :], banned, "
                "temperature=temperature, top_k=top_k))[1]")
    exec(solution_cell("def decode(", (CHOOSE, keywords)), namespace)  # noqa: S102
    check.decode(namespace["decode"])
    assert capsys.readouterr().out.startswith("PASS Exercise 5")
    assert seen_in_notebook and all(f is lesson["choose_next"] for f in seen_in_notebook)


def integer_targets_only(targets, logits):
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    return masked_average(per_token, real_tokens(targets))


def test_a_masked_loss_for_integer_targets_only_is_named_as_fit_would_call_it():
    with fails_with("as fit calls it, with the targets as float32", "Exercise 4 (masked_loss)"):
        check.masked_loss(integer_targets_only)
