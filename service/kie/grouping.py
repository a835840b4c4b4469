"""Entity grouping: from the words of OCR lines to entities (issue 11).

FUNSD-style forms are read as *entities* (an answer printed on three lines is one value; the line
`Date: 03/12/98` holds a key and its value), while the OCR gives *lines*. The grouping model takes
every word of a page as a node (an OCR line's words come from the recognizer's CTC positions,
:mod:`service.ocr.words`) and predicts, for each word, the word just before it in its entity, or
that it starts one — the same "which one is my key" decision RE makes, here "which one is my
predecessor". Decoding keeps at most one predecessor and one successor per word and no cycles;
the chains are the entities. An entity's words are then put in reading order (its lines top to
bottom, each left to right) and joined into its text.

Training pages come from gold documents in two views:

- the gold words themselves, cut into the lines an OCR detector would find (:func:`simulated_lines`);
- the OCR in service run on the gold page image, its words aligned to the gold entities
  (:mod:`service.kie.service_view`): the lines, spaces and mistakes the model meets in service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from service.document import BBox, Page, Segment, Word, bbox_to_quad
from service.kie.features import (MAX_TOKENS, N_BOX, N_PAIR, N_TEXT_CUES, DocumentFeatures, _box_features,
                                  pair_features, text_cues, text_tokens)

# The encoder's pair features, then the grouping's own: same line, next in line, previous in line,
# and whether i may be j's predecessor at all (see candidate_predecessors).
N_GROUP_PAIR = N_PAIR + 4
CANDIDATE_INDEX = N_PAIR + 3
LINE_REACH = 2.0  # a line continues an entity from a line at most this many line heights above it
RIGHT_REACH = 5.0  # ...or from a line on its row ending at most this many line heights to its left
MAX_WORDS = 1500  # a page with more words is left as OCR lines (attention is quadratic in words)
ROW_GAP = 1.5  # simulated lines break where the gap between two words exceeds this many line heights


@dataclass(frozen=True)
class WordUnit:
    """One node of the grouping graph: a word, its box, its line on the page and place in it."""

    text: str
    box: BBox
    line: int
    position: int


@dataclass
class WordPage:
    """The words of one page, with gold targets when made from a labelled page.

    ``entity[k]`` is the index of unit k's entity (``-1``: belongs to none), ``labels[k]`` its label.
    """

    width: float
    height: float
    units: list[WordUnit]
    entity: list[int] | None = None
    labels: list[str | None] | None = None


# -- the graph's nodes -----------------------------------------------------------------------------

def units_of_lines(segments: Sequence[Segment]) -> list[WordUnit]:
    """The words of a page's OCR lines (a line without word boxes is one unit)."""
    units = []
    for line, segment in enumerate(segments):
        words = [w for w in segment.words if w.text.strip()] or [Word(segment.text, segment.bbox)]
        units.extend(WordUnit(w.text, tuple(w.box), line, k) for k, w in enumerate(words))  # type: ignore[arg-type]
    return units


def simulated_lines(words: Sequence[Word]) -> list[list[Word]]:
    """Words cut into the lines a detector would find: rows, broken at wide gaps, top to bottom."""
    from service.funsd import Word as RowWord
    from service.funsd import group_into_rows

    rows = group_into_rows([RowWord(w.text, tuple(w.box)) for w in words])  # type: ignore[arg-type]
    lines: list[list[Word]] = []
    for row in rows:
        height = float(np.median([w.box[3] - w.box[1] for w in row]))
        current = [row[0]]
        for previous, word in zip(row, row[1:]):
            if word.box[0] - previous.box[2] > ROW_GAP * max(height, 1.0) or not _side_by_side(previous, word):
                lines.append([Word(w.text, w.box) for w in current])
                current = []
            current.append(word)
        lines.append([Word(w.text, w.box) for w in current])
    return lines


def _side_by_side(left: object, right: object) -> bool:
    """Two words overlap vertically by half the smaller height (rows of stacked words are cut there)."""
    (_, ly0, _, ly1), (_, ry0, _, ry1) = left.box, right.box  # type: ignore[attr-defined]
    return min(ly1, ry1) - max(ly0, ry0) >= 0.5 * max(min(ly1 - ly0, ry1 - ry0), 1.0)


