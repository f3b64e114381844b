"""Compiled, batched caption decoding: greedy, top-k sampling and beam search.

The lessons decode with a readable eager loop that calls the step model once per word and
brings every chosen id back to Python. That is fine for one photo, slow for an evaluation set
and impossible inside an exported SavedModel. Here each strategy runs a whole batch in one
`tf.function`: a `tf.while_loop` calls the step model until every caption has ended or has
`max_length` words, and the ids, lengths and attention stay tensors. Only `text` and
`attention_maps` go back to Python; `caption_strings` builds the strings in the graph, for a
`tf.function` that is exported.

Greedy decoding writes exactly the lesson loop's captions: the same banned ids, float32
logits and argmax, `<end>` left out of the caption, `max_length` words when it never ends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

# step(tokens (batch, 1) int32, state, features) -> (logits, new state, attention weights)
StepFn = Callable[[tf.Tensor, Any, tf.Tensor], tuple[tf.Tensor, Any, tf.Tensor]]
NEG_INF = float("-inf")
PAD_ID = 0  # what a finished caption holds after its end; also the id a finished beam extends with


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A batch of captions as tensors (symbolic ones when decoded inside a `tf.function`)."""

    ids: tf.Tensor  # (batch, max_length) int32 word ids; 0 after the end, <end> not included
    lengths: tf.Tensor  # (batch,) int32, number of words
    attention: tf.Tensor  # (batch, max_length, R) float32 per word over R regions; 0 after the end


