"""Editing a working copy in the review app: segments, boxes, links, table edits, label colours.

These change a :class:`Document` in place; nothing is stored until
:meth:`service.review.queue.ReviewService.save`.
"""

from __future__ import annotations

from typing import Any, Iterable

from service.document import Document, Link, Page, Segment
from service.review.gold import _box_changed


LABEL_COLOURS = ("#7e57c2", "#1e88e5", "#43a047", "#8d6e63", "#fb8c00", "#00897b", "#d81b60", "#3949ab",
                 "#c0ca33", "#6d4c41")
UNLABELLED_COLOUR = "#9e9e9e"
KNOWN_COLOURS = {"header": "#7e57c2", "question": "#1e88e5", "answer": "#43a047", "other": "#8d6e63"}


def label_colours(labels: Iterable[str]) -> dict[str, str]:
    """A stable colour per label (FUNSD's four have fixed ones; others take the palette in order)."""
    colours: dict[str, str] = {}
    spare = [c for c in LABEL_COLOURS if c not in KNOWN_COLOURS.values()]
    for label in labels:
        if label in colours:
            continue
        colours[label] = KNOWN_COLOURS.get(label) or (spare.pop(0) if spare else UNLABELLED_COLOUR)
    return colours


def page_of(document: Document, number: int) -> Page:
    """The page with this 1-based number."""
    for page in document.pages:
        if page.number == number:
            return page
    raise KeyError(number)


def update_segment(document: Document, segment_id: str, **fields: Any) -> bool:
    """Set ``text`` / ``label`` / ``box`` of a segment (``box`` as x0, y0, x1, y1); whether it changed.

    A changed text or box drops the segment's words, which no longer match it.
    """
    segment = document.segment(segment_id)
    changed = False
    if "text" in fields and fields["text"] is not None and fields["text"] != segment.text:
        segment.text, changed = str(fields["text"]), True
        segment.words = []
    if "label" in fields and (fields["label"] or None) != segment.label:
        segment.label, changed = fields["label"] or None, True
    if fields.get("box") is not None:
        x0, y0, x1, y1 = (float(v) for v in fields["box"])
        quad = [(min(x0, x1), min(y0, y1)), (max(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1)),
                (min(x0, x1), max(y0, y1))]
        if _box_changed(segment.box, quad):
            segment.box, changed = quad, True
            segment.words = []
    return changed


def add_segment(document: Document, page_number: int, box: Iterable[float], text: str = "",
                label: str | None = None) -> str:
    """Add a reviewer's box to a page; returns its new id."""
    page = page_of(document, page_number)
    segment_id = new_segment_id(document, page_number)
    x0, y0, x1, y1 = (float(v) for v in box)
    page.segments.append(Segment(id=segment_id, box=[(x0, y0), (x1, y0), (x1, y1), (x0, y1)], text=text,
                                 label=label or None))
    return segment_id


def delete_segment(document: Document, segment_id: str) -> None:
    """Remove a segment and the links that name it."""
    for page in document.pages:
        page.segments = [s for s in page.segments if s.id != segment_id]
    document.links = [link for link in document.links if segment_id not in (link.key, link.value)]


def add_link(document: Document, key: str, value: str) -> bool:
    """Add a key → value link between two existing segments; whether it was new."""
    document.segment(key), document.segment(value)
    if key == value or any(link.key == key and link.value == value for link in document.links):
        return False
    document.links.append(Link(key=key, value=value))
    return True


def remove_link(document: Document, key: str, value: str) -> bool:
    """Remove a key → value link; whether there was one."""
    before = len(document.links)
    document.links = [link for link in document.links if (link.key, link.value) != (key, value)]
    return len(document.links) != before


def new_segment_id(document: Document, page: int) -> str:
    """An unused id for a segment a reviewer adds on ``page`` (``p1-r0000``, ``p1-r0001``...)."""
    used = {s.id for s in document.segments}
    n = 0
    while f"p{page}-r{n:04d}" in used:
        n += 1
    return f"p{page}-r{n:04d}"
