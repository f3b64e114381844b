"""Exercise 5 of the custom-loop lesson: the training step, its loss, gradients and updates."""


from __future__ import annotations

import warnings
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from captioning_course.check.core import (
    SelfCheckFailed,
    close,
    fail,
    fix_weights,
    judge,
    masked_loss_variants,
    one_line,
    print_pass,
    same_number,
    scalar,
)
from captioning_course.training import masked_loss

# Exercise 5: the training step

TRAIN_EXERCISE = "Exercise 5 (training step)"
# A batch as the lesson gives train_step: 4 images of 6 regions with 10 standardised channels
# (float32) and captions of 7 ids (int64) starting with <start> (2), padded with 0.
TRAIN_FEATURES = np.random.default_rng(51).normal(0, 1, (4, 6, 10)).astype("float32")
TRAIN_CAPTIONS = np.array([[2, 5, 7, 3, 0, 0, 0], [2, 4, 6, 8, 5, 3, 0],
                           [2, 6, 3, 0, 0, 0, 0], [2, 7, 7, 4, 5, 6, 3]], dtype="int64")
TRAIN_SIZES = {"embedding_dim": 5, "units": 6, "vocab_size": 9}
TRAIN_LEARNING_RATE = 0.5
# The check's encoder "drops" this fixed pattern in training mode (0 or 2, as a dropout of 0.5
# scales what it keeps), so the loss and the updates show whether the step ran in training mode.
TRAIN_DROPPED = np.random.default_rng(52).integers(0, 2, (6, TRAIN_SIZES["embedding_dim"])) * 2.0
TRAIN_MISTAKES = {
    "eval_mode": "the loss is the one with the encoder's dropout off: call the encoder with "
                 "training=True inside train_step",
    "unshifted": "the targets are not aligned with the logits: position t of teacher forcing "
                 "predicts word t + 1, so the targets are captions[:, 1:]",
    "padding_counted": "the loss counts the padding: use masked_loss(captions[:, 1:], logits), "
                       "the main lesson's masked loss",
    "mean_of_masked": "the loss is averaged over every position, padding included: use "
                      "masked_loss, which divides by the number of real tokens",
    "summed": "the loss is summed, not averaged over the real tokens: use masked_loss",
    "unmasked_sum": "the loss counts the padding: use masked_loss(captions[:, 1:], logits)",
    "per_caption": "the loss is averaged caption by caption: use masked_loss, which averages "
                   "over every real token of the batch",
    "logits_as_probabilities": "the loss reads the logits as probabilities: use masked_loss, "
                               "the cross-entropy from logits",
    "softmax_twice": "the loss applies a softmax to the logits first: give masked_loss the "
                     "logits teacher_forcing returns",
}


class CallLog:
    """What the check's models and optimizer were asked to do while train_step was traced."""

    def __init__(self):
        self.trainings: list = []  # the `training` of every encoder call
        self.applied: list[tuple[list, list | None]] = []  # (None-ness of grads, variables)


class RecordingEncoder(keras.Model):
    """A small encoder like the lesson's: a Dense layer with a ReLU and, in training mode, a
    fixed "dropout" pattern. It notes the `training` of every call, and holds a seed state
    (a non-trainable variable), as the lesson's Dropout does."""

    def __init__(self, embedding_dim, log, **kwargs):
        super().__init__(**kwargs)
        self.fc = keras.layers.Dense(embedding_dim, activation="relu")
        self.seed = keras.random.SeedGenerator(0)
        self.log = log

    def call(self, regions, training=None):
        self.log.trainings.append(training)
        encoded = self.fc(regions)
        return encoded * TRAIN_DROPPED.astype("float32") if training else encoded


class StepDecoder(keras.Model):
    """A small decoder with the lesson's interface: (word_ids, features, hidden) -> (logits,
    state, attention weights), and reset_state."""

    def __init__(self, embedding_dim, units, vocab_size, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim)
        self.step = keras.layers.Dense(units, activation="tanh")
        self.fc = keras.layers.Dense(vocab_size)

    def call(self, word_ids, features, hidden):
        words = keras.ops.reshape(self.embedding(word_ids), (-1, self.embedding.output_dim))
        context = keras.ops.mean(keras.ops.cast(features, "float32"), axis=1)
        state = self.step(keras.ops.concatenate([words, context, hidden], axis=-1))
        attention = keras.ops.ones_like(features[:, :, :1]) / features.shape[1]
        return self.fc(state), state, attention

    def reset_state(self, batch_size):
        return keras.ops.zeros((batch_size, self.units))


