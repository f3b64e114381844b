"""The self-checks' shared core, and what holds for every lesson's checks; the helpers the
lessons' check tests share."""

from __future__ import annotations

import contextlib
import importlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from captioning_course import check, keras_fixes, labs
from captioning_course.check import core
from captioning_course.check.core import SelfCheckFailed
from conftest import REPO, code_cells, printed_text

PACKAGE = REPO / "src" / "captioning_course" / "check"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
EXERCISE = "Exercise 9 (answer)"


@contextlib.contextmanager
def fails_with(pattern: str, exercise: str = ""):
    """The check fails with one line that matches `pattern` and, when `exercise` is given,
    starts with its name."""
    with pytest.raises(SelfCheckFailed, match=pattern) as failure:
        yield failure
    text = str(failure.value)
    assert "\n" not in text, text
    assert text.startswith(f"{exercise}: " if exercise else ""), text


def passes(capsys, *numbers: int) -> None:
    """The checks printed a PASS line for exactly these exercises, in this order."""
    printed = capsys.readouterr().out
    assert re.findall(r"^PASS Exercise (\d+) ", printed, flags=re.M) == [str(n) for n in numbers]


# Every lesson's checks --------------------------------------------------------------------

def test_checks_use_public_keras_apis_only():
    modules = sorted(PACKAGE.rglob("*.py"))
    names = {module.relative_to(PACKAGE).with_suffix("").as_posix() for module in modules}
    assert {"__init__", "core", "image_captioning", "image_captioning_custom_loop/training",
            "image_captioning_transformer"} <= names
    for module in modules:
        assert not re.findall(r"\._(?!_)\w+", module.read_text()), module.name


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_every_check_a_lesson_calls_is_exported_from_its_module(notebook):
    """`check.NAME` is what the lessons call; a lesson's checks live in the module (or package)
    named after it, but for the masked loss that the main lesson's module checks for every
    lesson."""
    called = {name for cell in code_cells(notebook)
              for name in re.findall(r"\bcheck\.(\w+)\(", cell.source)}
    assert called <= set(check.__all__)
    if called:
        module = importlib.import_module(f"captioning_course.check.{notebook.stem}")
        elsewhere = {name for name in called - {"masked_loss"}
                     if getattr(getattr(module, name, None), "__module__", "").split(".")[:3]
                     != module.__name__.split(".")}
        assert not elsewhere, elsewhere


def test_importing_the_checks_applies_the_keras_fix():
    """The checks call layers on tensors before the lessons build models from them."""
    assert not keras_fixes.attention_remembers_scores()


@pytest.mark.parametrize("lesson", [p.stem for p in NOTEBOOKS])
def test_every_check_passes_in_the_executed_solution(smoke_run, lesson):
    import nbformat

    printed = printed_text(smoke_run[lesson].executed)
    numbers = {ex.number for ex in labs.exercises(
        nbformat.read(REPO / "notebooks" / f"{lesson}.ipynb", as_version=4))}
    passed = {int(n) for n in re.findall(r"^PASS Exercise (\d+)", printed, flags=re.M)}
    assert passed == numbers


# The verdict and running an answer ---------------------------------------------------------

def test_one_line_drops_tf_function_tracebacks_and_op_names():
    @tf.function
    def traced(x):
        return tf.reshape(x, [5])

    with pytest.raises(Exception) as raised:  # noqa: B017 (whatever TensorFlow raises)
        traced(tf.zeros([2, 3]))
    line = core.one_line(raised.value)
    assert "\n" not in line and "in user code" not in line and "[Op:" not in line, line
    assert line.startswith(type(raised.value).__name__ + ": ")


def test_one_line_shortens_long_messages_and_names_bare_exceptions():
    assert core.one_line(ValueError("x" * 300), limit=20) == "ValueError: " + "x" * 17 + "..."
    assert core.one_line(KeyError()) == "KeyError"


def test_run_answer_turns_an_error_into_one_line_naming_the_exercise():
    def answer():
        raise ZeroDivisionError("division by zero")

    with fails_with(r"the answer raised ZeroDivisionError: division by zero$", EXERCISE) as failure:
        core.run_answer(EXERCISE, "the answer", answer)
    assert isinstance(failure.value.__cause__, ZeroDivisionError)
    assert core.run_answer(EXERCISE, "the answer", lambda x: x + 1, 1) == 2


def test_run_answer_lets_a_checks_own_failure_through():
    def nested_check():
        core.fail("Exercise 1 (inner)", "wrong")

    with fails_with("wrong", "Exercise 1 (inner)"):
        core.run_answer(EXERCISE, "the answer", nested_check)


def test_print_pass_prints_one_pass_line(capsys):
    core.print_pass(EXERCISE, "right")
    passes(capsys, 9)


def test_scalar_asks_for_one_number():
    assert core.scalar(EXERCISE, "loss", tf.constant(2.0), "the loss") == 2.0
    with fails_with("loss returns None: return the loss"):
        core.scalar(EXERCISE, "loss", None, "the loss")
    with fails_with(r"not a tuple"):
        core.scalar(EXERCISE, "loss", (1.0, 2.0), "the loss")
    with fails_with(r"not shape \(2,\)"):
        core.scalar(EXERCISE, "loss", np.ones(2), "the loss")


# Judging values ---------------------------------------------------------------------------

VARIANTS = {"correct": 1.0, "halved:early": 0.5, "halved:late": 0.25, "unnamed": 3.0,
            "uncomputable": None}
MISTAKES = {"halved": "halved", "uncomputable": "never matched"}


