"""Caption metrics glue: tokenized text, COCO scorers, with or without Java."""

from __future__ import annotations

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