class CaptionDecoder:
    """Greedy, sampled and beam-search captions of a batch of encoded images, compiled.

    `step(tokens, state, features)` takes int32 word ids (batch, 1), the state (any nest of
    tensors with the batch first) and the image features (batch first, passed as given, any
    dtype), and returns logits (batch, 1, V) or (batch, V), the new state and the attention
    weights (batch, 1, R) or (batch, R); V is len(vocabulary). A Keras step model fits as
    `lambda tokens, state, features: model([tokens, state, features], training=False)`.
    `initial_state(features)` returns the state for a batch of features. `features` are
    (batch, regions, ...): the attention weights are over their second axis.

    `jit_compile` has XLA compile greedy decoding, loop included: on a 2-core CPU it runs the
    lesson's captioner about twice as fast as TensorFlow's graph executor, which pays a fixed
    cost for each small operation of each step. With "auto" (the default), XLA compiles it
    only if every layer of `models`, the Keras models the step calls, says it can
    (`supports_jit`), as Keras's own `jit_compile="auto"` decides; otherwise one printed line
    names the layers and the loop runs in the graph executor. On a GPU, Keras runs a GRU
    through cuDNN, which XLA cannot compile, and marks it so. Sampling (its `top_k` is a
    tensor, and XLA needs it fixed) and beam search (its bookkeeping) always run in the graph
    executor.

    The new state is cast back to the initial state's dtypes, so that a float16 step under
    mixed precision keeps the loop's variables of one type.
    """

    def __init__(self, step: StepFn, initial_state: Callable[[tf.Tensor], Any], *,
                 vocabulary: Sequence[str], max_length: int, start: str = "<start>",
                 end: str = "<end>", banned: Sequence[str] = ("", "[UNK]", "<start>"),
                 jit_compile: bool | str = "auto", models: Sequence[Any] = ()):
        vocabulary = [str(word) for word in vocabulary]
        for word in (start, end, *banned):
            if word not in vocabulary:
                raise ValueError(f"the vocabulary has no {word!r}; it needs the start and end "
                                 "words and every banned word")
        if isinstance(max_length, bool) or not isinstance(max_length, int | np.integer) \
                or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, not {max_length!r}")
        self.vocabulary = vocabulary
        self.max_length = int(max_length)
        self.start_id = vocabulary.index(start)
        self.end_id = vocabulary.index(end)
        self.banned_ids = tuple(sorted({vocabulary.index(word) for word in banned}))
        self._step = step
        self._initial_state = initial_state
        if jit_compile == "auto":
            jit_compile = _xla_compiles(models)
        elif not isinstance(jit_compile, bool):
            raise ValueError(f'jit_compile must be True, False or "auto", not {jit_compile!r}')
        self.jit_compile = jit_compile
        # Built once; reduce_retracing traces a second batch size with the batch left open,
        # so evaluation batches of any size then share one graph instead of one each.
        self._greedy_fn = tf.function(self._greedy, reduce_retracing=True,
                                      jit_compile=jit_compile)
        self._sample_fn = tf.function(self._sample, reduce_retracing=True)
        self._beam_fn = tf.function(self._beam_search, reduce_retracing=True)

    # Public methods: validate in Python, then run the compiled loop.

    def greedy(self, features) -> Decoded:
        """The most likely word at each step (argmax, no randomness), as the lesson's loop."""
        return Decoded(*self._greedy_fn(tf.convert_to_tensor(features)))

    def sample(self, features, top_k: int, temperature: float = 1.0,
               seed: int | None = None) -> Decoded:
        """Each word drawn from the `top_k` likeliest, their logits divided by `temperature`.

        With a `seed` the draws are stateless, so the same seed gives the same captions for
        the same features; without one they come from TensorFlow's global random state.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) \
                or not 1 <= top_k <= len(self.vocabulary):
            raise ValueError(f"top_k must be an integer from 1 to the vocabulary size "
                             f"{len(self.vocabulary)}, not {top_k!r}")
        if not np.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number, not {temperature!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
            raise ValueError(f"seed must be an integer or None, not {seed!r}")
        # Tensors rather than Python numbers, so that new values do not trace the loop again.
        seed_tensor = tf.constant(0 if seed is None else seed, tf.int64)
        return Decoded(*self._sample_fn(
            tf.convert_to_tensor(features), tf.constant(top_k, tf.int32),
            tf.constant(temperature, tf.float32), seed_tensor, seed is not None))

    def beam_search(self, features, beam_width: int = 3, length_penalty: float = 0.6) -> Decoded:
        """The best of `beam_width` beams per image, ranked by the GNMT length penalty.

        The beams are ranked by summed log-probability while decoding; the final choice
        divides it by ((5 + words) / 6) ** length_penalty, which favours longer captions as
        length_penalty grows (0 compares the plain log-probabilities).
        """
        if isinstance(beam_width, bool) or not isinstance(beam_width, int | np.integer) \
                or beam_width < 1:
            raise ValueError(f"beam_width must be a positive integer, not {beam_width!r}")
        if not np.isfinite(length_penalty):
            raise ValueError(f"length_penalty must be a finite number, not {length_penalty!r}")
        return Decoded(*self._beam_fn(tf.convert_to_tensor(features), int(beam_width),
                                      tf.constant(length_penalty, tf.float32)))

    def text(self, decoded: Decoded) -> list[str]:
        """Each caption's words joined by spaces, as Python strings."""
        ids, lengths = np.asarray(decoded.ids), np.asarray(decoded.lengths)
        return [" ".join(self.vocabulary[i] for i in row[:n])
                for row, n in zip(ids, lengths, strict=True)]

    def attention_maps(self, decoded: Decoded) -> list[np.ndarray]:
        """Each caption's attention, (length, R): one row over the regions per word."""
        attention, lengths = np.asarray(decoded.attention), np.asarray(decoded.lengths)
        return [weights[:n] for weights, n in zip(attention, lengths, strict=True)]

    def caption_strings(self, ids, lengths) -> tf.Tensor:
        """The captions as a tf.string (batch,) tensor, in graph mode too (for an export)."""
        # Made here rather than in __init__, so that a traced function holds the vocabulary
        # as a constant of its own graph instead of capturing an eager tensor.
        vocabulary = tf.constant(self.vocabulary, tf.string)
        ids = tf.convert_to_tensor(ids)
        words = tf.gather(vocabulary, ids)
        valid = tf.sequence_mask(lengths, tf.shape(ids)[1])
        return tf.strings.reduce_join(tf.ragged.boolean_mask(words, valid), axis=1,
                                      separator=" ")

    # The compiled parts: TensorFlow operations only, traced by tf.function.

    def _greedy(self, features):
        return self._decode(features, lambda logits, t: tf.argmax(logits, -1, tf.int32))

    def _sample(self, features, top_k, temperature, seed, seeded: bool):
        def choose(logits, t):
            top_logits, top_ids = tf.math.top_k(logits, k=top_k)
            if seeded:
                # One stateless seed per step: reproducible, yet each word draws anew.
                step_seed = tf.stack([seed, tf.cast(t, tf.int64)])
                picks = tf.random.stateless_categorical(top_logits / temperature, 1, step_seed,
                                                        dtype=tf.int32)
            else:
                picks = tf.random.categorical(top_logits / temperature, 1, dtype=tf.int32)
            return tf.gather(top_ids, picks, batch_dims=1)[:, 0]

        return self._decode(features, choose)

    def _decode(self, features, choose):
        """Greedy or sampled captions: `choose(logits, step)` picks each caption's next id."""
        batch, regions = tf.shape(features)[0], tf.shape(features)[1]
        state = self._initial_state(features)
        steps = tf.range(self.max_length)

        def keep_going(t, tokens, state, done, lengths, ids, attention):
            return (t < self.max_length) & ~tf.reduce_all(done)

        def one_word(t, tokens, state, done, lengths, ids, attention):
            logits, state, weights = self._call_step(tokens, state, features)
            next_ids = choose(self._ban(logits), t)
            done = done | (next_ids == self.end_id)
            # Dense buffers written through a mask, rather than TensorArrays, keep every shape
            # static, which XLA needs.
            written = (steps == t)[None, :] & ~done[:, None]
            ids = tf.where(written, next_ids[:, None], ids)
            attention = tf.where(written[..., None], weights[:, None, :], attention)
            lengths += tf.cast(~done, tf.int32)
            return t + 1, next_ids[:, None], state, done, lengths, ids, attention

        loop_vars = (tf.constant(0), tf.fill([batch, 1], self.start_id), state,
                     tf.zeros([batch], tf.bool), tf.zeros([batch], tf.int32),
                     tf.zeros([batch, self.max_length], tf.int32),
                     tf.zeros([batch, self.max_length, regions], tf.float32))
        _, _, _, _, lengths, ids, attention = tf.while_loop(
            keep_going, one_word, loop_vars, shape_invariants=_any_batch(loop_vars))
        return ids, lengths, attention

    def _beam_search(self, features, beam_width: int, length_penalty):
        batch = tf.shape(features)[0]
        vocabulary_size = len(self.vocabulary)
        # Beam b of image i is row i * beam_width + b of everything the step model sees.
        state = tf.nest.map_structure(lambda s: tf.repeat(s, beam_width, axis=0),
                                      self._initial_state(features))
        features = tf.repeat(features, beam_width, axis=0)
        # Only beam 0 starts alive: the others would repeat its words.
        scores = tf.tile(tf.constant([[0.0] + [NEG_INF] * (beam_width - 1)]), [batch, 1])
        # A finished beam goes on with PAD_ID at no cost, so it keeps its place and its score.
        after_end = tf.where(tf.range(vocabulary_size) == PAD_ID, 0.0, NEG_INF)
        first_rows = tf.range(batch)[:, None] * beam_width

        def keep_going(t, tokens, state, scores, finished, lengths, ids, parents, attention):
            return (t < self.max_length) & ((t == 0) | ~tf.reduce_all(finished))

        def one_word(t, tokens, state, scores, finished, lengths, ids, parents, attention):
            logits, state, weights = self._call_step(tokens, state, features)
            log_probs = self._ban(tf.nn.log_softmax(logits))
            log_probs = tf.reshape(log_probs, [batch, beam_width, vocabulary_size])
            log_probs = tf.where(finished[..., None], after_end, log_probs)
            candidates = tf.reshape(scores[..., None] + log_probs, [batch, -1])
            scores, best = tf.math.top_k(candidates, k=beam_width)
            parent, words = best // vocabulary_size, best % vocabulary_size
            # A candidate at -inf (fewer allowed words than beams) is a dead beam: finished.
            finished = (tf.gather(finished, parent, batch_dims=1) | (words == self.end_id)
                        | (scores == NEG_INF))
            lengths = tf.gather(lengths, parent, batch_dims=1) + tf.cast(~finished, tf.int32)
            # Not -1 for the regions: it cannot be inferred from an empty batch.
            weights = tf.reshape(weights, [batch, beam_width, tf.shape(weights)[-1]])
            weights = tf.gather(weights, parent, batch_dims=1)
            ids = ids.write(t, tf.where(finished, PAD_ID, words))
            parents = parents.write(t, parent)
            attention = attention.write(t, tf.where(finished[..., None], 0.0, weights))
            rows = tf.reshape(first_rows + parent, [-1])
            state = tf.nest.map_structure(lambda s: tf.gather(s, rows), state)
            return (t + 1, tf.reshape(words, [-1, 1]), state, scores, finished, lengths, ids,
                    parents, attention)

        loop_vars = (tf.constant(0), tf.fill([batch * beam_width, 1], self.start_id), state,
                     scores, tf.zeros([batch, beam_width], tf.bool),
                     tf.zeros([batch, beam_width], tf.int32),
                     tf.TensorArray(tf.int32, size=0, dynamic_size=True),
                     tf.TensorArray(tf.int32, size=0, dynamic_size=True),
                     tf.TensorArray(tf.float32, size=0, dynamic_size=True))
        _, _, _, scores, _, lengths, ids, parents, attention = tf.while_loop(
            keep_going, one_word, loop_vars, shape_invariants=_any_batch(loop_vars))

        penalty = ((5.0 + tf.cast(lengths, tf.float32)) / 6.0) ** length_penalty
        best = tf.argmax(scores / penalty, axis=1, output_type=tf.int32)
        # Follow the parents back from the best final beam: beams[t] is its beam at step t.
        earlier = tf.scan(lambda beam, parent: tf.gather(parent, beam, batch_dims=1),
                          parents.stack(), initializer=best, reverse=True)
        beams = tf.concat([earlier[1:], best[None]], axis=0)
        ids = tf.gather(ids.stack(), beams, batch_dims=2)  # (steps, batch)
        attention = tf.gather(attention.stack(), beams, batch_dims=2)  # (steps, batch, R)
        return self._padded(tf.transpose(ids), tf.gather(lengths, best, batch_dims=1),
                            tf.transpose(attention, [1, 0, 2]))

    def _call_step(self, tokens, state, features):
        """The step model's logits (batch, V) and attention (batch, R) as float32."""
        logits, new_state, weights = self._step(tokens, state, features)
        logits, weights = tf.convert_to_tensor(logits), tf.convert_to_tensor(weights)
        if logits.shape.rank == 3:
            logits = logits[:, -1, :]
        if weights.shape.rank == 3:
            weights = weights[:, -1, :]
        # check_types=False: a step may give back as a list the state it got as a tuple.
        new_state = tf.nest.map_structure(lambda new, old: tf.cast(new, old.dtype),
                                          new_state, state, check_types=False)
        return tf.cast(logits, tf.float32), new_state, tf.cast(weights, tf.float32)

    def _ban(self, logits):
        banned = tf.reduce_any(
            tf.range(len(self.vocabulary))[:, None] == tf.constant(self.banned_ids)[None, :],
            axis=1)
        return tf.where(banned, NEG_INF, logits)

    def _padded(self, ids, lengths, attention):
        """(ids, lengths, attention) with the steps run padded with zeros to max_length."""
        missing = self.max_length - tf.shape(ids)[1]
        ids = tf.pad(ids, [[0, 0], [0, missing]])
        attention = tf.pad(attention, [[0, 0], [0, missing], [0, 0]])
        ids.set_shape([None, self.max_length])
        attention.set_shape([None, self.max_length, None])
        return ids, lengths, attention


