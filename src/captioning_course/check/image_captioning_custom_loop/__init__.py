"""The self-checks of image_captioning_custom_loop, the custom training loop, one module per
group of exercises: `attention` (1 and 2: scores, weights, context), `decoder` (3 and 4: one
decoder step, teacher forcing) and `training` (5: the training step)."""

from captioning_course.check.image_captioning_custom_loop.attention import bahdanau_attention
from captioning_course.check.image_captioning_custom_loop.decoder import (
    decoder_step,
    teacher_forcing,
)
from captioning_course.check.image_captioning_custom_loop.training import train_step

__all__ = ["bahdanau_attention", "decoder_step", "teacher_forcing", "train_step"]
