"""The main lesson's `choose_next`, for the lessons after it that decode word by word."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def choose_next(logits, banned, top_k, temperature):
    """The next word id of each caption, from (batch, vocabulary) logits.

    Banned ids never come out; top_k=1 is greedy, otherwise the id is drawn among the top_k
    most likely after dividing their logits by the temperature.
    """
    logits = np.where(banned, -np.inf, logits)
    if top_k == 1:
        return np.argmax(logits, axis=-1)
    top_logits, top_ids = tf.math.top_k(logits, k=top_k)
    picks = tf.random.categorical(top_logits / temperature, 1).numpy()
    return np.take_along_axis(top_ids.numpy(), picks, axis=-1)[:, 0]
