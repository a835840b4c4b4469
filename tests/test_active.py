"""Active-learning strategies (service/review/active.py) and the benchmark's bookkeeping (bench/active.py)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bench.active import METRICS, _share, labels_to_reach, markdown, summarize
from service.document import Document, Page, Segment
from service.review.active import Candidate, cosine, document_words, pick_batch, tfidf_vectors

INVOICE = Counter({"invoice": 1, "number": 1, "date": 1, "total": 1, "acme": 1})
MEMO = Counter({"memo": 1, "to": 1, "from": 1, "subject": 1, "tobacco": 1})
LETTER = Counter({"dear": 1, "sincerely": 1, "regards": 1, "board": 1})


def _pool() -> list[Candidate]:
    return [Candidate("a", 0.9, INVOICE), Candidate("b", 0.8, INVOICE + Counter({"acme": 1})),
            Candidate("c", 0.7, MEMO), Candidate("d", 0.1, LETTER), Candidate("e", 0.5, Counter({"fax": 2}))]


def test_uncertainty_takes_the_most_uncertain_first() -> None:
    assert pick_batch(_pool(), 3, "uncertainty") == ["a", "b", "c"]


def test_mixed_skips_a_near_identical_form_until_the_batch_has_room() -> None:
    assert pick_batch(_pool(), 3, "mixed") == ["a", "c", "e"]
    assert pick_batch(_pool()[:3], 3, "mixed") == ["a", "c", "b"]  # filled up with the skipped one


def test_random_is_seeded_and_ignores_uncertainty() -> None:
    first = pick_batch(_pool(), 3, "random", random.Random(4))
    assert first == pick_batch(_pool(), 3, "random", random.Random(4))
    orders = {tuple(pick_batch(_pool(), 3, "random", random.Random(seed))) for seed in range(20)}
    assert len(orders) > 3


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown active-learning strategy"):
        pick_batch(_pool(), 3, "entropy-please")


def test_tfidf_similarity_of_template_twins_is_high_and_of_others_low() -> None:
    vectors = tfidf_vectors(_pool())
    assert cosine(vectors[0], vectors[1]) > 0.9
    assert cosine(vectors[0], vectors[2]) == 0.0


def test_document_words_are_lower_case_tokens() -> None:
    segment = Segment(id="s", box=[(0, 0), (1, 0), (1, 1), (0, 1)], text="TOTAL: 12.50 a")
    document = Document(id="x", source_name="x.png", sha256="-", created_at="2026-11-27T00:00:00Z",
                        pages=[Page(number=1, width=10, height=10, segments=[segment])])
    assert document_words(document) == Counter({"total": 1, "12": 1, "50": 1})


def test_labels_to_reach_and_its_share() -> None:
    history = [{"labelled": 10, "pairs_lenient": 0.2}, {"labelled": 20, "pairs_lenient": 0.31}]
    assert labels_to_reach(history, 0.3) == 20
    assert labels_to_reach(history, 0.5) is None
    assert _share([20, 40], 100, 50) == "30%"
    assert _share([None, None], 100, 50) == ">50%"
    assert _share([20, None], 100, 50) == "≥20% (1 seed(s) never)"


def _run(strategy: str, seed: int, values: list[float]) -> dict:
    return {"strategy": strategy, "seed": seed,
            "rounds": [{"labelled": 10 * (k + 1), "decisions": {"ser": "promoted"}, **{m: v for m in METRICS}}
                       for k, v in enumerate(values)]}


def test_summary_reaches_and_beats_random() -> None:
    runs = [_run("uncertainty", 0, [0.1, 0.5, 0.8, 0.9]), _run("random", 0, [0.1, 0.4, 0.7, 0.92])]
    summary = summarize(runs, [_run("full", 0, [1.0])], 100)
    assert summary["reach"]["pairs_lenient"] == {"uncertainty": [None], "random": [None]}
    assert summary["reach_share"]["pairs_lenient"]["random"] == ">40%"
    summary = summarize(runs, [_run("full", 0, [0.9])], 100)
    assert summary["reach"]["ser_hmean"] == {"uncertainty": [40], "random": [40]}
    assert summary["beats_random_from_30"]["re_hmean"]["uncertainty"] == {30: True, 40: False}
    page = markdown({"summary": summary, "runs": runs, "date": "d", "machine": "m", "versions": "v",
                     "seconds": 1, "setting": {"tasks": ["ser", "re"]}, "line": "labels to reach 95% of full data: uncertainty 40%"})
    assert "| pairs_lenient | 0.855 | 40% [40] | 40% [40] |" in page and "30:yes 40:no" in page
    assert "{'ser': {'promoted': 6}}" in page
