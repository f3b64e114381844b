"""Caption metrics glue: tokenized text, COCO scorers, with or without Java."""

from __future__ import annotations

import pytest

from captioning_course import metrics, record

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
    assert list(right) == metrics.scoring()["metrics"]  # what the record will say ran
    assert right["BLEU-4"] == pytest.approx(1.0, abs=1e-6)  # punctuation is not a word
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert right[name] > wrong[name], name


def test_mismatched_ids_are_refused():
    with pytest.raises(ValueError, match="same image ids"):
        metrics.caption_scores(REFERENCES, {1: "a red circle"})


def test_python_tokenizer_drops_case_and_punctuation():
    assert metrics.python_tokenize("A dog, on the Beach!") == "a dog on the beach"


@pytest.mark.parametrize("java", [True, False])
def test_scoring_names_the_tokenizer_and_the_metrics_of_this_machine(monkeypatch, java):
    monkeypatch.setattr(metrics, "java_available", lambda: java)
    assert metrics.scoring() == ({
        "tokenizer": "PTB (Java)",
        "metrics": ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"],
        "left_out": {},
    } if java else {
        "tokenizer": "python regex",
        "metrics": ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"],
        "left_out": {"METEOR": "no Java on this machine"},
    })


def test_the_record_says_how_the_captions_were_scored(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "_scored", False)  # as in a fresh kernel
    record.save_metrics(tmp_path, {"images": 2})
    assert record.load_metrics(tmp_path) == {"images": 2}

    monkeypatch.setattr(metrics, "java_available", lambda: False)
    metrics.caption_scores(REFERENCES, {1: "a red circle", 2: "a blue square"})
    for java, tokenizer in ((False, "python regex"), (True, "PTB (Java)")):
        monkeypatch.setattr(metrics, "java_available", lambda java=java: java)
        record.save_metrics(tmp_path, {"images": 2})
        recorded = record.load_metrics(tmp_path)
        assert recorded == {"images": 2, "scoring": metrics.scoring()}
        assert recorded["scoring"]["tokenizer"] == tokenizer


def test_the_baseline_is_the_most_written_caption():
    assert metrics.most_frequent_caption(["a cat", "a dog", "a cat"]) == ("a cat", 2)
    with pytest.raises(ValueError, match="no captions"):
        metrics.most_frequent_caption([])


def test_the_score_table_scores_each_list_and_prints_them_side_by_side(capsys):
    references = [REFERENCES[1], REFERENCES[2]]
    scores = metrics.score_table(references, {
        "model": ["a red circle on the left", "a blue square at the top"],
        "baseline": ["a red circle on the left"] * 2})
    assert scores["model"] == metrics.caption_scores(dict(enumerate(references)), {
        0: "a red circle on the left", 1: "a blue square at the top"})
    assert scores["model"]["CIDEr"] > scores["baseline"]["CIDEr"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["metric", "model", "baseline"]
    assert [line.split()[0] for line in printed[1:]] == list(scores["model"])
    with pytest.raises(ValueError, match="'model' has 1 captions for 2 images"):
        metrics.score_table(references, {"model": ["a red circle"]})
