"""What every lesson's checks share: the verdict, running an answer, and judging its values."""

from __future__ import annotations

import dataclasses
import re
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

import keras
import numpy as np
import tensorflow as tf

from captioning_course import keras_fixes

# Every lesson imports the checks before it builds a layer, and the checks call the students'
# layers on real tensors before the lessons build models from them symbolically.
keras_fixes.apply()


class SelfCheckFailed(Exception):
    """An exercise's answer does not behave as it should; the message says why."""


def fail(exercise: str, problem: str, cause: BaseException | None = None) -> NoReturn:
    raise SelfCheckFailed(f"{exercise}: {problem}") from cause


def print_pass(exercise: str, what: str) -> None:
    print(f"PASS {exercise}: {what}")


def one_line(error: BaseException, limit: int = 160) -> str:
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


def run_answer(exercise: str, name: str, function: Callable, *args, **kwargs):
    """Call the student's `function`; an exception in it becomes a one-line failure."""
    try:
        return function(*args, **kwargs)
    except SelfCheckFailed:
        raise
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        fail(exercise, f"{name} raised {one_line(error)}", error)


def locals_where_raised(error: BaseException, function: Callable) -> dict:
    """The local variables of `function` at the moment `error` passed through it."""
    found: dict = {}
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code is getattr(function, "__code__", None):
            found = dict(frame.f_locals)
    return found


# Values ------------------------------------------------------------------------------------

def as_arrays(items) -> list[np.ndarray] | None:
    """Each item as a float64 array, or None when one is not a number array."""
    try:
        return [np.asarray(item, dtype="float64") for item in items]
    except (TypeError, ValueError):
        return None


def close(a: np.ndarray, b: np.ndarray) -> bool:
    # Under a mixed-precision policy layers compute in 16 bits: two or three digits.
    half = keras.mixed_precision.global_policy().compute_dtype != "float32"
    rtol, atol = (3e-2, 1e-2) if half else (1e-3, 1e-5)
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=atol)


def same_number(a, b) -> bool:
    """Whether `a` is a scalar equal to `b` to four digits."""
    return np.shape(a) == () and bool(np.isclose(a, b, rtol=1e-4, atol=1e-6))


def scalar(exercise: str, name: str, result, what: str) -> float:
    """The answer's `result` as a float, or a failure saying to return `what`, one number."""
    if result is None:
        fail(exercise, f"{name} returns None: return {what}")
    arrays = as_arrays([result]) if not isinstance(result, tuple | list) else None
    if arrays is None:
        fail(exercise, f"return one number (a scalar), not a {type(result).__name__}")
    if arrays[0].shape != ():
        fail(exercise, f"return one number (a scalar), not shape {arrays[0].shape}")
    return float(arrays[0])


def judge(exercise: str, result, variants: dict, mistakes: dict[str, str], wrong: str, *,
          same: Callable = close, diagnoses: Sequence[Callable] = ()) -> None:
    """Return when `result` is the right answer, `variants["correct"]`. Otherwise fail with
    the first problem found by `diagnoses` (each returns one for `result`, or a false value),
    else with the message of the first mistake whose variant `result` is, else with `wrong`.

    A variant "name:detail" is one form of the mistake "name", told `mistakes["name"]`; a
    variant of no mistake, or None (it could not be computed), matches nothing."""
    if same(result, variants["correct"]):
        return
    for diagnose in diagnoses:
        if problem := diagnose(result):
            fail(exercise, problem)
    for name, variant in variants.items():
        mistake = name.partition(":")[0]
        if mistake in mistakes and variant is not None and same(result, variant):
            fail(exercise, mistakes[mistake])
    fail(exercise, wrong)


def masked_loss_variants(labels: np.ndarray, logits: np.ndarray, real: np.ndarray,
                         wrong_masks: dict[str, np.ndarray]) -> dict[str, float]:
    """On a fixed batch, the right masked loss ("correct": the cross-entropy from logits
    averaged over the `real` positions) and each typical mistake's value; `wrong_masks`
    gives the mistakes that average over other positions, by name."""
    def cross_entropy(predictions, from_logits=True):
        return keras.losses.sparse_categorical_crossentropy(
            tf.constant(labels), tf.constant(predictions), from_logits=from_logits
        ).numpy().astype("float64")

    def masked_mean(per_token, mask):
        return float((per_token * mask).sum() / mask.sum())

    per_token = cross_entropy(logits)
    real = real.astype("float64")
    return {
        "correct": masked_mean(per_token, real),
        **{name: masked_mean(per_token, mask) for name, mask in wrong_masks.items()},
        "mean_of_masked": float((per_token * real).mean()),
        "summed": float((per_token * real).sum()),
        "unmasked_sum": float(per_token.sum() / real.sum()),
        "per_caption": float(((per_token * real).sum(1) / real.sum(1)).mean()),
        "logits_as_probabilities": masked_mean(cross_entropy(logits, from_logits=False), real),
        "softmax_twice": masked_mean(cross_entropy(keras.ops.softmax(logits).numpy()), real),
    }


