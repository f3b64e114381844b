"""Caption text as the main lesson prepares it, for the later lessons to reuse.

The main lesson teaches each of these where it first needs it; the later lessons say "as in
the main lesson" and import them from here. `tests/test_text.py` runs the main lesson's own
definitions beside these, so the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# string.punctuation without "<" and ">", which mark <start> and <end>.
PUNCTUATION = r"[!\"#$%&'()*+,\-./:;=?@\[\\\]^_`{|}~]"


def standardize(text):
    """Lower case, punctuation removed, <start> and <end> kept."""
    return tf.strings.regex_replace(tf.strings.lower(text), PUNCTUATION, "")


def add_start_end(captions):
    return tf.strings.join(["<start>", captions, "<end>"], separator=" ")


def covering_length(token_counts, limit, share=0.999):
    """The fewest tokens per row that keep `share` of the captions whole, at most `limit`,
    and the share of captions that length really keeps whole."""
    token_counts = np.asarray(token_counts)
    length = int(min(np.percentile(token_counts, 100 * share, method="higher"), limit))
    return length, float(np.mean(token_counts <= length))
