"""Which documents reviewers should label next (active learning), as strategies that can be measured.

A *candidate* is a processed document waiting for review: its id, its uncertainty as routing
computed it (:func:`service.review.routing.document_uncertainty`) and the words it contains. A
strategy orders candidates; the first ``batch`` of that order are the next labels.

* ``uncertainty``: most uncertain first (what the queue's ``informative`` order does).
* ``random``: a seeded shuffle (the baseline every active-learning claim must beat).
* ``mixed``: most uncertain first, but a candidate whose text is nearly the same as one already
  picked for the batch (cosine similarity of TF-IDF word vectors at or above ``similar_above``)
  waits until the batch has room: forms filled from one template otherwise take a batch's every slot
  and teach the models one layout ``batch`` times.

``bench/active.py`` measures the three on FUNSD with the learning job's own code.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from service.document import Document

STRATEGIES = ("uncertainty", "random", "mixed")
# Cosine at or above which two forms count as near-identical (one template). Among the 139 FUNSD
# training forms read by the base OCR, 99 % of form pairs are below 0.11 and 20 of 9,591 pairs reach 0.3.
SIMILAR_ABOVE = 0.3
_TOKEN = re.compile(r"[a-z0-9]{2,}")


@dataclass
class Candidate:
    """A document that could be labelled next."""

    document_id: str
    uncertainty: float
    words: Counter = field(default_factory=Counter)


def document_words(document: Document) -> Counter:
    """Lower-case word counts of a document's text (tokens of two or more letters or digits)."""
    return Counter(_TOKEN.findall(" ".join(s.text for s in document.segments).lower()))


def tfidf_vectors(candidates: Sequence[Candidate]) -> list[dict[str, float]]:
    """Unit-length TF-IDF vectors of the candidates' words, IDF over the candidates themselves."""
    frequency = Counter(word for c in candidates for word in c.words)
    n = len(candidates)
    vectors = []
    for candidate in candidates:
        weights = {w: (1 + math.log(k)) * math.log((1 + n) / (1 + frequency[w])) for w, k in candidate.words.items()}
        norm = math.sqrt(sum(v * v for v in weights.values())) or 1.0
        vectors.append({w: v / norm for w, v in weights.items() if v > 0})
    return vectors


def cosine(a: dict[str, float], b: dict[str, float]) -> float:
    """Cosine similarity of two unit-length sparse vectors."""
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(w, 0.0) for w, v in a.items())


def by_uncertainty(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Most uncertain first; ties by id, so the order is deterministic."""
    return sorted(candidates, key=lambda c: (-c.uncertainty, c.document_id))


def pick_batch(candidates: Sequence[Candidate], batch: int, strategy: str, rng: random.Random | None = None,
               similar_above: float = SIMILAR_ABOVE) -> list[str]:
    """The ids of the next ``batch`` documents to label under ``strategy`` (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown active-learning strategy {strategy!r}; expected one of {STRATEGIES}")
    if strategy == "random":
        ids = sorted(c.document_id for c in candidates)
        (rng or random.Random(0)).shuffle(ids)
        return ids[:batch]
    ordered = by_uncertainty(candidates)
    if strategy == "uncertainty":
        return [c.document_id for c in ordered[:batch]]
    return _diverse_batch(ordered, batch, similar_above)


def _diverse_batch(ordered: Sequence[Candidate], batch: int, similar_above: float) -> list[str]:
    """Walk ``ordered``; take a candidate unless it is near-identical to one taken; fill up with the skipped."""
    vectors = dict(zip((c.document_id for c in ordered), tfidf_vectors(ordered)))
    taken: list[str] = []
    skipped: list[str] = []
    for candidate in ordered:
        if len(taken) == batch:
            break
        vector = vectors[candidate.document_id]
        if any(cosine(vector, vectors[other]) >= similar_above for other in taken):
            skipped.append(candidate.document_id)
        else:
            taken.append(candidate.document_id)
    return taken + skipped[: batch - len(taken)]
