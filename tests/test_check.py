"""Self-checks: they pass on the solution and name the typical wrong answers precisely."""

from __future__ import annotations

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


def fails_with(pattern: str):
    return pytest.raises(SelfCheckFailed, match=pattern)


def test_every_check_passes_in_the_executed_solution(smoke_run):
    import nbformat

    printed = printed_text(smoke_run["image_captioning"].executed)
    numbers = {ex.number for ex in labs.exercises(
        nbformat.read(REPO / "notebooks" / "image_captioning.ipynb", as_version=4))}
    passed = {int(n) for n in re.findall(r"^PASS Exercise (\d+)", printed, flags=re.M)}
    assert passed == numbers


# Exercise 1: the tokenizer

def test_tokenizer_passes_with_the_solution_arguments(lesson, capsys):
    check.tokenizer(lesson["tokenizer"], VOCAB_SIZE, MAX_LEN)
    assert capsys.readouterr().out.startswith("PASS Exercise 1")


def test_tokenizer_default_standardize_loses_the_start_token():
    with fails_with("'<start>' and '<end>' are not in the vocabulary.*standardize"):
        check.tokenizer(make_tokenizer(), VOCAB_SIZE, MAX_LEN)


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
    ("tokens[1:]", "drop the first token and append one 0"),
])
def test_ds_fn_wrong_targets(lesson, wrong_target, message):
    tokenizer = lesson["tokenizer"]

    def create_ds_fn(image, caption):
        tokens = tokenizer(caption)
        target = eval(wrong_target)  # noqa: S307
        return (image, tokens), target

    with fails_with(message):
        check.ds_fn(create_ds_fn, tokenizer)


# Exercise 3: the decoder

def build_decoder(replace=None, max_len=MAX_LEN, regions=9):
    namespace = {"keras": keras, "layers": layers, "vocabulary": ["x"] * VOCAB_SIZE,
                 "ATTENTION_DIM": 16, "MAX_CAPTION_LEN": max_len, "NUM_REGIONS": regions,
                 "shutil": type("NoGraphviz", (), {"which": staticmethod(lambda _: None)}),
                 "output_dir": None, "print": lambda *a: None}
    namespace["decoder"] = None
    source = solution_cell("decoder_gru = layers.GRU", replace).replace("decoder.summary()", "")
    exec(source, namespace)  # noqa: S102
    return namespace


def run_decoder_check(namespace):
    check.decoder(namespace["decoder"], namespace["word_embedding"], namespace["decoder_gru"],
                  namespace["decoder_attention"], VOCAB_SIZE, 16)


def test_decoder_passes_on_the_solution(capsys):
    run_decoder_check(build_decoder())
    assert capsys.readouterr().out.startswith("PASS Exercise 3")


def test_decoder_query_and_value_swapped():
    # With as many caption positions as image regions, the swap builds without error.
    namespace = build_decoder(("[gru_output, features_input]", "[features_input, gru_output]"),
                              max_len=9, regions=9)
    with fails_with("query and value are swapped"):
        run_decoder_check(namespace)


def test_decoder_embedding_of_the_wrong_width():
    namespace = build_decoder(("layers.Embedding(len(vocabulary), ATTENTION_DIM)",
                               "layers.Embedding(len(vocabulary), 2 * ATTENTION_DIM)"))
    with fails_with("the Embedding maps 50 ids to 32 values"):
        run_decoder_check(namespace)


def test_decoder_attending_to_its_own_output():
    namespace = build_decoder(("[gru_output, features_input]", "[gru_output, gru_output]"))
    with fails_with("the attention value must be the image features"):
        run_decoder_check(namespace)


# Exercise 4: the masked loss

def test_masked_loss_passes_on_the_solution(lesson, capsys):
    check.masked_loss(lesson["masked_loss"])
    assert capsys.readouterr().out.startswith("PASS Exercise 4")


def per_token(targets, logits):
    return keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)


def padding_counted(targets, logits):
    return ops.mean(per_token(targets, logits))


def summed(targets, logits):
    mask = ops.cast(ops.not_equal(targets, 0), "float32")
    return ops.sum(per_token(targets, logits) * mask)


def seed_loss(targets, logits):
    """The original lab's loss: the mask length slices the batch axis, padding stays in."""
    loss = per_token(targets, logits)
    sentence_len = int(np.sum(np.asarray(targets) != 0))
    return ops.mean(loss[:sentence_len], axis=1)


def per_caption(targets, logits):
    mask = ops.cast(ops.not_equal(targets, 0), "float32")
    return ops.mean(ops.sum(per_token(targets, logits) * mask, axis=1) / ops.sum(mask, axis=1))


@pytest.mark.parametrize("wrong_loss,message", [
    (padding_counted, "padding is counted"),
    (summed, "the loss is summed"),
    (seed_loss, r"return one number \(a scalar\), not shape \(2,\)"),
    (per_caption, "each caption is averaged separately"),
])
def test_masked_loss_wrong_answers(wrong_loss, message):
    with fails_with(message):
        check.masked_loss(wrong_loss)


# Exercise 5: the decoding loop

def test_decode_passes_on_the_solution(lesson, capsys):
    check.decode(lesson["decode"])
    assert capsys.readouterr().out.startswith("PASS Exercise 5")


STEP = "logits, state, weights = step_model.predict_on_batch([tokens, state, image_features])"


@pytest.mark.parametrize("replace,message", [
    ((STEP, STEP.replace("logits, state,", "logits, _,")), "the state is not carried"),
    (("        tokens = next_ids[:, None]\n", ""), "the chosen word is not fed back"),
    (("        if done.all():\n            break\n", ""), "break once every caption"),
    (("        done |= next_ids == end_id\n", ""), "'<end>' is part of a caption"),
])
def test_decode_wrong_loops(lesson, replace, message):
    namespace = dict(lesson)
    exec(solution_cell("def decode(", replace), namespace)  # noqa: S102
    with fails_with(message):
        check.decode(namespace["decode"])