class RecordingSGD(keras.optimizers.SGD):
    """Plain SGD, whose updates are -learning_rate * gradient; it notes what it is asked to
    apply (apply_gradients calls apply)."""

    def __init__(self, log, **kwargs):
        super().__init__(**kwargs)
        self.log = log

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        variables = None if trainable_variables is None else list(trainable_variables)
        self.log.applied.append(([grad is None for grad in grads], variables))
        return super().apply(grads, variables)


def _training_setup() -> tuple:
    """The check's encoder, decoder and optimizer, built as start_training builds the lesson's,
    with fixed weights, and the log they share."""
    log = CallLog()
    sizes = TRAIN_SIZES
    encoder = RecordingEncoder(sizes["embedding_dim"], log)
    decoder = StepDecoder(sizes["embedding_dim"], sizes["units"], sizes["vocab_size"])
    decoder(tf.constant(TRAIN_CAPTIONS[:, :1]), encoder(tf.constant(TRAIN_FEATURES)),
            decoder.reset_state(len(TRAIN_CAPTIONS)))
    fix_weights(encoder, seed=5)
    fix_weights(decoder, seed=6)
    optimizer = RecordingSGD(log, learning_rate=TRAIN_LEARNING_RATE)
    optimizer.build(encoder.trainable_variables + decoder.trainable_variables)
    log.trainings.clear()
    return encoder, decoder, optimizer, log


def _reference_logits(encoder, decoder, training: bool):
    """Teacher forcing on the check's batch, computed here, and the variables it uses."""
    captions = TRAIN_CAPTIONS
    encoded = encoder(tf.constant(TRAIN_FEATURES), training=training)
    hidden = decoder.reset_state(len(captions))
    all_logits = []
    for position in range(1, captions.shape[1]):
        logits, hidden, _ = decoder(tf.constant(captions[:, position - 1:position]), encoded,
                                    hidden)
        all_logits.append(logits)
    return keras.ops.stack(all_logits, axis=1)


def _reference_step(encoder, decoder) -> tuple[dict, list[np.ndarray]]:
    """The right loss and each mistake's, and the right gradients of every trainable
    variable (encoder's, then decoder's), before any update."""
    variables = encoder.trainable_variables + decoder.trainable_variables
    targets = TRAIN_CAPTIONS[:, 1:]
    with tf.GradientTape() as tape:
        logits = _reference_logits(encoder, decoder, training=True)
        loss = masked_loss(tf.constant(targets), logits)  # the lesson's, as the package has it
    gradients = [np.asarray(tf.convert_to_tensor(g), dtype="float64")
                 for g in tape.gradient(loss, variables)]
    real = targets != 0
    logits = np.asarray(logits)
    variants = _loss_variants(targets, logits, real)
    unshifted = TRAIN_CAPTIONS[:, :-1]
    variants["unshifted"] = _loss_variants(unshifted, logits, unshifted != 0)["correct"]
    off = np.asarray(_reference_logits(encoder, decoder, training=False))
    variants["eval_mode"] = _loss_variants(targets, off, real)["correct"]
    return variants, gradients


def _loss_variants(targets: np.ndarray, logits: np.ndarray, real: np.ndarray) -> dict:
    """The masked loss of these logits and its typical mistakes' values."""
    return masked_loss_variants(targets, logits, real, {"padding_counted": np.ones_like(real)})


def _raised(error: BaseException) -> str:
    """What a train_step that raised did wrong, in one line."""
    text = str(error)
    if "No gradients provided for any variable" in text:
        return ("every gradient is None: compute the loss inside the `with tf.GradientTape() "
                "as tape:` block, so that the tape records what it differentiates")
    if "Only input tensors may be passed as positional arguments" in text:
        return ("a model was given training positionally: Keras takes only tensors "
                "positionally, so write encoder(features, training=True)")
    if "non-persistent GradientTape can only be used to compute one set" in text:
        return ("tape.gradient is called twice on one tape: ask for the gradients of all the "
                "variables in one call, encoder's and decoder's together")
    if "Unknown variable" in text or "does not belong to" in text:
        return ("the optimizer is given variables it does not update, such as a dropout's "
                "seed state: take the gradients of trainable_variables, not variables")
    if "numpy" in text and "Tensor" in text:
        return (f"train_step runs inside a tf.function, where tensors have no value to read: "
                f"return the loss tensor itself; it raised {one_line(error, 100)}")
    return f"train_step raised {one_line(error)}"