def gold_word_page(page: Page) -> WordPage:
    """A gold page's words as simulated OCR lines, each word's entity and label as the target."""
    owner: dict[int, int] = {}
    words: list[Word] = []
    for index, segment in enumerate(page.segments):
        for word in segment.words or [Word(segment.text, segment.bbox)]:
            if word.text.strip():
                owner[id(word)] = index
                words.append(word)
    by_box = {(w.text, tuple(w.box)): owner[id(w)] for w in words}
    units, entity, labels = [], [], []
    for line, row in enumerate(simulated_lines(words)):
        for position, word in enumerate(row):
            index = by_box[(word.text, tuple(word.box))]
            units.append(WordUnit(word.text, tuple(word.box), line, position))  # type: ignore[arg-type]
            entity.append(index)
            labels.append(page.segments[index].label)
    return WordPage(float(page.width), float(page.height), units, entity, labels)


# -- features and targets --------------------------------------------------------------------------

def _line_pairs(units: Sequence[WordUnit]) -> np.ndarray:
    """(N, N, 3): i and j on the same line; j right after i on it; j right before i on it."""
    line = np.array([u.line for u in units])
    position = np.array([u.position for u in units])
    same = line[:, None] == line[None, :]
    step = position[None, :] - position[:, None]
    return np.stack([same, same & (step == 1), same & (step == -1)], axis=-1).astype(np.float32)


def _line_boxes(units: Sequence[WordUnit]) -> dict[int, tuple[float, float, float, float, int]]:
    """Each line's box around its words and the index of its last (rightmost) word."""
    lines: dict[int, list[int]] = {}
    for k, unit in enumerate(units):
        lines.setdefault(unit.line, []).append(k)
    boxes = {}
    for line, members in lines.items():
        xs0, ys0, xs1, ys1 = zip(*(units[k].box for k in members))
        last = max(members, key=lambda k: units[k].position)
        boxes[line] = (min(xs0), min(ys0), max(xs1), max(ys1), last)
    return boxes


def candidate_predecessors(units: Sequence[WordUnit]) -> np.ndarray:
    """(N, N) with 1 where word i may come just before word j in an entity.

    Within a line, only the word just left of j. For the first word of a line, also the last word
    of each line above it, at most :data:`LINE_REACH` line heights higher, that overlaps it
    horizontally or starts near it (an entity goes on at the start of a following line), and of a
    line just left of it on the same row (the detector cut a printed line in two). Restricting
    the choice to these few keeps the decision learnable from a few hundred pages.
    """
    allowed = _line_pairs(units)[:, :, 1].copy() if units else np.zeros((0, 0), np.float32)  # j right after i
    lines = _line_boxes(units)
    for j, unit in enumerate(units):
        if unit.position != 0:
            continue
        x0, y0, x1, y1, _ = lines[unit.line]
        for line, (lx0, ly0, lx1, ly1, last) in lines.items():
            if line != unit.line and (_continues_below((lx0, ly0, lx1, ly1), (x0, y0, x1, y1))
                                      or _continues_right((lx0, ly0, lx1, ly1), (x0, y0, x1, y1))):
                allowed[last, j] = 1.0
    return allowed


def _continues_below(above: BBox, line: BBox) -> bool:
    """``line`` starts below ``above``, at most LINE_REACH line heights lower, overlapping it or starting near it."""
    ax0, ay0, ax1, ay1 = above
    x0, y0, x1, y1 = line
    height = max(y1 - y0, ay1 - ay0, 1.0)
    if ay1 > (y0 + y1) / 2 or y0 - ay1 > LINE_REACH * height:
        return False
    return min(x1, ax1) > max(x0, ax0) or abs(x0 - ax0) <= 3 * height


def _continues_right(left: BBox, line: BBox) -> bool:
    """``line`` is on the same row as ``left``, just right of it (the detector cut one printed line in two)."""
    lx0, ly0, lx1, ly1 = left
    x0, y0, x1, y1 = line
    height = max(min(y1 - y0, ly1 - ly0), 1.0)
    same_row = min(y1, ly1) - max(y0, ly0) >= 0.5 * height
    return same_row and lx1 <= x0 + 0.5 * height and x0 - lx1 <= RIGHT_REACH * height


