"""Self-checks of the at-scale lesson: loss scaling, each replica's share of the loss, and
the exported captioner's serving function."""

from __future__ import annotations

import io
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from captioning_course.check.core import fail, one_line, print_pass, run_answer

SCALING = "Exercise 1 (loss_scale_step)"
REPLICAS = "Exercise 2 (replica_loss)"
SERVING = "Exercise 3 (caption_encoded_photos)"
GROWTH_STEPS = 3
# Scaled gradients of two variables, step by step: finite steps that double the scale, then
# an inf, a NaN, and an overflow right after a doubling.
STEPS = [
    [[1.0, 2.0], [4.0]], [[2.0, -2.0], [8.0]], [[4.0, 4.0], [-4.0]], [[2.0, 2.0], [2.0]],
    [[np.inf, 1.0], [1.0]], [[1.0, 1.0], [np.nan]],
    [[2.0, 6.0], [2.0]], [[3.0, 3.0], [3.0]], [[8.0, 8.0], [8.0]], [[-np.inf, 0.0], [0.0]],
    [[6.0, 2.0], [4.0]],
]


def _keras_trajectory(initial_scale: float) -> list[tuple[list[np.ndarray] | None, float, int]]:
    """What Keras's LossScaleOptimizer does with STEPS: the applied gradients (None when
    skipped), the scale and the count of good steps after each."""
    variables = [keras.Variable(np.zeros(2, "float32")), keras.Variable(np.zeros(1, "float32"))]
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(learning_rate=1.0), initial_scale=initial_scale,
        dynamic_growth_steps=GROWTH_STEPS)
    trajectory = []
    for gradients in STEPS:
        before = [v.numpy().copy() for v in variables]
        optimizer.apply([tf.constant(g, tf.float32) for g in gradients], variables)
        applied = [b - v.numpy() for b, v in zip(before, variables, strict=True)]
        skipped = all(not np.any(a) for a in applied)
        trajectory.append((None if skipped else applied, float(optimizer.dynamic_scale.numpy()),
                           int(optimizer.step_counter.numpy())))
    return trajectory


def _mistake(step: int, expected, got, scale: float) -> str:
    (want_grads, want_scale, want_good), (grads, new_scale, good) = expected, got
    finite = want_grads is not None
    if not finite and grads is not None:
        if not all(np.all(np.isfinite(g)) for g in STEPS[step][0] + STEPS[step][1]) \
                and any(np.isnan(g).any() for g in STEPS[step][1]):
            return "a NaN gradient was not caught: test for inf and NaN (tf.math.is_finite)"
        return "the update was applied on an overflow step: return None for the gradients"
    if finite and grads is None:
        return "a finite step was skipped: only an inf or a NaN skips the update"
    if not finite and new_scale != want_scale:
        return "on an overflow the scale must be halved"
    if not finite and good != want_good:
        return "after an overflow the count of good steps starts again at 0"
    if finite:
        wanted = [np.asarray(g) for g in want_grads]
        if not all(np.allclose(g, w, rtol=1e-5) for g, w in zip(grads, wanted, strict=True)):
            if all(np.allclose(g, w * scale, rtol=1e-5) for g, w in zip(grads, wanted,
                                                                        strict=True)):
                return "the gradients were not divided by the scale"
            return "the gradients returned are not the scaled ones divided by the scale"
    if new_scale > want_scale or (new_scale < want_scale and finite):
        return (f"the scale doubles on the {GROWTH_STEPS}th finite step in a row, counting "
                "from the last change: yours changed one step too early or too late")
    if good != want_good:
        return "the count of good steps: +1 on a finite step, back to 0 when the scale changes"
    return "the scale or the count of good steps differs from Keras's LossScaleOptimizer"


def loss_scale_step(fn: Callable) -> None:
    """The answer follows Keras's LossScaleOptimizer step for step."""
    initial = 16.0
    scale, good = initial, 0
    for step, (expected, gradients) in enumerate(zip(_keras_trajectory(initial), STEPS,
                                                     strict=True)):
        scaled = [tf.constant(g, tf.float32) for g in gradients]
        result = run_answer(SCALING, "loss_scale_step", fn, scaled, scale, good, GROWTH_STEPS)
        if not isinstance(result, tuple | list) or len(result) != 3:
            fail(SCALING, "return a tuple (gradients or None, new scale, new count of good steps)")
        grads, new_scale, new_good = result
        grads = None if grads is None else [np.asarray(g, "float32") for g in grads]
        got = (grads, float(np.asarray(new_scale)), int(np.asarray(new_good)))
        want = (expected[0], expected[1], expected[2])
        same_grads = (got[0] is None) == (want[0] is None) and (got[0] is None or all(
            np.allclose(g, w, rtol=1e-5) for g, w in zip(got[0], want[0], strict=True)))
        if not (same_grads and got[1] == want[1] and got[2] == want[2]):
            fail(SCALING, f"step {step + 1}: {_mistake(step, want, got, scale)}")
        scale, good = got[1], got[2]
    print_pass(SCALING, "skips and halves on inf and NaN, unscales, and doubles as Keras does")