def train_step(fn: Callable) -> None:
    """train_step(encoder, decoder, optimizer, features, captions) -> loss, run once inside a
    tf.function (as the lesson's @tf.function runs it) on a batch of the lesson's dtypes, with
    a small encoder whose dropout pattern is fixed, a small decoder and plain SGD: the loss it
    returns and the update it makes must be the masked loss of teacher forcing with the
    encoder in training mode, and one SGD step along its gradients for every trainable
    variable of both models. Any way of writing it passes (apply or apply_gradients, lists or
    tuples, zip strict or not)."""
    exercise = TRAIN_EXERCISE
    encoder, decoder, optimizer, log = _training_setup()
    variants, gradients = _reference_step(encoder, decoder)
    log.trainings.clear()
    encoder_variables = encoder.trainable_variables
    variables = encoder_variables + decoder.trainable_variables
    before = [np.asarray(v, dtype="float64") for v in variables]
    inputs = tf.constant(TRAIN_FEATURES), tf.constant(TRAIN_CAPTIONS)
    try:
        with warnings.catch_warnings():  # Keras warns of missing gradients: the check names them
            warnings.simplefilter("ignore", UserWarning)
            result = tf.function(fn)(encoder, decoder, optimizer, *inputs)
    except SelfCheckFailed:
        raise
    except Exception as error:  # noqa: BLE001 (any mistake in the answer)
        fail(exercise, _raised(error), error)
    if not log.trainings:
        fail(exercise, "train_step never calls the encoder: encode the features with it, in "
                       "training mode, and give teacher_forcing what it returns")
    if any(training is not True and training != 1 for training in log.trainings):
        wrong = next(t for t in log.trainings if t is not True and t != 1)
        fail(exercise, f"the encoder is called with training={wrong}, so its dropout is off "
                       "during the step: pass training=True")
    loss = scalar(exercise, "train_step", result, "the loss of the batch")
    judge(exercise, loss, variants, TRAIN_MISTAKES,
          f"the returned loss is {loss:.4f}, not {variants['correct']:.4f}, the masked loss "
          "of teacher forcing on the encoded features: masked_loss(captions[:, 1:], logits)",
          same=same_number)
    updates = [np.asarray(v, dtype="float64") - b for v, b in zip(variables, before, strict=True)]
    expected = [-TRAIN_LEARNING_RATE * g for g in gradients]
    if all(close(u, e) for u, e in zip(updates, expected, strict=True)):
        print_pass(exercise, "the masked loss under the tape, with dropout on; the gradients of "
                             "both models' weights, applied by the optimizer")
        return
    fail(exercise, _update_problem(log, updates, expected, encoder_variables, variables))


def _update_problem(log: CallLog, updates: list, expected: list, encoder_variables: list,
                    variables: list) -> str:
    """Why the weights did not move by one SGD step along the loss's gradients."""
    if not log.applied or not any(np.any(u) for u in updates):
        return ("the loss is right, but the weights did not change: apply the gradients with "
                "optimizer.apply_gradients(...)")
    if len(log.applied) > 1:
        return (f"the optimizer is applied {len(log.applied)} times in one step: apply the "
                "gradients once")
    missing, given = log.applied[0]
    given = variables if given is None else given
    encoder_ids = {id(v) for v in encoder_variables}
    without = {id(v) for v, none in zip(given, missing, strict=False) if none}
    with_grads = {id(v) for v, none in zip(given, missing, strict=False) if not none}
    if encoder_ids & without:
        return ("the encoder's gradients are None: call the encoder inside the tape too, so "
                "that the tape records its operations")
    if without:
        return ("the decoder's gradients are None: run teacher forcing inside the tape, so "
                "that the tape records its operations")
    if not encoder_ids & with_grads:
        return ("the encoder's weights are not updated: take the gradients with respect to the "
                "encoder's trainable variables too, encoder.trainable_variables + "
                "decoder.trainable_variables")
    if not with_grads - encoder_ids:
        return ("the decoder's weights are not updated: take the gradients with respect to the "
                "decoder's trainable variables too")
    if all(close(u, -e) for u, e in zip(updates, expected, strict=True)):
        return "the weights move up the gradient: give the optimizer the gradients themselves"
    return ("the weights' updates are not one optimizer step along the loss's gradients: "
            "differentiate the loss you return with respect to every trainable variable, and "
            "pair each gradient with its own variable")