def word_features(page: WordPage) -> DocumentFeatures:
    """The grouping model's inputs for one page (node ids are the units' indices)."""
    n = len(page.units)
    tokens = np.zeros((n, MAX_TOKENS), dtype=np.int64)
    for k, unit in enumerate(page.units):
        ids = text_tokens(unit.text)
        tokens[k, :len(ids)] = ids
    boxes = np.array([u.box for u in page.units], dtype=np.float32).reshape(n, 4)
    width, height = max(page.width, 1.0), max(page.height, 1.0)
    geometry = pair_features(boxes, width, height) if n else np.zeros((0, 0, N_PAIR), np.float32)
    candidates = candidate_predecessors(page.units).reshape(n, n, 1)
    pairs = np.concatenate([geometry, _line_pairs(page.units).reshape(n, n, 3), candidates], axis=-1)
    return DocumentFeatures(
        segment_ids=[str(k) for k in range(n)], tokens=tokens,
        cues=np.array([text_cues(u.text) for u in page.units], dtype=np.float32).reshape(n, N_TEXT_CUES),
        boxes=np.array([_box_features(u.box, width, height) for u in page.units], dtype=np.float32).reshape(n, N_BOX),
        pairs=pairs.astype(np.float32))


def reading_order(units: Sequence[WordUnit], members: Sequence[int]) -> list[int]:
    """An entity's units in reading order: its lines top to bottom (by their top), each left to right."""
    line_top: dict[int, float] = {}
    for k in members:
        line_top[units[k].line] = min(line_top.get(units[k].line, np.inf), units[k].box[1])
    return sorted(members, key=lambda k: (line_top[units[k].line], units[k].line, units[k].box[0]))


def predecessor_matrix(page: WordPage) -> np.ndarray:
    """(N, N) with 1 where unit i comes just before unit j in their gold entity and may (see
    :func:`candidate_predecessors`; otherwise j is taught to start an entity: the rare layouts
    the candidates miss come out split, not as a target the model cannot reach)."""
    n = len(page.units)
    matrix = np.zeros((n, n), dtype=np.float32)
    assert page.entity is not None
    members: dict[int, list[int]] = {}
    for k, e in enumerate(page.entity):
        if e >= 0:
            members.setdefault(e, []).append(k)
    for group in members.values():
        ordered = reading_order(page.units, group)
        for before, after in zip(ordered, ordered[1:]):
            matrix[before, after] = 1.0
    return matrix * candidate_predecessors(page.units)


def gold_groups(page: WordPage) -> list[frozenset[int]]:
    """The gold entities as sets of unit indices (units of no entity are each their own)."""
    assert page.entity is not None
    members: dict[int, set[int]] = {}
    singles = []
    for k, e in enumerate(page.entity):
        if e >= 0:
            members.setdefault(e, set()).add(k)
        else:
            singles.append(frozenset({k}))
    return [frozenset(m) for m in members.values()] + singles


# -- decoding --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Group:
    """One predicted entity: its units in reading order and how sure the model is of it."""

    units: tuple[int, ...]
    score: float


def _root(parent: list[int], k: int) -> int:
    """The representative of ``k`` in a union-find forest (paths halved on the way)."""
    while parent[k] != k:
        parent[k] = parent[parent[k]]
        k = parent[k]
    return k


def decode_groups(probabilities: np.ndarray, units: Sequence[WordUnit], threshold: float = 0.5) -> list[Group]:
    """Entities from (N + 1, N) predecessor probabilities (row N: "starts an entity").

    Each word's most probable predecessor is accepted, most probable first, when it reaches
    ``threshold``, the predecessor has no successor yet and no cycle forms. An entity's score is
    the lowest of its accepted links and its first word's "starts an entity" probability.
    """
    return groups_of_links(probabilities, units, accepted_links(probabilities, threshold))