def _per_token_losses(targets: np.ndarray, logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]


def replica_loss(fn: Callable) -> None:
    """Summed over shares of a batch, the answer is the whole batch's masked mean."""
    rng = np.random.default_rng(7)
    targets = rng.integers(1, 9, (6, 5))
    for row, real in enumerate([5, 4, 2, 1, 3, 5]):
        targets[row, real:] = 0
    logits = rng.normal(scale=2.0, size=(6, 5, 9)).astype("float32")
    per_token, mask = _per_token_losses(targets, logits), targets != 0
    tokens = float(mask.sum())
    shares = [slice(0, 1), slice(1, 6)]

    def share_sum(parts: list[slice]) -> float:
        values = []
        for part in parts:
            # float32 targets, as fit passes them
            value = run_answer(REPLICAS, "replica_loss", fn,
                               tf.constant(targets[part], tf.float32),
                               tf.constant(logits[part]), tf.constant(tokens))
            if np.asarray(value).size != 1:
                fail(REPLICAS, "return one number per replica, not one per caption or token")
            values.append(float(np.asarray(value)))
        return sum(values)

    expected = float(per_token[mask].sum()) / tokens
    got = share_sum(shares)
    if np.isclose(share_sum([slice(0, 6)]), expected, rtol=1e-4) \
            and np.isclose(got, expected, rtol=1e-4):
        print_pass(REPLICAS, "the replicas' shares add up to the global masked mean")
        return
    mistakes = [
        (sum(per_token[p][mask[p]].sum() / mask[p].sum() for p in shares),
         "divide by global_tokens, the real tokens of the whole batch, not this replica's "
         "own: summed over replicas, the means add up to N times the mean"),
        (sum(per_token[p].sum() for p in shares) / tokens,
         "padding counted: mask the positions whose target is 0"),
        (float(per_token[mask].sum()) / targets.size,
         "divide by global_tokens, the real tokens, not by the number of positions"),
        (float(per_token[mask].sum()), "divide the masked sum by global_tokens"),
    ]
    for value, message in mistakes:
        if np.isclose(got, value, rtol=1e-4):
            fail(REPLICAS, message)
    fail(REPLICAS, f"expected the shares to add up to {expected:.4f}, got {got:.4f}: the masked "
                   "sum of this replica's token losses (from logits) over global_tokens")


def _photos() -> dict[str, bytes]:
    rng = np.random.default_rng(3)

    def encoded(image: Image.Image, kind: str, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, kind, **options)
        return buffer.getvalue()

    rgb = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    gray = Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8), "L")
    rgba = Image.fromarray(rng.integers(0, 256, (25, 35, 4), dtype=np.uint8), "RGBA")
    frames = [Image.fromarray(np.full((20, 20, 3), value, np.uint8)) for value in (40, 220)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    return {"an RGB PNG": encoded(rgb, "PNG"), "a JPEG": encoded(rgb, "JPEG"),
            "a grayscale PNG": encoded(gray, "PNG"), "a PNG with transparency":
            encoded(rgba, "PNG"), "an animated GIF": gif.getvalue()}


def serving_function(fn: Callable, caption_pixels: Callable) -> None:
    """The serving function captions photos of every kind and size as the notebook does."""
    photos = _photos()
    expected = {name: caption_pixels(tf.io.decode_image(data, channels=3,
                                                        expand_animations=False).numpy())
                for name, data in photos.items()}
    for name, data in photos.items():
        try:
            result = fn(tf.constant([data]))
        except Exception as error:  # noqa: BLE001 (any mistake in the answer)
            hint = {"a grayscale PNG": "decode every photo with 3 channels",
                    "an animated GIF": "an animated GIF gives its frames: decode with "
                                       "expand_animations=False"}.get(name, "")
            if "no shape" in str(error):  # decode_image's rank is unknown until then
                hint = ("decode with expand_animations=False: without it a photo may be an "
                        "animation of frames, of unknown rank")
            fail(SERVING, f"{name} fails: {one_line(error)}" + (f"; {hint}" if hint else ""))
        texts = np.asarray(result)
        if texts.shape != (1,) or texts.dtype != object:
            fail(SERVING, f"return a (batch,) tf.string tensor, one caption per photo, not "
                          f"{type(result).__name__} of shape {texts.shape}")
        if texts[0].decode() != expected[name]:
            fail(SERVING, f"{name} is captioned {texts[0].decode()!r}, the notebook writes "
                          f"{expected[name]!r}: prepare each photo exactly as prepare_image does")
    try:
        batch = np.asarray(fn(tf.constant(list(photos.values()))))
    except Exception as error:  # noqa: BLE001
        fail(SERVING, f"photos of different sizes in one batch fail: {one_line(error)}; prepare "
                      "(resize) each photo inside the map, before they are stacked")
    if [text.decode() for text in batch] != list(expected.values()):
        fail(SERVING, "a batch of photos is not captioned as each photo alone")
    print_pass(SERVING, "every kind and size of photo, alone or in a batch, captioned as the "
                        "notebook does")
