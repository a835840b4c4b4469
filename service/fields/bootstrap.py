"""Gold labels from field values a user already has: label the OCR words that print them.

The OCR'd document's lines are re-cut into entities: the words of each found value make one
entity labelled with its field (joined across lines, in reading order: an address), and the rest of
each line it touched another, labelled ``kie.other_label``; lines without a value stay as they are,
labelled ``other``. That is the entity level the grouping model and SER learn from. The document
keeps the values themselves as gold ``fields``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

from service.document import BBox, Document, FieldValue, Page, Segment, Word, bbox_to_quad
from service.fields.matching import Match, WordRef, find_value, word_spans
from service.fields.schema import FieldsConfig
from service.fields.values import normalize

BOOTSTRAPPED_SOURCE = "values:bootstrapped"  # gold_documents.source of documents labelled this way


@dataclass
class Bootstrapped:
    """A gold document made from known values, and the values that were not found in its OCR."""

    document: Document
    found: dict[str, Match] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def _union(boxes: list[BBox]) -> BBox:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _entity(segment_id: str, words: list[Word], label: str, source: list[Segment]) -> Segment:
    rec_scores = [s.rec_score for s in source if s.rec_score is not None]
    return Segment(id=segment_id, box=bbox_to_quad(_union([w.box for w in words])),
                   text=" ".join(w.text for w in words), label=label, words=words,
                   rec_score=min(rec_scores) if rec_scores else None,
                   det_version=source[0].det_version, rec_version=source[0].rec_version)


def _cut_page(page: Page, owners: Mapping[WordRef, str], other: str) -> list[Segment]:
    """The page's lines as entities: each field's words joined, the rest of each line kept together."""
    by_field: dict[str, list[tuple[Word, Segment]]] = {}
    segments: list[Segment] = []
    for segment in page.segments:
        rest = [w for i, w in enumerate(segment.words) if (segment.id, i) not in owners]
        for i, word in enumerate(segment.words):
            if (segment.id, i) in owners:
                by_field.setdefault(owners[(segment.id, i)], []).append((word, segment))
        if len(rest) == len(segment.words):
            segments.append(_entity(segment.id, rest, other, [segment]) if rest else _plain(segment, other))
        elif rest:
            segments.append(_entity(f"{segment.id}.r", rest, other, [segment]))
    for name, members in by_field.items():
        words = [w for w, _ in members]
        first = members[0][1]
        segments.append(_entity(f"{first.id}.{name}", words, name, list({id(s): s for _, s in members}.values())))
    return sorted(segments, key=lambda s: (round(s.bbox[1] / 8), s.bbox[0]))


def _plain(segment: Segment, label: str) -> Segment:
    return Segment(id=segment.id, box=segment.box, text=segment.text, label=label, words=list(segment.words),
                   rec_score=segment.rec_score, det_version=segment.det_version, rec_version=segment.rec_version)


def _gold_value(name: str, value: str, match: Match, document: Document, cfg: FieldsConfig) -> FieldValue:
    by_id = {s.id: s for s in document.segments}
    words = [by_id[sid].words[i] for sid, i in match.words]
    spec = cfg.get(name)
    assert spec is not None
    return FieldValue(name=name, value=normalize(spec, value, cfg), raw=" ".join(w.text for w in words),
                      page=match.page, boxes=[_union([w.box for w in words])],
                      segments=[f"{match.words[0][0]}.{name}"])  # the entity _cut_page makes of them


def _cut_word(word: Word, cuts: list[int]) -> list[Word]:
    """A word split at character offsets, each piece's box its share of the word's width."""
    x0, y0, x1, y1 = word.box
    step = (x1 - x0) / max(len(word.text), 1)
    bounds = [0, *cuts, len(word.text)]
    return [Word(word.text[a:b], (x0 + a * step, y0, x0 + b * step, y1)) for a, b in zip(bounds, bounds[1:]) if b > a]


def isolate_span(segment: Segment, start: int, end: int) -> tuple[WordRef, ...]:
    """Split the words of ``segment`` that a value's characters [start, end) cut through (the recognizer
    glues ``TOTALRM12.80``), so the value has words of its own; returns them."""
    words: list[Word] = []
    for word, (a, b) in zip(segment.words, word_spans(segment)):
        cuts = [c - a for c in (start, end) if a < c < b]
        words.extend(_cut_word(word, cuts) if cuts else [word])
    segment.words = words
    spans = word_spans(segment)
    return tuple((segment.id, i) for i, (a, b) in enumerate(spans) if a >= start and b <= end and b > a)


def isolate_text(document: Document, match: Match) -> Match:
    """Split the first and last words of a text value's match where the value starts and ends inside them
    (the base recognizer glues ``SDN.BHD.(974306-T)``: the registration number is no part of the company),
    so the value has words of its own; returns the match on them."""
    by_id = {s.id: s for s in document.segments}
    keep = {id(by_id[sid].words[i]) for sid, i in match.words}

    def cut(ref: WordRef, at: int, part: int) -> None:
        segment = by_id[ref[0]]
        word = segment.words[ref[1]]
        pieces = _cut_word(word, [at])
        if len(pieces) == 2:
            segment.words[ref[1]:ref[1] + 1] = pieces
            keep.discard(id(word))
            keep.add(id(pieces[part]))

    last_word = by_id[match.words[-1][0]].words[match.words[-1][1]]
    if match.tail:
        cut(match.words[-1], len(last_word.text) - match.tail, 0)
    if match.head:
        cut(match.words[0], match.head, 1)
    order = list(dict.fromkeys(sid for sid, _ in match.words))
    words = tuple((sid, k) for sid in order for k, w in enumerate(by_id[sid].words) if id(w) in keep)
    return Match(words, match.distance, match.page)


def _find(ocr: Document, name: str, value: str, cfg: FieldsConfig) -> Match | None:
    spec = cfg.get(name)
    match = find_value(ocr, spec, value, cfg) if spec is not None and value.strip() else None
    if match is not None and match.span is None and (match.head or match.tail):
        return isolate_text(ocr, match)
    if match is None or match.span is None:
        return match
    segment = ocr.segment(match.span[0])
    words = isolate_span(segment, match.span[1], match.span[2])
    return Match(words, match.distance, match.page, match.span) if words else match


def bootstrap(ocr: Document, values: Mapping[str, str], cfg: FieldsConfig, other_label: str) -> Bootstrapped:
    """A gold document from an OCR'd one and its known ``values`` (field → value as printed or exported).

    Typed values are found first (their words may be split out of glued OCR words), then text values.
    A word claimed by two values keeps the label of the one found first.
    """
    owners: dict[WordRef, str] = {}
    ocr = copy.deepcopy(ocr)
    result = Bootstrapped(ocr)
    gold_fields = []
    typed_first = sorted((n for n in cfg.names if n in values), key=lambda n: cfg.get(n).type == "text")
    for name in typed_first:
        match = _find(ocr, name, values[name], cfg)
        if match is None:
            result.missing.append(name)
            continue
        result.found[name] = match
        gold_fields.append(_gold_value(name, values[name], match, ocr, cfg))
        for ref in match.words:
            owners.setdefault(ref, name)
    pages = [Page(number=p.number, width=p.width, height=p.height, image=p.image,
                  segments=_cut_page(p, owners, other_label)) for p in ocr.pages]
    result.document = Document(id=ocr.id, source_name=ocr.source_name, sha256=ocr.sha256, created_at=ocr.created_at,
                               model_versions={k: v for k, v in ocr.model_versions.items() if k in ("det", "rec")},
                               pages=pages, fields=gold_fields)
    return result