def accepted_links(probabilities: np.ndarray, threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """The predecessor links :func:`decode_groups` accepts, as (predecessor, word, probability), most
    probable first. A higher threshold accepts a subset of them."""
    n = probabilities.shape[1]
    parent = list(range(n))
    root = partial(_root, parent)

    best = probabilities[:n].argmax(axis=0) if n else np.zeros(0, dtype=int)
    proposals = sorted(((float(probabilities[best[j], j]), int(best[j]), j) for j in range(n)), reverse=True)
    has_next: set[int] = set()
    links = []
    for p, i, j in proposals:
        if p < threshold or i in has_next or root(i) == root(j):
            continue
        parent[root(j)] = root(i)
        has_next.add(i)
        links.append((i, j, p))
    return links


def groups_of_links(probabilities: np.ndarray, units: Sequence[WordUnit],
                    links: Sequence[tuple[int, int, float]]) -> list[Group]:
    """The entities that ``links`` (as :func:`accepted_links` gives them) join, with their scores, in
    reading order of their first words."""
    n = len(units)
    parent = list(range(n))
    root = partial(_root, parent)

    weakest = {}
    for i, j, p in links:
        parent[root(j)] = root(i)
        weakest[j] = p
    members: dict[int, list[int]] = {}
    for k in range(n):
        members.setdefault(root(k), []).append(k)
    groups = []
    for group in members.values():
        ordered = reading_order(units, group)
        starts = [float(probabilities[n, k]) for k in group if k not in weakest]
        score = min([weakest[k] for k in group if k in weakest] + starts)
        groups.append(Group(tuple(ordered), round(score, 5)))
    return sorted(groups, key=lambda g: (units[g.units[0]].line, units[g.units[0]].box[0]))


def links_kept(links: Sequence[tuple[int, int, float]], parts: Sequence[Group], labels: Sequence[str],
               sure: float) -> list[tuple[int, int, float]]:
    """The grouping ``links`` less those below ``sure`` whose two words lie in ``parts`` (the entities the
    sure links alone make) that SER labels differently (``labels``, one per part)."""
    part_of = {unit: k for k, group in enumerate(parts) for unit in group.units}
    return [(i, j, p) for i, j, p in links if p >= sure or labels[part_of[i]] == labels[part_of[j]]]


def grouping_scores(predicted: Sequence[Sequence[frozenset[int]]], gold: Sequence[Sequence[frozenset[int]]]) -> dict[str, float]:
    """Entity grouping precision, recall and Hmean: an entity counts when its word set is exact."""
    hits = sum(len(set(p) & set(g)) for p, g in zip(predicted, gold))
    n_predicted = sum(len(p) for p in predicted)
    n_gold = sum(len(g) for g in gold)
    precision = hits / n_predicted if n_predicted else 0.0
    recall = hits / n_gold if n_gold else 0.0
    hmean = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"hmean": round(hmean, 4), "precision": round(precision, 4), "recall": round(recall, 4)}


# -- entities as segments --------------------------------------------------------------------------

def _lowest(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def entity_segment(lines: Sequence[Segment], units: Sequence[WordUnit], group: Group, page: int, index: int,
                   version: str) -> Segment:
    """One entity as a segment: its words in reading order, their joined text, a box around them.

    A whole single line keeps the detector's (possibly rotated) box; otherwise the box is the
    axis-aligned one around the words. Detection and recognition scores are the lowest of the
    lines it came from.
    """
    members = [units[k] for k in group.units]
    sources = sorted({u.line for u in members})
    words = [Word(u.text, u.box) for u in members]
    whole_line = len(sources) == 1 and len(members) == sum(1 for u in units if u.line == sources[0])
    if whole_line:
        box = list(lines[sources[0]].box)
    else:
        xs0, ys0, xs1, ys1 = zip(*(u.box for u in members))
        box = bbox_to_quad((min(xs0), min(ys0), max(xs1), max(ys1)))
    origin = [lines[k] for k in sources]
    return Segment(
        id=f"p{page}-e{index:04d}", box=box, text=" ".join(u.text for u in members), words=words,
        det_score=_lowest([s.det_score for s in origin]), rec_score=_lowest([s.rec_score for s in origin]),
        det_version=origin[0].det_version, rec_version=origin[0].rec_version,
        group_score=group.score, group_version=version)


def regroup_page(page: Page, groups: Sequence[Group], units: Sequence[WordUnit], version: str) -> None:
    """Replace a page's OCR-line segments with the entities ``groups`` formed from their words."""
    lines = list(page.segments)
    page.segments = [entity_segment(lines, units, g, page.number, k, version) for k, g in enumerate(groups)]


def line_page(page: Page) -> WordPage:
    """A page of OCR lines as the grouping model's input (no targets)."""
    return WordPage(float(page.width), float(page.height), units_of_lines(page.segments))