def _xla_compiles(models: Sequence[Any]) -> bool:
    """Whether every layer of the Keras `models` says XLA can compile it; if not, say which."""
    if not models:
        raise ValueError('jit_compile="auto" needs models=[...], the Keras models the step '
                         "calls, to ask their layers whether XLA can compile them")
    # _flatten_layers is the walk Keras's own jit_compile="auto" makes over a model's layers.
    refusing = [f"{layer.name} ({type(layer).__name__})" for model in models
                for layer in model._flatten_layers(include_self=True, recursive=True)
                if not layer.supports_jit]
    if refusing:
        print(f"Greedy decoding runs without XLA: Keras says XLA cannot compile "
              f"{', '.join(refusing)} here (supports_jit=False; on a GPU, a GRU runs on cuDNN)")
    return not refusing


def _any_batch(loop_vars):
    """Shape invariants that let every tensor's first (batch) dimension vary.

    The step may return a state whose batch is unknown where the loop's input had it known;
    a TensorArray keeps its own shape.
    """
    def loosen(value):
        if isinstance(value, tf.TensorArray):
            return None
        if value.shape.rank in (None, 0):
            return value.shape
        return tf.TensorShape([None]).concatenate(value.shape[1:])

    return tf.nest.map_structure(loosen, loop_vars)