class AsFitCallsTheLoss(keras.losses.Loss):
    """A loss function as `fit` calls one given to `compile`: wrapped in a `keras.losses.Loss`
    (Keras's own wrapper is `LossFunctionWrapper`), whose `__call__` converts the labels to
    the loss's dtype, float32, before the function sees them (keras/src/losses/loss.py)."""

    def __init__(self, loss_fn: Callable):
        super().__init__(name="masked_loss")
        self.loss_fn, self.returned = loss_fn, None

    def call(self, y_true, y_pred):
        self.returned = self.loss_fn(y_true, y_pred)  # before Keras averages what is not a scalar
        return tf.zeros(()) if self.returned is None else self.returned


def loss_as_fit_calls(exercise: str, who: str, loss: Callable, targets, predictions):
    """`loss(targets, predictions)` called as `fit` calls a loss given to `compile`; an
    exception in it becomes a one-line failure."""
    try:
        return AsFitCallsTheLoss(loss)(targets, predictions)
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        fail(exercise, f"{who} fails as fit calls it, with the targets as float32 (Keras "
                       f"converts them to the loss's dtype): {one_line(error)}; cast them to "
                       "integers where you need ids", error)


# Inside a tf.function, as in training ------------------------------------------------------

FAILS_IN_A_TF_FUNCTION = "fails inside a tf.function as in training: use keras.ops, not NumPy"


def run_in_a_graph(function: Callable, *inputs) -> tuple[object, Exception | None]:
    """`function`'s output on `inputs` inside a tf.function, as Keras and train_step call it,
    or the exception it raised there."""
    try:
        return tf.function(function)(*inputs), None
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        return None, error


def fail_in_a_graph(exercise: str, right: str, who: str, error: BaseException,
                    fails: str = FAILS_IN_A_TF_FUNCTION) -> NoReturn:
    """`right` says what the eager call got right, `who` is what raised `error` in a graph."""
    fail(exercise, f"{right}, but {who} {fails}; it raised {one_line(error, 100)}", error)


def check_in_a_graph(exercise: str, function: Callable, inputs: tuple, *, right: str, who: str,
                     fails: str = FAILS_IN_A_TF_FUNCTION, expected=None, same: Callable = close,
                     differs: str = "") -> None:
    """`function` runs on `inputs` inside a tf.function too and, when `expected` is given,
    gives it there (else the failure is `differs`)."""
    output, error = run_in_a_graph(function, *inputs)
    if error is not None:
        fail_in_a_graph(exercise, right, who, error, fails)
    if expected is None:
        return
    arrays = as_arrays([output]) if not isinstance(output, tuple | list) else None
    if arrays is None or not same(arrays[0], expected):
        fail(exercise, differs)


# A student's layer, called as a model calls it -------------------------------------------

def as_float32(array) -> tf.Tensor:
    return tf.constant(np.asarray(array, dtype="float64").astype("float32"))


def calling(model, **options) -> Callable:
    """A function that calls `model` with `options`, for tf.function to trace."""
    def call(*inputs):
        return model(*inputs, **options)

    return call


def forward(layer, *inputs):
    """The layer called on these inputs as the model calls it, dropout off."""
    return calling(layer, training=False)(*(as_float32(x) for x in inputs))


def new_layer(exercise: str, layer_cls, sublayers: tuple[str, ...], **settings):
    """The student's layer built with `settings`, with the `sublayers` the lesson gives it."""
    name = getattr(layer_cls, "__name__", "the layer class")
    arguments = ", ".join(f"{key}={value}" for key, value in settings.items())
    layer = run_answer(exercise, f"{name}({arguments})", layer_cls, **settings)
    missing = [sublayer for sublayer in sublayers if not hasattr(layer, sublayer)]
    if missing:
        fail(exercise, f"the layer has no {', '.join(missing)}: keep the __init__ the lesson "
                       "gives and write only the marked lines")
    return layer


