"""Caption metrics glue and the attention-in-box measure."""

from __future__ import annotations

import numpy as np
import pytest

from captioning_course import metrics

REFERENCES = {
    1: ["a red circle on the left", "there is a red circle on the left", "one red circle"],
    2: ["a blue square at the top", "a big blue square at the top", "one blue square"],
}


@pytest.mark.parametrize("java", [True, False])
def test_right_captions_score_higher_than_wrong_ones(monkeypatch, java):
    if java and not metrics.java_available():
        pytest.skip("no Java runtime")
    monkeypatch.setattr(metrics, "java_available", lambda: java)
    right = metrics.caption_scores(REFERENCES, {1: "a red circle on the left.",
                                                2: "a blue square at the top"})
    wrong = metrics.caption_scores(REFERENCES, {1: "a blue square at the top",
                                                2: "a red circle on the left"})
    assert ("METEOR" in right) == java
    assert right["BLEU-4"] == pytest.approx(1.0, abs=1e-6)  # punctuation is not a word
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert right[name] > wrong[name], name


def test_mismatched_ids_are_refused():
    with pytest.raises(ValueError, match="same image ids"):
        metrics.caption_scores(REFERENCES, {1: "a red circle"})


def test_python_tokenizer_drops_case_and_punctuation():
    assert metrics.python_tokenize("A dog, on the Beach!") == "a dog on the beach"


def test_attention_in_boxes():
    weights = np.zeros((3, 3))
    weights[0, 0] = 1.0
    top_left_cell = [(0.0, 0.0, 1 / 3, 1 / 3)]
    assert metrics.attention_in_boxes(weights, top_left_cell) == pytest.approx((1.0, 1 / 9))
    uniform = np.full((3, 3), 1 / 9)
    mass, share = metrics.attention_in_boxes(uniform, [(0.1, 0.2, 0.6, 0.9)])
    assert mass == pytest.approx(share, abs=1e-9)
    assert share == pytest.approx(0.5 * 0.7, abs=0.02)
