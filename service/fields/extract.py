"""Fields from SER's labels: one value per single-value field (the most probable), several where allowed.

A segment is an OCR line (or, with a grouping model in service, an entity); SER gives each one a
calibrated probability per label. For a single-value field the segment most likely to be that field
(and, for a typed field, holding a value of its type) gives the value, parsed out of its text
(``TOTAL RM 193.00`` → 193.00 MYR). A text field's value is assembled from every segment SER gives the
field that connects to that one on adjacent lines with nothing else printed between (a value the
grouping cut into several entities comes out whole), its words in reading order. A typed field found
by a printed key (``found_by: key``) scores each candidate value by SER's probability plus the key
evidence: a value printed with one of its keys (nothing of its type between the key and it or after it
on its row: a tax summary's ``Total 86.00 5.16`` is a table row), more for the last such one or the last
one SER labels the field, whichever comes later (a receipt prints its subtotal, tax and rounding before the
total it is paid by). A value's confidence is its SER probability times the lowest recognition score of its
lines: both calibrated per segment, and the field thresholds (``routing``) are then set on held-out
documents.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from service.document import BBox, Document, FieldValue, Page, Segment, Word
from service.fields.matching import words_of_span
from service.fields.schema import FieldsConfig, FieldSpec
from service.fields.values import ParsedValue, find_values, fold, parse_value, with_misread_digits

MIN_PROBABILITY = 0.05  # a segment less likely than this to be a field is never its value (unless keyed)
KEY_WEIGHT = 0.5  # what a printed key adds to SER's probability of a keyed field's value (chosen on the holdout)
LAST_WEIGHT = 1.0  # what being the last keyed or labelled value adds (chosen on the holdout)
LABELLED = 0.5  # SER gives a segment the field when its probability is at least this (its most likely label)
# No text value begins with these: a speck the recognizer read as a dot glues to a value's first word
# (``.NO.1, JALAN``). Trailing ones stay: values are exported with their final comma or dot.
STRAY_LEADING = ".,;:·' "


def field_probabilities(document: Document, probabilities: np.ndarray | None, labels: Sequence[str],
                        name: str) -> list[float]:
    """Each segment's probability of being field ``name``: SER's distribution when given, else its label score."""
    if probabilities is not None and name in labels and len(probabilities) == len(document.segments):
        return [float(p) for p in probabilities[:, list(labels).index(name)]]
    return [float(s.label_score or 1.0) if s.label == name else 0.0 for s in document.segments]


def _versions(segments: Sequence[Segment], model_versions: dict[str, str]) -> dict[str, str]:
    first = segments[0]
    found = {"det": first.det_version, "rec": first.rec_version, "group": first.group_version,
             "ser": first.ser_version or model_versions.get("ser")}
    return {k: v for k, v in found.items() if v is not None}


def _rec(segments: Sequence[Segment]) -> float:
    scores = [s.rec_score for s in segments if s.rec_score is not None]
    return min(scores) if scores else 1.0


def _page_of(document: Document) -> dict[str, Page]:
    return {s.id: page for page in document.pages for s in page.segments}


def _line_height(segment: Segment) -> float:
    """The height of one printed line of ``segment``: its words' median height (an entity may span lines)."""
    heights = sorted(w.box[3] - w.box[1] for w in segment.words) or [segment.bbox[3] - segment.bbox[1]]
    return max(heights[len(heights) // 2], 1.0)


def _near(a: Segment, b: Segment) -> bool:
    """Whether ``b`` continues ``a`` on an adjacent line or on its row: a vertical gap under 1.5 line heights
    and columns that overlap (or a horizontal gap under two line heights)."""
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    height = max(_line_height(a), _line_height(b))
    gap_y = max(by0 - ay1, ay0 - by1)
    gap_x = max(bx0 - ax1, ax0 - bx1)
    return gap_y < 1.5 * height and gap_x < 2.0 * height


def _between(a: Segment, b: Segment, c: Segment) -> bool:
    """Whether ``c`` stands between ``a`` and ``b`` one above the other: its middle in the gap between them,
    its columns overlapping theirs (a registration number printed between a company and its address)."""
    top, bottom = (a, b) if a.bbox[1] <= b.bbox[1] else (b, a)
    height = max(_line_height(a), _line_height(b))
    middle = (c.bbox[1] + c.bbox[3]) / 2
    columns = min(c.bbox[2], a.bbox[2], b.bbox[2]) - max(c.bbox[0], min(a.bbox[0], b.bbox[0])) > 0
    return top.bbox[3] - 0.25 * height <= middle <= bottom.bbox[1] + 0.25 * height and columns


def _text_run(document: Document, seed: int, name: str, probabilities: Sequence[float]) -> list[Segment]:
    """The seed segment and every segment of its page that SER finds more likely to be ``name`` than not
    (its label, or a probability of at least one half) and that is connected to the seed through such
    segments on adjacent lines with nothing else printed between them: a value cut into several
    entities or lines comes out whole."""
    segments, page_of = document.segments, _page_of(document)
    page = page_of[segments[seed].id]
    on_page = [k for k, s in enumerate(segments) if page_of[s.id] is page]
    members = {k for k in on_page if k != seed and (segments[k].label == name or probabilities[k] >= 0.5)}
    others = [segments[k] for k in on_page if k != seed and k not in members]
    run, frontier = [seed], [seed]
    while frontier:
        a = segments[frontier.pop()]
        joined = [k for k in sorted(members - set(run)) if (_near(a, segments[k]) or _near(segments[k], a))
                  and not any(_between(a, segments[k], c) for c in others)]
        run += joined
        frontier += joined
    return [segments[k] for k in run]


def _reading_order(run: Sequence[Segment]) -> list[Segment]:
    """The segments of ``run`` in reading order: rows top to bottom (a segment joins a row when its
    vertical middle lies within the row's first segment), each row left to right."""
    rows: list[list[Segment]] = []
    for segment in sorted(run, key=lambda s: (s.bbox[1] + s.bbox[3]) / 2):
        middle = (segment.bbox[1] + segment.bbox[3]) / 2
        if rows and rows[-1][0].bbox[1] <= middle <= rows[-1][0].bbox[3]:
            rows[-1].append(segment)
        else:
            rows.append([segment])
    return [s for row in rows for s in sorted(row, key=lambda s: s.bbox[0])]


def _words(segment: Segment) -> list[Word]:
    """A segment's words in the order it holds them (the recognizer's along a line, the grouping's across
    lines). They are not re-sorted by height: on a tilted line that would move a line's first word after
    its last."""
    return segment.words or [Word(segment.text, segment.bbox)]


def _balance(text: str) -> int:
    return text.count("(") - text.count(")")


def _without_cut_parentheses(ordered: list[Segment]) -> tuple[list[Segment], list[Word]]:
    """The segments and words of ``ordered`` less a parenthesis that the value's edges cut through: leading
    segments that close a parenthesis they never opened (``NO. 95156P)``, the end of a registration number
    printed before an address) and trailing words from a parenthesis the value never closes (``SDN BHD (CO``).
    Such a fragment belongs to a note printed next to the value, not to it; a value is never cut to nothing."""
    start = opened = 0
    for k, segment in enumerate(ordered[:-1]):
        opened += _balance(segment.text)
        if opened < 0:
            start, opened = k + 1, 0
    kept = ordered[start:]
    words = [w for s in kept for w in _words(s)]
    unclosed: list[int] = []
    for i, word in enumerate(words):
        for character in word.text:
            if character == "(":
                unclosed.append(i)
            elif character == ")" and unclosed:
                unclosed.pop()
    return kept, (words[:unclosed[0]] if unclosed and unclosed[0] > 0 else words)


def _trimmed(words: list[Word], pattern: str | None) -> list[Word]:
    """``words`` less those at either end that ``pattern`` matches in full (case ignored); never none."""
    if not pattern:
        return words
    def trims(word: Word) -> bool:
        return re.fullmatch(pattern, unicodedata.normalize("NFKC", word.text), re.IGNORECASE) is not None
    start, end = 0, len(words)
    while end - start > 1 and trims(words[end - 1]):
        end -= 1
    while end - start > 1 and trims(words[start]):
        start += 1
    return words[start:end]


def _span_box(segment: Segment, parsed: ParsedValue) -> BBox:
    indices = [i for _, i in words_of_span(segment, parsed.start, parsed.end)]
    if not indices:
        return segment.bbox
    boxes = [segment.words[i].box for i in indices]
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def _typed_value(document: Document, spec: FieldSpec, cfg: FieldsConfig, index: int, p: float) -> FieldValue | None:
    segment = document.segments[index]
    parsed = parse_value(spec, segment.text, cfg)
    if parsed is None:
        return None
    return FieldValue(name=spec.name, value=parsed.value, raw=segment.text[parsed.start:parsed.end],
                      page=_page_of(document)[segment.id].number, boxes=[_span_box(segment, parsed)],
                      segments=[segment.id], currency=parsed.currency,
                      confidence=round(p * _rec([segment]), 5), versions=_versions([segment], document.model_versions))


def _text_value(document: Document, spec: FieldSpec, index: int, probabilities: Sequence[float]) -> FieldValue:
    run = _text_run(document, index, spec.name, probabilities)
    run, words = _without_cut_parentheses(_reading_order(run))
    raw = " ".join(" ".join(w.text.split()) for w in _trimmed(words, spec.trim_words))
    kept = {s.id for s in run}
    # the seed is the run's most probable segment; when it was cut off, the value is as sure as what is left
    p = max(probabilities[k] for k, s in enumerate(document.segments) if s.id in kept)
    # NFKC: the base recognizer's alphabet is Chinese, and it reads some Latin punctuation as full-width (，：（)
    return FieldValue(name=spec.name, value=unicodedata.normalize("NFKC", raw).lstrip(STRAY_LEADING),
                      raw=raw.lstrip(STRAY_LEADING),
                      page=_page_of(document)[run[0].id].number,
                      boxes=[s.bbox for s in run], segments=[s.id for s in run],
                      confidence=round(p * _rec(run), 5), versions=_versions(run, document.model_versions))


def _value_at(document: Document, spec: FieldSpec, cfg: FieldsConfig, index: int,
              probabilities: Sequence[float]) -> FieldValue | None:
    if spec.type == "text":
        return _text_value(document, spec, index, probabilities)
    return _typed_value(document, spec, cfg, index, probabilities[index])


def _row(document: Document, segment: Segment) -> tuple[list[Segment], list[Segment]]:
    """The segments on ``segment``'s row to its left and to its right, each in left-to-right order."""
    x0, y0, x1, y1 = segment.bbox
    left, right = [], []
    for other in document.segments:
        ox0, oy0, ox1, oy1 = other.bbox
        if other is segment or min(y1, oy1) - max(y0, oy0) <= 0.5 * min(y1 - y0, oy1 - oy0):
            continue
        if ox1 <= x0 + 5:
            left.append(other)
        elif ox0 >= x1 - 5:
            right.append(other)
    return sorted(left, key=lambda o: o.bbox[0]), sorted(right, key=lambda o: o.bbox[0])


def printed_with_key(document: Document, segment: Segment, parsed: ParsedValue, spec: FieldSpec, cfg: FieldsConfig) -> bool:
    """Whether the value ``parsed`` out of ``segment``'s text is the one printed with one of the field's keys:
    a key precedes it (in the segment, or in the segments to its left on its row) and heads its label (a
    word before it makes another label: ``TAX TOTAL``, ``SUB-TOTAL``), no other value of the
    field's type stands between them or after it on its row (``Total 94.34 5.66``, a tax summary's row,
    is a table, not a total) and, for an amount, it has decimals (``TOTAL QTY 3`` is no total)."""
    left, right = _row(document, segment)
    folded = fold(" ".join([*(o.text for o in left), segment.text[:parsed.start]]))
    ends = [m.end() for key in spec.keys for m in re.finditer(rf"(?<![a-z]){re.escape(fold(key))}(?![a-z])", folded)
            if not re.search(r"[a-z]\W*$", folded[:m.start()])]
    after = " ".join([segment.text[parsed.end:], *(o.text for o in right)])
    if not ends or find_values(spec, folded[max(ends):], cfg) or find_values(spec, after, cfg):
        return False
    return spec.type != "amount" or _has_decimals(with_misread_digits(segment.text)[parsed.start:parsed.end])


def keyed_choice(document: Document, spec: FieldSpec, cfg: FieldsConfig, probabilities: Sequence[float],
                 key_weight: float | None = None, last_weight: float | None = None) -> int | None:
    """The segment holding the field's value by SER's probability and the printed keys together: each
    segment with a value of the field's type scores its SER probability, plus ``key_weight`` when the
    value is printed with one of the field's keys (:func:`printed_with_key`), plus ``last_weight`` for the
    last candidate in reading order that is keyed or that SER labels the field (a receipt prints its
    subtotal, tax and rounding before the total it is paid by, and that one is often printed under a key
    the schema does not list: ``AMOUNT TO BE PAID 3.00`` after ``TOTAL SALES INCLUSIVE GST 2.99``). A keyed
    candidate is never ruled out by a low probability: a printed key is evidence of its own. ``None``
    when no segment holds such a value."""
    key_weight = KEY_WEIGHT if key_weight is None else key_weight
    last_weight = LAST_WEIGHT if last_weight is None else last_weight
    candidates: list[tuple[int, bool]] = []
    for index, segment in enumerate(document.segments):
        parsed = parse_value(spec, segment.text, cfg)
        if parsed is None:
            continue
        keyed = printed_with_key(document, segment, parsed, spec, cfg)
        if keyed or probabilities[index] >= MIN_PROBABILITY:
            candidates.append((index, keyed))
    last = max((index for index, keyed in candidates if keyed or probabilities[index] >= LABELLED), default=None)
    scored = [(probabilities[i] + key_weight * keyed + last_weight * (i == last), i) for i, keyed in candidates]
    return max(scored)[1] if scored else None


def _has_decimals(raw: str) -> bool:
    return raw[-3:-2] in (".", ",") and raw[-2:].isdigit()


def field_values(document: Document, spec: FieldSpec, cfg: FieldsConfig, probabilities: list[float]) -> list[FieldValue]:
    """The values of one field: the most probable one (for a typed field found by a key, the last keyed
    one), or for ``multiple`` every segment labelled with it."""
    if not spec.multiple and spec.found_by == "key" and spec.type != "text":
        keyed = keyed_choice(document, spec, cfg, probabilities)
        return [] if keyed is None else [v for v in [_typed_value(document, spec, cfg, keyed, probabilities[keyed])] if v]
    order = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])
    if spec.multiple:
        chosen = [i for i in sorted(order) if document.segments[i].label == spec.name]
    else:
        chosen = [i for i in order if probabilities[i] >= MIN_PROBABILITY]
    values: list[FieldValue] = []
    used: set[str] = set()
    for i in chosen:
        if document.segments[i].id in used:
            continue
        value = _value_at(document, spec, cfg, i, probabilities)
        if value is None:
            continue
        values.append(value)
        used.update(value.segments)
        if not spec.multiple:
            break
    return values


def fill_fields(document: Document, cfg: FieldsConfig, probabilities: np.ndarray | None = None,
                labels: Sequence[str] = (), thresholds: dict[str, float] | None = None) -> list[FieldValue]:
    """Set ``document.fields`` from SER's labels (and its full distribution when given); returns them.

    ``thresholds`` (field → confidence needed to go through without review) are recorded on each value.
    """
    document.fields = []
    for spec in cfg.fields:
        p = field_probabilities(document, probabilities, labels, spec.name)
        for value in field_values(document, spec, cfg, p):
            value.threshold = (thresholds or {}).get(spec.name)
            document.fields.append(value)
    return document.fields
