"""Fields from SER's labels: one value per single-value field (the most probable), several where allowed.

A segment is an OCR line (or, with a grouping model in service, an entity); SER gives each one a
calibrated probability per label. For a single-value field the segment most likely to be that field
(and, for a typed field, holding a value of its type) gives the value, parsed out of its text
(``TOTAL RM 193.00`` → 193.00 MYR); a text field's value is continued over the adjacent lines SER
gave the same label (an address), joined in reading order. A typed field found by a printed key
(``found_by: key``) takes the value printed with the last of its keys on the page instead (a receipt
prints its subtotal, tax and rounding before the total it is paid by; amounts with decimals first),
and SER's choice only when no key is printed. A value's confidence is its SER
probability times the lowest recognition score of its lines: both calibrated per segment, and the
field thresholds (``routing``) are then set on held-out documents.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.document import BBox, Document, FieldValue, Page, Segment, Word
from service.fields.matching import has_key, words_of_span
from service.fields.schema import FieldsConfig, FieldSpec
from service.fields.values import ParsedValue, parse_value

MIN_PROBABILITY = 0.05  # a segment less likely than this to be a field is never its value


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


def _text_run(document: Document, seed: int, name: str, probabilities: Sequence[float]) -> list[Segment]:
    """The seed segment and every segment of its page that SER finds more likely to be ``name`` than not
    (its label, or a probability of at least one half) and that is connected to the seed through such
    segments on adjacent lines: a value cut into several entities or lines comes out whole."""
    segments, page_of = document.segments, _page_of(document)
    page = page_of[segments[seed].id]
    members = [k for k, s in enumerate(segments)
               if k != seed and page_of[s.id] is page and (s.label == name or probabilities[k] >= 0.5)]
    run, frontier = [seed], [seed]
    while frontier:
        current = segments[frontier.pop()]
        joined = [k for k in members if k not in run and (_near(current, segments[k]) or _near(segments[k], current))]
        run += joined
        frontier += joined
    return [segments[k] for k in run]


def _reading_order_words(run: Sequence[Segment]) -> list[Word]:
    """The words of ``run`` in reading order: rows top to bottom (a word joins a row when its vertical
    middle lies within the row's first word), each row left to right."""
    words = [w for s in run for w in (s.words or [Word(s.text, s.bbox)])]
    rows: list[list[Word]] = []
    for word in sorted(words, key=lambda w: (w.box[1] + w.box[3]) / 2):
        middle = (word.box[1] + word.box[3]) / 2
        if rows and rows[-1][0].box[1] <= middle <= rows[-1][0].box[3]:
            rows[-1].append(word)
        else:
            rows.append([word])
    return [w for row in rows for w in sorted(row, key=lambda w: w.box[0])]


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
    text = " ".join(" ".join(w.text.split()) for w in _reading_order_words(run))
    run = sorted(run, key=lambda s: (s.bbox[1], s.bbox[0]))
    p = probabilities[index]
    return FieldValue(name=spec.name, value=text, raw=text, page=_page_of(document)[run[0].id].number,
                      boxes=[s.bbox for s in run], segments=[s.id for s in run],
                      confidence=round(p * _rec(run), 5), versions=_versions(run, document.model_versions))


def _value_at(document: Document, spec: FieldSpec, cfg: FieldsConfig, index: int,
              probabilities: Sequence[float]) -> FieldValue | None:
    if spec.type == "text":
        return _text_value(document, spec, index, probabilities)
    return _typed_value(document, spec, cfg, index, probabilities[index])


def last_keyed(document: Document, spec: FieldSpec, cfg: FieldsConfig) -> int | None:
    """The segment, last in reading order, whose value of the field's type is printed after one of its keys
    (in the segment or to its left on its row); amounts printed with decimals before whole numbers
    (``TOTAL QTY 3`` under ``TOTAL 8.70``). ``None`` when no key is printed with a value."""
    found: list[tuple[bool, int]] = []
    for index, segment in enumerate(document.segments):
        parsed = parse_value(spec, segment.text, cfg)
        if parsed is not None and has_key(document, segment, parsed.start, spec.keys):
            found.append((spec.type == "amount" and _has_decimals(segment.text[parsed.start:parsed.end]), index))
    return max(found)[1] if found else None


def _has_decimals(raw: str) -> bool:
    return raw[-3:-2] in (".", ",") and raw[-2:].isdigit()


def field_values(document: Document, spec: FieldSpec, cfg: FieldsConfig, probabilities: list[float]) -> list[FieldValue]:
    """The values of one field: the most probable one (for a typed field found by a key, the last keyed
    one), or for ``multiple`` every segment labelled with it."""
    if not spec.multiple and spec.found_by == "key" and spec.type != "text":
        keyed = last_keyed(document, spec, cfg)
        if keyed is not None and (value := _value_at(document, spec, cfg, keyed, probabilities)) is not None:
            return [value]
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
