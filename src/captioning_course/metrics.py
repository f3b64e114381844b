"""Scoring captions the way COCO papers do; every lesson of the course uses it.

`caption_scores` wraps pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L and CIDEr over tokenized
text. Both candidates and references are tokenized first (lower case, punctuation removed):
scoring raw strings, as some tutorials do with nltk, counts "dog." and "dog" as different
words. The Stanford PTB tokenizer and METEOR are Java programs; without Java the text is
tokenized in Python and METEOR is left out of the result. `scoring` says which of the two
this machine does, and a lesson's record (`record.save_metrics`) says it once the lesson has
scored.
"""

from __future__ import annotations

import collections
import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
JAVA_METRICS = ("METEOR",)
PTB_TOKENIZER, PYTHON_TOKENIZER = "PTB (Java)", "python regex"
# Whether caption_scores ran in this process (a lesson's kernel), for the lesson's record.
_scored = False


def java_available() -> bool:
    return shutil.which("java") is not None


def scoring() -> dict[str, Any]:
    """How `caption_scores` scores on this machine: its tokenizer, the metrics it gives and
    those it leaves out, with why."""
    if java_available():
        return {"tokenizer": PTB_TOKENIZER, "metrics": list(METRICS), "left_out": {}}
    return {"tokenizer": PYTHON_TOKENIZER,
            "metrics": [name for name in METRICS if name not in JAVA_METRICS],
            "left_out": dict.fromkeys(JAVA_METRICS, "no Java on this machine")}


def scoring_used() -> dict[str, Any] | None:
    """`scoring()` once `caption_scores` has run in this process, else None."""
    return scoring() if _scored else None


def python_tokenize(text: str) -> str:
    return " ".join(WORD.findall(text.lower()))


def caption_scores(references: Mapping[int, Sequence[str]],
                   candidates: Mapping[int, str]) -> dict[str, float]:
    """Corpus scores of `candidates` (one caption per image id) against all `references`."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    global _scored
    if set(references) != set(candidates):
        raise ValueError("references and candidates must cover the same image ids")
    how = scoring()
    if how["tokenizer"] == PTB_TOKENIZER:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tokenizer = PTBTokenizer()
        refs = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
        cands = tokenizer.tokenize({k: [{"caption": c}] for k, c in candidates.items()})
    else:
        refs = {k: [python_tokenize(c) for c in v] for k, v in references.items()}
        cands = {k: [python_tokenize(c)] for k, c in candidates.items()}

    scores: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(refs, cands, verbose=0)
    scores.update({f"BLEU-{n}": float(b) for n, b in enumerate(bleu, start=1)})
    if "METEOR" in how["metrics"]:
        from pycocoevalcap.meteor.meteor import Meteor

        scores["METEOR"] = float(Meteor().compute_score(refs, cands)[0])
    scores["ROUGE-L"] = float(Rouge().compute_score(refs, cands)[0])
    scores["CIDEr"] = float(Cider().compute_score(refs, cands)[0])
    _scored = True
    return scores


def most_frequent_caption(captions: Sequence[str]) -> tuple[str, int]:
    """The image-blind baseline of the main lesson: the caption written most often, and how
    often."""
    if not captions:
        raise ValueError("no captions to choose a baseline from")
    return collections.Counter(captions).most_common(1)[0]


def score_table(references: Sequence[Sequence[str]],
                candidates: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """`caption_scores` of each named list of captions (one per image, in the order of
    `references`), printed side by side, one metric per row."""
    by_id = dict(enumerate(references))
    scores = {}
    for name, captions in candidates.items():
        if len(captions) != len(references):
            raise ValueError(f"{name!r} has {len(captions)} captions for {len(references)} "
                             "images")
        scores[name] = caption_scores(by_id, dict(enumerate(captions)))
    print(f"{'metric':8}" + "".join(f" {name:>9}" for name in scores))
    for metric in next(iter(scores.values()), {}):
        print(f"{metric:8}" + "".join(f" {s[metric]:9.3f}" for s in scores.values()))
    return scores
