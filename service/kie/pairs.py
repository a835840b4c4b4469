"""Key–value pairs judged the way a reader judges a form (the metric of PEneo / RFUND).

A predicted pair counts when its key text and its value text both match a gold pair of the same
document, one to one: *strict* after folding case and whitespace, *lenient* when both texts are
within normalized edit distance :data:`LENIENT_DISTANCE` with spaces ignored. Entities are judged
the same way, with their box as well (IoU ≥ 0.5), to measure grouping from images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.document import BBox, Document
from service.evaluation import box_iou, normalized_edit_distance

LENIENT_DISTANCE = 0.2
Pair = tuple[str, str]  # (key text, value text)


def fold(text: str) -> str:
    """Case and whitespace folded: lower case, runs of whitespace as one space, stripped."""
    return " ".join(text.lower().split())


def strict_equal(gold: str, predicted: str) -> bool:
    """The texts are equal after :func:`fold`."""
    return fold(gold) == fold(predicted)


def lenient_equal(gold: str, predicted: str) -> bool:
    """The texts are within :data:`LENIENT_DISTANCE` normalized edit distance, case folded, spaces ignored."""
    a, b = "".join(gold.lower().split()), "".join(predicted.lower().split())
    return normalized_edit_distance(a, b) <= LENIENT_DISTANCE


@dataclass
class PairCounts:
    """True positives, predicted and gold counts, with precision / recall / F1."""

    hits: int = 0
    predicted: int = 0
    gold: int = 0

    def add(self, other: "PairCounts") -> None:
        """Accumulate another document's counts."""
        self.hits, self.predicted, self.gold = self.hits + other.hits, self.predicted + other.predicted, self.gold + other.gold

    @property
    def precision(self) -> float:
        return self.hits / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.hits / self.gold if self.gold else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float]:
        """Rounded figures and counts, for reports."""
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4), "f1": round(self.f1, 4),
                "hits": self.hits, "predicted": self.predicted, "gold": self.gold}


def document_pairs(document: Document, key_label: str | None = None, value_label: str | None = None) -> list[Pair]:
    """A document's linked (key text, value text) pairs; optionally only those with these labels."""
    by_id = {s.id: s for s in document.segments}
    pairs = []
    for link in document.links:
        key, value = by_id.get(link.key), by_id.get(link.value)
        if key is None or value is None:
            continue
        if (key_label and key.label != key_label) or (value_label and value.label != value_label):
            continue
        pairs.append((key.text, value.text))
    return pairs


def match_count(predicted: Sequence[object], gold: Sequence[object], same: Callable[[object, object], bool]) -> int:
    """How many predicted items match a gold one, one to one (greedy, in the given order)."""
    free = list(range(len(gold)))
    hits = 0
    for item in predicted:
        for position, g in enumerate(free):
            if same(gold[g], item):
                hits += 1
                del free[position]
                break
    return hits


def pair_counts(predicted: Sequence[Pair], gold: Sequence[Pair], lenient: bool = False) -> PairCounts:
    """Pair matches of one document, strict or lenient."""
    equal = lenient_equal if lenient else strict_equal
    hits = match_count(predicted, gold, lambda g, p: equal(g[0], p[0]) and equal(g[1], p[1]))  # type: ignore[index]
    return PairCounts(hits, len(predicted), len(gold))


def entity_counts(predicted: Document, gold: Document, iou: float = 0.5, with_text: bool = True) -> PairCounts:
    """Entities of ``predicted`` that match a gold entity on the same page: box IoU ≥ ``iou`` and,
    ``with_text``, the same text after :func:`fold` (the gold's empty entities are left out)."""
    def entities(document: Document) -> list[tuple[int, BBox, str]]:
        return [(page.number, s.bbox, s.text) for page in document.pages for s in page.segments if s.text.strip()]

    def same(g: object, p: object) -> bool:
        (gp, gb, gt), (pp, pb, pt) = g, p  # type: ignore[misc]
        return gp == pp and box_iou(gb, pb) >= iou and (not with_text or strict_equal(gt, pt))

    gold_entities, predicted_entities = entities(gold), entities(predicted)
    return PairCounts(match_count(predicted_entities, gold_entities, same), len(predicted_entities), len(gold_entities))
