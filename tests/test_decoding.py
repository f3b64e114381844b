"""Compiled decoding: the lesson loop's greedy captions, sampling, beam search, graph mode."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from captioning_course.decoding import CaptionDecoder, Decoded
from captioning_course.gpu_on_cpu import opaque_to_xla
from captioning_course.labs import run_definitions
from conftest import REPO

VOCAB_SIZE, DIM, REGIONS, BATCH = 30, 16, 9, 12
VOCABULARY = ["", "[UNK]", "<start>", "<end>"] + [f"w{i}" for i in range(4, VOCAB_SIZE)]
BANNED = [0, 1, 2]
START_ID, END_ID = 2, 3
MAX_CAPTION_LEN = MAX_LENGTH = 12
# Chosen together with the seed: the captions of FEATURES then end after 0 to 11 words for
# some images and run to MAX_LENGTH for others (test_greedy_matches_the_lesson_loop checks).
WEIGHTS_SEED, WEIGHTS_GAIN, END_BIAS = 1, 4.0, 0.7
FEATURES = np.random.default_rng(0).normal(size=(BATCH, REGIONS, DIM)).astype("float32")


def build_step_model(as_on_a_gpu: bool = False) -> keras.Model:
    """The lesson's decoder step, with random weights large enough for varied captions.

    `as_on_a_gpu`: the GRU's outputs pass through an operation XLA cannot compile, in a layer
    marked as Keras marks a GRU that runs on cuDNN; the weights and the numbers are the same.
    """
    word = keras.Input(shape=(1,), name="word")
    state = keras.Input(shape=(DIM,), name="gru_state")
    features = keras.Input(shape=(REGIONS, DIM), name="image_features")
    gru_output, next_state = layers.GRU(DIM, return_sequences=True, return_state=True)(
        layers.Embedding(VOCAB_SIZE, DIM)(word), initial_state=state)
    if as_on_a_gpu:
        cudnn = layers.Lambda(lambda outputs: [opaque_to_xla(o) for o in outputs], name="cudnn")
        cudnn.supports_jit = False
        gru_output, next_state = cudnn([gru_output, next_state])
    context, attention = layers.Attention()([gru_output, features],
                                            return_attention_scores=True)
    output_layer = layers.Dense(VOCAB_SIZE)
    logits = output_layer(layers.LayerNormalization()(layers.Add()([gru_output, context])))
    model = keras.Model([word, state, features], [logits, next_state, attention])
    # Weights from numpy rather than Keras initialisers: the same on every Keras version.
    rng = np.random.default_rng(WEIGHTS_SEED)
    weights = []
    for w in model.get_weights():
        std = (WEIGHTS_GAIN if w.shape == (VOCAB_SIZE, DIM)  # the embedding
               else WEIGHTS_GAIN / np.sqrt(w.shape[0]) if w.ndim == 2 else 0.1)
        weights.append(rng.normal(0, std, w.shape).astype("float32"))
    model.set_weights(weights)
    kernel, bias = output_layer.get_weights()
    bias[END_ID] = END_BIAS
    output_layer.set_weights([kernel, bias])
    return model


# The main lesson's eager loop, as the students have it, from the lesson itself.
LESSON_LOOP = run_definitions(REPO / "solutions" / "image_captioning.ipynb",
                              ("choose_next", "decode"),
                              {"np": np, "tf": tf, "caption_length": MAX_CAPTION_LEN})
decode = LESSON_LOOP["decode"]


@pytest.fixture(scope="module")
def step_model() -> keras.Model:
    return build_step_model()


def make_decoder(step_model, **options) -> CaptionDecoder:
    return CaptionDecoder(
        lambda tokens, state, features: step_model([tokens, state, features], training=False),
        lambda features: tf.zeros([tf.shape(features)[0], DIM]),
        vocabulary=VOCABULARY, max_length=MAX_LENGTH, models=[step_model], **options)


@pytest.fixture(scope="module")
def decoder(step_model) -> CaptionDecoder:
    return make_decoder(step_model)


@pytest.fixture(scope="module")
def greedy(decoder) -> Decoded:
    return decoder.greedy(FEATURES)


def teacher_forced(step_model, decoded: Decoded, length_penalty=0.6):
    """Each caption's GNMT score and attention, feeding the step model its words and <end>.

    A caption of MAX_LENGTH words never chose <end>, so its score has no <end> term.
    """
    ids, lengths = decoded.ids.numpy(), decoded.lengths.numpy()
    batch = len(ids)
    targets = np.concatenate([ids, np.zeros((batch, 1), ids.dtype)], axis=1)
    targets[np.arange(batch), lengths] = END_ID
    counted = np.arange(MAX_LENGTH + 1)[None, :] <= np.minimum(lengths, MAX_LENGTH - 1)[:, None]
    tokens, state = np.full((batch, 1), START_ID), np.zeros((batch, DIM), "float32")
    scores, attention = np.zeros(batch), []
    for t in range(MAX_LENGTH):
        logits, state, weights = step_model.predict_on_batch([tokens, state, FEATURES])
        log_probs = tf.nn.log_softmax(logits[:, -1, :]).numpy()
        scores += np.where(counted[:, t], log_probs[np.arange(batch), targets[:, t]], 0.0)
        attention.append(weights[:, 0])
        tokens = targets[:, t:t + 1]
    attention = np.stack(attention, axis=1)
    return (scores / ((5 + lengths) / 6) ** length_penalty,
            [weights[:n] for weights, n in zip(attention, lengths, strict=True)])


def assert_consistent(decoder: CaptionDecoder, decoded: Decoded, batch=BATCH):
    ids, lengths, attention = (decoded.ids.numpy(), decoded.lengths.numpy(),
                               decoded.attention.numpy())
    assert ids.shape == (batch, MAX_LENGTH) and ids.dtype == np.int32
    assert lengths.shape == (batch,) and lengths.dtype == np.int32
    assert attention.shape == (batch, MAX_LENGTH, REGIONS) and attention.dtype == np.float32
    assert ((0 <= lengths) & (lengths <= MAX_LENGTH)).all()
    for row, n, weights in zip(ids, lengths, attention, strict=True):
        assert not np.isin(row[:n], BANNED + [END_ID]).any(), row
        assert (row[n:] == 0).all() and (weights[n:] == 0).all()
        np.testing.assert_allclose(weights[:n].sum(axis=1), 1.0, rtol=1e-5)  # a softmax
    texts = decoder.text(decoded)
    assert [len(text.split()) for text in texts] == lengths.tolist()
    maps = decoder.attention_maps(decoded)
    assert [m.shape for m in maps] == [(n, REGIONS) for n in lengths]


def test_greedy_matches_the_lesson_loop(step_model, decoder, greedy):
    texts, attention = decode(FEATURES, step_model, VOCABULARY)
    assert decoder.text(greedy) == texts
    for ours, theirs in zip(decoder.attention_maps(greedy), attention, strict=True):
        assert ours.shape == (len(theirs), REGIONS)
        np.testing.assert_allclose(ours, theirs.reshape(ours.shape), rtol=1e-6, atol=1e-7)
    lengths = greedy.lengths.numpy()
    # Both ways a caption stops: <end> (after no word, too) or MAX_LENGTH words.
    assert (lengths == MAX_LENGTH).any() and (lengths == 0).any()
    assert ((0 < lengths) & (lengths < MAX_LENGTH)).sum() >= 3, lengths


def test_a_caption_does_not_depend_on_the_rest_of_the_batch(decoder, greedy):
    alone = [decoder.text(decoder.greedy(FEATURES[i:i + 1]))[0] for i in range(BATCH)]
    assert alone == decoder.text(greedy)
    beams = decoder.text(decoder.beam_search(FEATURES))
    assert [decoder.text(decoder.beam_search(FEATURES[i:i + 1]))[0] for i in (0, 5)] == \
        [beams[0], beams[5]]


@pytest.mark.parametrize("method", ["greedy", "sample", "beam_search"])
def test_results_are_consistent_and_never_banned(decoder, method):
    # All of the vocabulary among the sampled candidates, so that the banned ids are too.
    options = {"sample": {"top_k": VOCAB_SIZE, "seed": 1},
               "beam_search": {"beam_width": 5}}.get(method, {})
    assert_consistent(decoder, getattr(decoder, method)(FEATURES, **options))


def test_beam_width_one_is_greedy(decoder, greedy):
    beam = decoder.beam_search(FEATURES, beam_width=1)
    assert decoder.text(beam) == decoder.text(greedy)
    np.testing.assert_array_equal(beam.lengths, greedy.lengths)
    np.testing.assert_allclose(beam.attention, greedy.attention, rtol=1e-6, atol=1e-7)


def test_wider_beams_find_captions_at_least_as_likely_as_greedy(step_model, decoder, greedy):
    beam = decoder.beam_search(FEATURES, beam_width=3, length_penalty=0.6)
    beam_scores, beam_attention = teacher_forced(step_model, beam)
    greedy_scores, _ = teacher_forced(step_model, greedy)
    assert (beam_scores >= greedy_scores - 1e-4).all(), (beam_scores, greedy_scores)
    assert (beam_scores > greedy_scores + 1e-3).any()  # and it does search
    # Each word's attention is the one its own beam computed, followed back through parents.
    for ours, forced in zip(decoder.attention_maps(beam), beam_attention, strict=True):
        np.testing.assert_allclose(ours, forced, rtol=1e-5, atol=1e-6)
    assert_consistent(decoder, beam)


def test_sampling_is_reproducible_with_a_seed(decoder, greedy):
    first = decoder.text(decoder.sample(FEATURES, top_k=5, temperature=1.5, seed=7))
    assert decoder.text(decoder.sample(FEATURES, top_k=5, temperature=1.5, seed=7)) == first
    assert decoder.text(decoder.sample(FEATURES, top_k=5, temperature=1.5, seed=8)) != first
    assert first != decoder.text(greedy)
    for seed in (None, 3):
        assert decoder.text(decoder.sample(FEATURES, top_k=1, seed=seed)) == \
            decoder.text(greedy)


def test_caption_strings_in_a_tf_function_equal_text(decoder, greedy):
    @tf.function
    def captions(features):
        decoded = decoder.greedy(features)
        return decoder.caption_strings(decoded.ids, decoded.lengths)

    strings = [s.decode() for s in captions(tf.constant(FEATURES)).numpy()]
    assert strings == decoder.text(greedy)
    assert "" in strings  # a caption of no words, joined with the others


def test_a_saved_model_captions_like_the_decoder(tmp_path, step_model, decoder, greedy):
    module = tf.Module()
    module.step_model = step_model  # tracked, so that its weights are saved

    @tf.function(input_signature=[tf.TensorSpec([None, REGIONS, DIM], tf.float32)])
    def caption(features):
        decoded = decoder.beam_search(features, beam_width=2)
        return decoder.caption_strings(decoded.ids, decoded.lengths)

    module.caption = caption
    tf.saved_model.save(module, str(tmp_path / "captioner"))
    reloaded = tf.saved_model.load(str(tmp_path / "captioner"))
    strings = [s.decode() for s in reloaded.caption(tf.constant(FEATURES)).numpy()]
    assert strings == decoder.text(decoder.beam_search(FEATURES, beam_width=2))


def test_an_empty_batch_gives_empty_results(decoder):
    for decoded in (decoder.greedy(FEATURES[:0]), decoder.beam_search(FEATURES[:0])):
        assert_consistent(decoder, decoded, batch=0)


def test_float16_features_are_decoded(decoder):
    half = FEATURES.astype("float16")
    for decoded in (decoder.greedy(half), decoder.sample(half, top_k=3, seed=0),
                    decoder.beam_search(half, beam_width=2)):
        lengths = decoded.lengths.numpy()
        assert ((0 <= lengths) & (lengths <= MAX_LENGTH)).all()
        assert decoded.ids.shape == (BATCH, MAX_LENGTH)


@pytest.mark.parametrize("call,bad", [
    (lambda d: d.sample(FEATURES, top_k=0), "top_k must be .* not 0"),
    (lambda d: d.sample(FEATURES, top_k=VOCAB_SIZE + 1), "top_k must be .* not 31"),
    (lambda d: d.sample(FEATURES, top_k=2.5), "top_k must be .* not 2.5"),
    (lambda d: d.sample(FEATURES, top_k=3, temperature=0.0), "temperature .* not 0.0"),
    (lambda d: d.sample(FEATURES, top_k=3, temperature=-1), "temperature .* not -1"),
    (lambda d: d.beam_search(FEATURES, beam_width=0), "beam_width .* not 0"),
    (lambda d: d.beam_search(FEATURES, length_penalty=float("nan")), "length_penalty .* nan"),
])
def test_invalid_arguments_are_refused(decoder, call, bad):
    with pytest.raises(ValueError, match=bad):
        call(decoder)


@pytest.mark.parametrize("options,missing", [
    ({"end": "<stop>"}, "'<stop>'"),
    ({"banned": ("", "[UNK]", "<start>", "<pad>")}, "'<pad>'"),
    ({"max_length": 0}, "max_length .* not 0"),
])
def test_invalid_decoders_are_refused(step_model, options, missing):
    options = {"max_length": MAX_LENGTH, **options}
    with pytest.raises(ValueError, match=missing):
        CaptionDecoder(lambda *args: None, lambda features: None, vocabulary=VOCABULARY,
                       **options)


@pytest.fixture(scope="module")
def as_on_a_gpu(step_model) -> keras.Model:
    model = build_step_model(as_on_a_gpu=True)
    model.set_weights(step_model.get_weights())
    return model


def test_greedy_decoding_compiles_with_xla_where_every_layer_can(decoder):
    assert decoder.jit_compile is True


def test_a_layer_xla_cannot_compile_is_named_and_decoding_runs_without_xla(as_on_a_gpu, capsys):
    decoder = make_decoder(as_on_a_gpu)
    assert decoder.jit_compile is False
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "without XLA" in printed and "cudnn (Lambda)" in printed
    with pytest.raises(tf.errors.InvalidArgumentError, match="unsupported operations"):
        make_decoder(as_on_a_gpu, jit_compile=True).greedy(FEATURES)  # what a GPU would meet


def test_without_xla_the_captions_are_the_same(decoder, as_on_a_gpu, greedy):
    played = make_decoder(as_on_a_gpu)
    assert played.text(played.greedy(FEATURES)) == decoder.text(greedy)
    assert played.text(played.beam_search(FEATURES, 3)) == decoder.text(
        decoder.beam_search(FEATURES, 3))
    assert played.text(played.sample(FEATURES, top_k=5, seed=3)) == decoder.text(
        decoder.sample(FEATURES, top_k=5, seed=3))


def test_an_export_without_xla_writes_the_same_captions(decoder, as_on_a_gpu, greedy, tmp_path):
    played = make_decoder(as_on_a_gpu)
    export = tf.Module()
    export.model = as_on_a_gpu

    @tf.function(input_signature=[tf.TensorSpec([None, REGIONS, DIM], tf.float32)])
    def serve(features):
        decoded = played.greedy(features)
        return played.caption_strings(decoded.ids, decoded.lengths)

    export.serve = serve
    tf.saved_model.save(export, str(tmp_path / "export"))
    reloaded = tf.saved_model.load(str(tmp_path / "export"))
    captions = [text.decode() for text in reloaded.serve(FEATURES).numpy()]
    assert captions == decoder.text(greedy)


def test_auto_needs_the_models_the_step_calls(step_model):
    with pytest.raises(ValueError, match="models="):
        CaptionDecoder(lambda *args: None, lambda features: None, vocabulary=VOCABULARY,
                       max_length=MAX_LENGTH)
