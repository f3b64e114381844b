"""Exercises 1 and 2 of the custom-loop lesson: Bahdanau attention's scores, weights and
context vector."""


from __future__ import annotations

import numpy as np
import tensorflow as tf

from captioning_course.check.core import (
    as_arrays,
    calling,
    close,
    fail,
    fail_in_a_graph,
    fix_weights,
    locals_where_raised,
    one_line,
    print_pass,
    run_answer,
    run_in_a_graph,
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


