"""Training pieces the main lesson teaches and the later lessons reuse.

`masked_loss` is the main lesson's Exercise 4, as its solution writes it; `tests/test_training.py`
checks the lesson's own definition against this one. `EpochTimes` times each epoch of `fit`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import keras
from keras import ops


def masked_loss(targets, logits):
    """Mean sparse cross-entropy (from logits) over the positions whose target is not padding."""
    per_token = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    mask = ops.cast(ops.not_equal(targets, 0), per_token.dtype)
    return ops.sum(per_token * mask) / ops.maximum(ops.sum(mask), 1.0)


def settings_folder(parent, *settings) -> Path:
    """A folder under `parent` of its own for each combination of `settings` (JSON values).

    Checkpoints saved under one vocabulary or model size mean nothing under another; kept
    apart, a run with other settings starts afresh instead of restoring them.
    """
    text = json.dumps(settings, sort_keys=True, default=str)
    return Path(parent) / hashlib.sha256(text.encode()).hexdigest()[:12]


class EpochTimes(keras.callbacks.Callback):
    """Wall-clock seconds of each epoch of `fit`, in `seconds`; the first also builds the graph."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)
