"""The review app's page editor, the service side: what the editor is given and how its save is applied.

The editor (``review_app/box_editor``) holds a document's whole edit state in the browser: boxes,
text, labels, links and which words form one entity. :func:`editor_document` is what it starts from;
a save sends one diff (:func:`apply_editor_diff`): the segments it changed or made, in full, the ids it
removed, and the links as they are now. Merging two segments makes one whose words are the union of
theirs, with the text joined in reading order (:func:`reading_order`); splitting one partitions its
words. :func:`service.review.gold.diff_documents` recognises both in the audit log.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from service.config import PaperloopConfig
from service.document import Document, Link, Segment, Word
from service.review.edits import page_of
from service.review.gold import segment_words
from service.review.routing import segment_confidence, segment_is_low, segment_uncertainty

NEW_ID = re.compile(r"^p(\d+)-[rms]\d{4,}$")  # ids the editor gives the segments it makes


class EditorDiffError(ValueError):
    """A diff from the editor names something the document does not have."""


def reading_order(words: Iterable[Word]) -> list[Word]:
    """Words in reading order: lines top to bottom (a word joins a line when its vertical centre lies
    within the line's first word's height), each line left to right."""
    lines: list[list[Word]] = []
    for word in sorted(words, key=lambda w: ((w.box[1] + w.box[3]) / 2, w.box[0])):
        centre = (word.box[1] + word.box[3]) / 2
        line = lines[-1] if lines else None
        if line and line[0].box[1] <= centre <= line[0].box[3]:
            line.append(word)
        else:
            lines.append([word])
    return [w for line in lines for w in sorted(line, key=lambda w: w.box[0])]


def joined_text(words: Iterable[Word]) -> str:
    """The words' text in reading order, one space apart."""
    return " ".join(w.text for w in reading_order(words) if w.text)


def _segment_payload(segment: Segment, page: int, cfg: PaperloopConfig) -> dict[str, Any]:
    """One segment as the editor shows it: box as x0, y0, x1, y1, its words, how uncertain it is."""
    uncertainty = segment_uncertainty(segment, cfg.review.uncertainty, cfg.review.uncertainty_from)
    return {"id": segment.id, "page": page, "box": [round(v, 1) for v in segment.bbox], "text": segment.text,
            "label": segment.label, "words": [w.to_dict() for w in segment_words(segment)],
            "low": segment_is_low(segment, cfg), "unc": uncertainty, "conf": segment_confidence(segment),
            "rec_score": segment.rec_score, "label_score": segment.label_score,
            "group_score": segment.group_score}


def editor_document(document: Document, cfg: PaperloopConfig) -> dict[str, Any]:
    """The document as the editor starts from it (JSON-ready): pages, segments in reading order, links
    with their probability and whether it is below ``review.min_link_score`` (weak)."""
    threshold = cfg.review.min_link_score
    return {
        "id": document.id,
        "pages": [{"number": p.number, "width": p.width, "height": p.height} for p in document.pages],
        "segments": [_segment_payload(s, p.number, cfg) for p in document.pages for s in p.segments],
        "links": [{"key": link.key, "value": link.value, "score": link.score,
                   "weak": link.score is not None and link.score < threshold} for link in document.links],
    }


def _box(values: Iterable[Any]) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = (float(v) for v in values)
    x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _words(items: Iterable[Mapping[str, Any]]) -> list[Word]:
    return [Word.from_dict(w) for w in items if str(w.get("text", "")).strip()]


def _check_label(label: Any, labels: list[str]) -> str | None:
    if label in (None, ""):
        return None
    if label not in labels:
        raise EditorDiffError(f"unknown label {label!r}; the schema has {labels}")
    return str(label)


def _update_segment(segment: Segment, data: Mapping[str, Any], labels: list[str]) -> None:
    """Set the fields the editor changed; a new text or box without new words drops the old words."""
    if "label" in data:
        segment.label = _check_label(data["label"], labels)
    if "text" in data or "box" in data:
        segment.words = []
    if "text" in data:
        segment.text = str(data["text"])
    if "box" in data:
        segment.box = _box(data["box"])
    if "words" in data:
        segment.words = _words(data["words"])
    if "rec_version" in data:
        segment.rec_version, segment.rec_score = data["rec_version"], data.get("rec_score")


def _apply_segment(document: Document, data: Mapping[str, Any], labels: list[str]) -> None:
    """Apply the editor's version of one segment: the fields it changed of a known one, or a new one in
    full (id ``p<page>-r0000`` and the like)."""
    segment_id = str(data["id"])
    known = {s.id: s for s in document.segments}
    if segment_id in known:
        _update_segment(known[segment_id], data, labels)
        return
    match = NEW_ID.match(segment_id)
    if not match:
        raise EditorDiffError(f"a new segment id must look like p1-r0000, not {segment_id!r}")
    page = page_of(document, int(data.get("page", match.group(1))))
    page.segments.append(Segment(id=segment_id, box=_box(data["box"]), text=str(data.get("text", "")),
                                 label=_check_label(data.get("label"), labels), words=_words(data.get("words", [])),
                                 rec_score=data.get("rec_score"), rec_version=data.get("rec_version")))


def _apply_links(document: Document, pairs: Iterable[Iterable[str]]) -> None:
    """The links become ``pairs`` (key, value); a pair that was there keeps its score and version."""
    ids = {s.id for s in document.segments}
    before = {(link.key, link.value): link for link in document.links}
    links: list[Link] = []
    for key, value in ((str(k), str(v)) for k, v in pairs):
        if key not in ids or value not in ids:
            raise EditorDiffError(f"a link names a segment the document does not have: {key} -> {value}")
        if key != value and (key, value) not in {(l.key, l.value) for l in links}:
            links.append(before.get((key, value)) or Link(key=key, value=value))
    document.links = links


def apply_editor_diff(document: Document, diff: Mapping[str, Any], labels: list[str]) -> int:
    """Apply one save's diff from the editor to a working copy, in place; returns how many segments and
    links it touched. Nothing is applied when any part of it is wrong (:class:`EditorDiffError`).

    ``diff``: ``segments`` (new segments in full: id, page, box as x0, y0, x1, y1, text, label, words;
    known ones with the fields that changed), ``deleted`` (segment ids), ``links`` (every key, value
    pair as it is now, or absent when the links did not change).
    """
    work = Document.from_dict(document.to_dict())
    deleted = [str(d) for d in diff.get("deleted", [])]
    known = {s.id for s in work.segments}
    missing = [d for d in deleted if d not in known]
    if missing:
        raise EditorDiffError(f"cannot delete segments the document does not have: {missing}")
    for page in work.pages:
        page.segments = [s for s in page.segments if s.id not in set(deleted)]
    for data in diff.get("segments", []):
        _apply_segment(work, data, labels)
    links = diff.get("links")
    if links is None:
        alive = {s.id for s in work.segments}
        work.links = [l for l in work.links if l.key in alive and l.value in alive]
    else:
        _apply_links(work, links)
    document.pages, document.links = work.pages, work.links
    return len(diff.get("segments", [])) + len(deleted) + (len(links) if links is not None else 0)