def layer_output(exercise: str, layer, inputs: tuple, hint: str,
                 explain: Callable = lambda error: None) -> np.ndarray:
    """The layer's output on `inputs`, called as the model calls it, as a float64 array.

    When the layer raises, the failure is what `explain(error)` says, else the error; when it
    returns something else, the failure names it and asks for `hint`."""
    try:
        result = forward(layer, *inputs)
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        fail(exercise, explain(error) or f"the layer raised {one_line(error)}", error)
    if result is None:
        fail(exercise, f"the layer returns None: return {hint}")
    if isinstance(result, tuple | list | dict):
        fail(exercise, f"the layer returns a {type(result).__name__} of {len(result)} items: "
                       f"return one tensor, {hint}")
    arrays = as_arrays([result])
    if arrays is None:
        fail(exercise, f"the layer returns a {type(result).__name__}: return {hint}")
    return arrays[0]


def layer_in_a_graph(exercise: str, layer, inputs: tuple, expected: np.ndarray) -> None:
    """The layer gives `expected` inside a tf.function too, as when Keras trains it."""
    check_in_a_graph(exercise, calling(layer, training=False),
                     tuple(as_float32(x) for x in inputs), right="the output is right",
                     who="the layer", expected=expected,
                     differs="the output is right when called eagerly, but not inside a "
                             "tf.function as in training: use keras.ops on the tensors, not "
                             "NumPy or Python values")


# Fixed weights, and the attention scores a layer keeps -----------------------------------

def fix_weights(model, seed: int) -> None:
    """Give every float variable of the check's own `model` fixed values (Glorot-sized), so
    that a check gives the same verdict on every run whatever the initialisers, without
    touching the student's random seeds."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if "float" in str(variable.dtype):
            shape = tuple(variable.shape)
            limit = (6 / sum(shape[-2:])) ** 0.5 if len(shape) >= 2 else 0.5
            variable.assign(rng.uniform(-limit, limit, shape).astype(variable.dtype))


def kept_scores(exercise: str, layer, attribute: str = "last_attention_scores"):
    """The layer's kept attention scores as an array, or None when it keeps none."""
    scores = getattr(layer, attribute, None)
    if scores is None:
        return None
    if isinstance(scores, tuple | list):
        arrays = None
    else:
        try:
            arrays = as_arrays([scores])
        except Exception:  # noqa: BLE001 (a symbolic tensor, kept from Keras's tracing call)
            fail(exercise, f"{attribute} are stale, an earlier call's (a tensor from the "
                           f"call Keras traces to build the layer): set self.{attribute} in "
                           "call, on every call")
    if arrays is None:
        fail(exercise, f"{attribute} is a {type(scores).__name__}: keep the scores tensor the "
                       "attention returns with return_attention_scores=True")
    return arrays[0]


@dataclasses.dataclass(frozen=True)
class FixedRun:
    """A layer's output on the checked inputs with its weights fixed, the references computed
    from its own sublayers, and the attention scores it kept after that call and after an
    earlier one (the same scores again are stale)."""

    output: np.ndarray
    references: dict
    scores: np.ndarray | None
    earlier_scores: np.ndarray | None


def run_with_fixed_weights(exercise: str, layer, seed: int, call: Callable, inputs: tuple,
                           references: Callable, *, unfit: str,
                           earlier_inputs: tuple | None = None,
                           scores: Callable = lambda: None) -> FixedRun:
    """Fix `layer`'s weights, then `call` it on `earlier_inputs` (if any) and on `inputs`.

    `references(*inputs)` computes the right output and the mistakes' from the layer's own
    sublayers, or None when they do not fit (then the failure is `unfit`); computing them
    first also builds the sublayers the answer leaves out, so their weights are fixed too."""
    if references(*inputs) is None:
        fail(exercise, unfit)
    fix_weights(layer, seed)
    earlier_scores = None
    if earlier_inputs is not None:
        call(*earlier_inputs)
        earlier_scores = scores()
    output = call(*inputs)
    kept = scores()
    return FixedRun(output, references(*inputs), kept, earlier_scores)


def judge_kept_scores(exercise: str, run: FixedRun, *, missing: str, stale: str, wrong: str,
                      diagnoses: Sequence[Callable] = ()) -> None:
    """The run's kept scores exist (else `missing`) and are its references' "scores", not
    those kept after the earlier call (`stale`) nor others (`diagnoses`, else `wrong`)."""
    if run.scores is None:
        fail(exercise, missing)
    judge(exercise, run.scores, {"correct": run.references["scores"],
                                 "stale": run.earlier_scores}, {"stale": stale}, wrong,
          diagnoses=diagnoses)
