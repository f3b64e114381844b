"""Self-checks for the lab exercises: run a student's object on a tiny fixed input.

Each check prints one line starting with "PASS" when the answer behaves like the solution,
and otherwise raises `SelfCheckFailed` with one line saying what is wrong and where to look,
so a lab stops at the exercise that needs work instead of failing later in a confusing way.
An exception raised inside the student's code becomes such a line too, naming the exception.
Checks take seconds on a CPU, need no dataset, and use public Keras APIs only.

The lessons call `check.NAME(...)`; each lesson's checks live in the module named after its
notebook (a package of one module per group of exercises, where they are many), and what they
share in `core`.
"""

from captioning_course.check.core import SelfCheckFailed
from captioning_course.check.image_captioning import (
    attention,
    decode,
    ds_fn,
    masked_loss,
    tokenizer,
)
from captioning_course.check.image_captioning_at_scale import (
    loss_scale_step,
    replica_loss,
    serving_function,
)
from captioning_course.check.image_captioning_custom_loop import (
    bahdanau_attention,
    decoder_step,
    teacher_forcing,
    train_step,
)
from captioning_course.check.image_captioning_transformer import (
    attend_with_cache,
    causal_mask,
    log_frequency_bias,
    scaled_dot_product_attention,
)

__all__ = [
    "SelfCheckFailed",
    "attend_with_cache",
    "attention",
    "bahdanau_attention",
    "causal_mask",
    "decode",
    "decoder_step",
    "ds_fn",
    "log_frequency_bias",
    "loss_scale_step",
    "masked_loss",
    "replica_loss",
    "scaled_dot_product_attention",
    "serving_function",
    "teacher_forcing",
    "tokenizer",
    "train_step",
]
