"""The at-scale lesson's self-checks: the lesson's answers pass, typical mistakes are named."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from captioning_course import check
from conftest import REPO, edited_definitions

LESSON = REPO / "notebooks" / "image_captioning_at_scale.ipynb"
BASE = {"tf": tf, "keras": keras, "ops": ops, "np": np}


def lesson_answer(name, *replace):
    return edited_definitions(LESSON, (name,), dict(BASE), *replace)[name]


@pytest.mark.parametrize("replace", [
    (),
    (("scale / 2", "scale * 0.5"),),
    (("[g / scale for g in scaled_gradients]", "[g * (1 / scale) for g in scaled_gradients]"),),
])
def test_the_lesson_s_loss_scaling_and_other_forms_pass(replace, capsys):
    check.loss_scale_step(lesson_answer("loss_scale_step", *replace))
    assert capsys.readouterr().out.startswith("PASS Exercise 1")


@pytest.mark.parametrize("replace, message", [
    (("[g / scale for g in scaled_gradients]", "list(scaled_gradients)"),
     "not divided by the scale"),
    (("return None, scale / 2, 0", "return list(scaled_gradients), scale / 2, 0"),
     "applied on an overflow"),
    (("return None, scale / 2, 0", "return None, scale, 0"), "must be halved"),
    (("return None, scale / 2, 0", "return None, scale / 2, good_steps"), "starts again at 0"),
    (("good_steps + 1 == growth_steps", "good_steps == growth_steps"), "too early or too late"),
    (("tf.math.is_finite(g)", "~tf.math.is_inf(g)"), "NaN"),
])
def test_loss_scaling_mistakes_are_named(replace, message):
    with pytest.raises(check.SelfCheckFailed, match=message):
        check.loss_scale_step(lesson_answer("loss_scale_step", replace))


@pytest.mark.parametrize("replace", [
    (),
    (("ops.sum(per_token * mask) / global_tokens",
      "tf.reduce_sum(per_token * mask) * (1.0 / global_tokens)"),),
])
def test_the_lesson_s_replica_loss_and_other_forms_pass(replace, capsys):
    check.replica_loss(lesson_answer("replica_loss", *replace))
    assert capsys.readouterr().out.startswith("PASS Exercise 2")


@pytest.mark.parametrize("replace, message", [
    (("ops.sum(per_token * mask) / global_tokens", "ops.sum(per_token * mask) / ops.sum(mask)"),
     "not this replica's own"),
    (("ops.sum(per_token * mask) / global_tokens", "ops.sum(per_token) / global_tokens"),
     "padding counted"),
    (("ops.sum(per_token * mask) / global_tokens", "ops.sum(per_token * mask)"),
     "divide the masked sum by global_tokens"),
    (("ops.sum(per_token * mask) / global_tokens", "per_token * mask / global_tokens"),
     "one number per replica"),
])
def test_replica_loss_mistakes_are_named(replace, message):
    with pytest.raises(check.SelfCheckFailed, match=message):
        check.replica_loss(lesson_answer("replica_loss", replace))


# A stand-in captioner for the serving function: its caption names the prepared photo's mean
# brightness, so the decoding and the preparation of every photo decide it.
WORDS = tf.constant([f"bright{level}" for level in range(10)])
SIZE = 8


def prepare_image(pixels):
    return tf.image.resize(pixels, (SIZE, SIZE)) / 255.0


def caption_of(images):
    images = tf.ensure_shape(images, [None, SIZE, SIZE, 3])  # as an encoder's input is
    levels = tf.cast(tf.clip_by_value(tf.reduce_mean(images, axis=[1, 2, 3]) * 10, 0, 9),
                     tf.int32)
    return tf.gather(WORDS, levels)


def caption_pixels(photo):
    return caption_of(prepare_image(tf.constant(photo, tf.float32))[None]).numpy()[0].decode()


def serving(read):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def caption_encoded_photos(encoded_photos):
        images = tf.map_fn(read, encoded_photos, fn_output_signature=tf.float32)
        return caption_of(images)
    return caption_encoded_photos


def test_the_serving_function_passes(capsys):
    check.serving_function(serving(lambda data: prepare_image(
        tf.io.decode_image(data, channels=3, expand_animations=False))), caption_pixels)
    assert capsys.readouterr().out.startswith("PASS Exercise 3")


@pytest.mark.parametrize("read, message", [
    (lambda data: prepare_image(tf.io.decode_image(data, expand_animations=False)),
     "3 channels"),
    (lambda data: prepare_image(tf.io.decode_image(data, channels=3)), "expand_animations"),
    (lambda data: prepare_image(tf.io.decode_image(data, channels=3, expand_animations=False))
     * 255.0, "prepare each photo exactly as prepare_image"),
])
def test_serving_mistakes_are_named(read, message):
    with pytest.raises(check.SelfCheckFailed, match=message):
        check.serving_function(serving(read), caption_pixels)


def test_photos_stacked_before_they_are_resized_are_named():
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def stacked_first(encoded_photos):
        photos = tf.map_fn(lambda d: tf.cast(tf.io.decode_image(
            d, channels=3, expand_animations=False), tf.float32), encoded_photos,
            fn_output_signature=tf.float32)
        return caption_of(prepare_image(photos))

    with pytest.raises(check.SelfCheckFailed, match="before they are stacked"):
        check.serving_function(stacked_first, caption_pixels)
