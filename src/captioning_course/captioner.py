"""The main lesson's captioner, built as its cells build it, for the lesson that scales it up.

The main lesson builds its model layer by layer where the student reads it. The at-scale lesson
needs the same model several times over (in another precision, on several devices), so it
builds it here, "as in the main lesson". `tests/test_captioner.py` loads the models the main
lesson saved and checks that these, given the same weights, compute the same outputs.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf
from keras import layers


@dataclasses.dataclass(frozen=True)
class Captioner:
    """The trainable half of the main lesson's captioner, over cached CNN features."""

    encoder_head: keras.Model  # CNN grid (rows, cols, channels) -> regions (R, width)
    training_model: keras.Model  # [CNN grid, caption ids] -> next-word logits
    step_model: keras.Model  # [word (1,), GRU state, regions] -> [logits, state, attention]


def build_captioner(vocabulary_size: int, caption_length: int, grid: tuple[int, int, int],
                    width: int) -> Captioner:
    """The main lesson's encoder head, training model and one-step decoder, sharing layers.

    Call it in a distribution strategy's scope to build the models on its devices. The output
    layer computes in float32 whatever the precision policy, so that the softmax over the
    vocabulary and the loss keep their precision under mixed precision.
    """
    rows, cols, channels = grid
    grid_input = keras.Input(shape=grid, name="cnn_features")
    regions = layers.Reshape((rows * cols, channels))(grid_input)
    regions = layers.LayerNormalization()(regions)
    encoder_head = keras.Model(grid_input, layers.Dense(width, activation="relu")(regions),
                               name="encoder_head")

    word_embedding = layers.Embedding(vocabulary_size, width)
    decoder_gru = layers.GRU(width, return_sequences=True, return_state=True)
    attention = layers.Attention()
    layer_norm = layers.LayerNormalization(axis=-1)
    output_layer = layers.Dense(vocabulary_size, dtype="float32")

    def next_word_logits(words, state, image_features):
        gru_output, next_state = decoder_gru(word_embedding(words), initial_state=state)
        context, weights = attention([gru_output, image_features], return_attention_scores=True)
        return output_layer(layer_norm(layers.Add()([gru_output, context]))), next_state, weights

    caption_input = keras.Input(shape=(caption_length,), name="caption")
    logits, _, _ = next_word_logits(caption_input, None, encoder_head(grid_input))
    training_model = keras.Model([grid_input, caption_input], logits, name="captioner")

    step_word = keras.Input(shape=(1,), name="word")
    step_state = keras.Input(shape=(width,), name="gru_state")
    step_features = keras.Input(shape=(rows * cols, width), name="image_features")
    step_model = keras.Model([step_word, step_state, step_features],
                             list(next_word_logits(step_word, step_state, step_features)),
                             name="decoder_step")
    return Captioner(encoder_head, training_model, step_model)


def first_state(step_model: keras.Model):
    """The zero GRU state a caption starts from, for `CaptionDecoder`'s `initial_state`."""
    width = step_model.inputs[1].shape[-1]
    return lambda features: tf.zeros([tf.shape(features)[0], width], step_model.outputs[1].dtype)