@pytest.mark.parametrize("value,message", [
    pytest.param(0.5, "halved$", id="mistake"),
    pytest.param(0.25, "halved$", id="another-form-of-the-mistake"),
    pytest.param(3.0, "something else$", id="variant-of-no-mistake"),
    pytest.param(7.0, "something else$", id="unknown"),
])
def test_judge_names_the_mistake_a_value_is(value, message):
    with fails_with(message, EXERCISE):
        core.judge(EXERCISE, value, VARIANTS, MISTAKES, "something else",
                   same=core.same_number)


def test_judge_returns_on_the_right_answer_before_any_diagnosis():
    core.judge(EXERCISE, 1.0, VARIANTS, MISTAKES, "wrong", same=core.same_number,
               diagnoses=[lambda value: "never asked"])


def test_judge_tells_a_diagnosis_before_the_mistakes():
    with fails_with("negative$"):
        core.judge(EXERCISE, -0.5, {**VARIANTS, "halved": -0.5}, MISTAKES, "wrong",
                   same=core.same_number,
                   diagnoses=[lambda value: False, lambda value: value < 0 and "negative"])


def test_same_number_wants_a_scalar():
    assert core.same_number(np.float32(1.00001), 1.0)
    assert not core.same_number(np.ones(1), 1.0)


def test_masked_loss_variants_average_the_cross_entropy_over_the_real_positions():
    labels = np.array([[1, 2, 0], [2, 0, 0]])
    logits = np.random.default_rng(0).normal(0, 1, (2, 3, 4)).astype("float32")
    real = labels != 0
    per_token = keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                             from_logits=True).numpy()
    variants = core.masked_loss_variants(labels, logits, real, {"padding_counted": ~real | real})
    assert np.isclose(variants["correct"], per_token[real].mean())
    assert np.isclose(variants["padding_counted"], per_token.mean())
    assert np.isclose(variants["summed"], per_token[real].sum())
    assert {"mean_of_masked", "unmasked_sum", "per_caption", "logits_as_probabilities",
            "softmax_twice"} < set(variants)


# Inside a tf.function --------------------------------------------------------------------

def numpy_double(x):
    return np.asarray(x) * 2


def test_check_in_a_graph_names_what_fails_there():
    with fails_with(r"^Exercise 9 \(answer\): the value is right, but double fails inside a "
                    "tf.function as in training: use keras.ops, not NumPy; it raised "
                    "NotImplementedError: "):
        core.check_in_a_graph(EXERCISE, numpy_double, (tf.ones(2),), right="the value is right",
                              who="double")


def test_check_in_a_graph_compares_with_the_eager_value():
    def python_branch(x):
        return x * 2 if tf.executing_eagerly() else x

    core.check_in_a_graph(EXERCISE, lambda x: x * 2, (tf.ones(2),), right="", who="",
                          expected=np.full(2, 2.0))
    with fails_with("another value in a graph$"):
        core.check_in_a_graph(EXERCISE, python_branch, (tf.ones(2),), right="", who="",
                              expected=np.full(2, 2.0), differs="another value in a graph")


def test_run_in_a_graph_returns_the_error_instead_of_raising():
    output, error = core.run_in_a_graph(numpy_double, tf.ones(2))
    assert output is None and isinstance(error, NotImplementedError)
    output, error = core.run_in_a_graph(lambda x: x + 1, tf.ones(2))
    assert error is None and np.array_equal(output, [2.0, 2.0])


# Fixed weights and kept scores ---------------------------------------------------------------

class KeepsScores(keras.layers.Layer):
    """Keeps its output's softmax as its attention scores; with `once`, its first call's."""

    def __init__(self, once=False):
        super().__init__()
        self.dense, self.once = keras.layers.Dense(3), once

    def build(self, input_shape):  # else Keras traces a call, which would keep symbolic scores
        self.dense.build(input_shape)

    def call(self, x):
        output = self.dense(x)
        if not (self.once and hasattr(self, "last_attention_scores")):
            self.last_attention_scores = tf.nn.softmax(output)
        return output


def fixed_run(layer, references=lambda x: {"scores": tf.nn.softmax(x).numpy()}):
    layer(tf.zeros((1, 2)))  # builds it, as each check's first call does
    return core.run_with_fixed_weights(
        EXERCISE, layer, 7, lambda x: layer(x).numpy(), (tf.ones((1, 2)),), references,
        unfit="unfit", earlier_inputs=(tf.zeros((1, 2)),),
        scores=lambda: core.kept_scores(EXERCISE, layer))


def test_fixed_weights_give_the_same_run_whatever_the_initialisers():
    keras.utils.set_random_seed(1)
    first = fixed_run(KeepsScores())
    keras.utils.set_random_seed(2)
    second = fixed_run(KeepsScores())
    np.testing.assert_array_equal(first.output, second.output)
    assert first.scores is not None and first.earlier_scores is not None
    assert not np.allclose(first.scores, first.earlier_scores)


def test_run_with_fixed_weights_fails_when_the_references_do_not_fit():
    with fails_with("unfit$"):
        fixed_run(KeepsScores(), references=lambda x: None)


@pytest.mark.parametrize("layer,message", [
    pytest.param(keras.layers.Dense(3), "missing$", id="missing"),
    pytest.param(KeepsScores(once=True), "stale$", id="stale"),
    pytest.param(KeepsScores(), "wrong$", id="wrong"),
])
def test_judge_kept_scores(layer, message):
    run = fixed_run(layer, references=lambda x: {"scores": np.zeros((1, 3))})
    with fails_with(message):
        core.judge_kept_scores(EXERCISE, run, missing="missing", stale="stale", wrong="wrong")


def test_kept_scores_must_be_one_tensor():
    layer = KeepsScores()
    layer.last_attention_scores = (tf.ones(2), tf.ones(2))
    with fails_with("last_attention_scores is a tuple: keep the scores tensor"):
        core.kept_scores(EXERCISE, layer)
