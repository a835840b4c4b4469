"""Gold documents and diffs: what a reviewer's save stores and what it changed.

:func:`to_gold` strips an edited document down to its gold form (text, boxes, labels, links; no
scores); :func:`diff_documents` lists the changes from one version to the next as :class:`Change`
rows for the audit log, with the model versions that produced what was changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.document import Document, Link, Page, Segment, Word

BOX_TOLERANCE = 0.5  # pixels: a box moved less than this is unchanged


@dataclass(frozen=True)
class Change:
    """One reviewed change, as written to the audit log."""

    # accept | text | label | box | add_segment | delete_segment | merge | split | add_link | delete_link
    action: str
    target: str
    before: Any
    after: Any
    model_versions: dict[str, Any]


def segment_words(segment: Segment) -> list[Word]:
    """The segment's words; one word of its whole text and box when it has none (text edited, or read
    without character positions), so that merges and splits never lose text."""
    if segment.words:
        return list(segment.words)
    return [Word(text=segment.text, box=segment.bbox)] if segment.text.strip() else []


def _word_keys(segment: Segment) -> set[tuple[int, ...]]:
    """The segment's words by their place on the page (a word's text may have been corrected since)."""
    return {tuple(round(v) for v in w.box) for w in segment_words(segment)}


def _grouping_changes(old: dict[str, Segment], new: dict[str, Segment], versions: Any) -> list[Change]:
    """Merges (a new segment made of the words of two or more removed ones) and splits (a removed
    segment whose words went to two or more new ones): corrections of the entity grouping."""
    added = {sid: _word_keys(s) for sid, s in new.items() if sid not in old}
    removed = {sid: _word_keys(s) for sid, s in old.items() if sid not in new}
    changes = []
    for sid, words in added.items():
        parts = sorted(r for r, keys in removed.items() if keys and keys <= words)
        if len(parts) >= 2:
            changes.append(Change("merge", sid, parts, _segment_summary(new[sid]), versions(old[parts[0]])))
    for sid, words in removed.items():
        parts = sorted(a for a, keys in added.items() if keys and keys <= words)
        if len(parts) >= 2:
            changes.append(Change("split", sid, _segment_summary(old[sid]), parts, versions(old[sid])))
    return changes


def to_gold(edited: Document, prediction: Document) -> Document:
    """The gold form of an edited document: text, boxes, labels and links, no scores or versions.

    Links naming missing segments are dropped. The models that read the document are kept in
    ``model_versions``.
    """
    pages = []
    for page in edited.pages:
        segments = [Segment(id=s.id, box=[(round(float(x), 2), round(float(y), 2)) for x, y in s.box],
                            text=s.text.strip(), label=s.label or None, words=list(s.words))
                    for s in page.segments]
        pages.append(Page(number=page.number, width=page.width, height=page.height, image=page.image,
                          segments=segments))
    ids = {s.id for p in pages for s in p.segments}
    seen: set[tuple[str, str]] = set()
    links = []
    for link in edited.links:
        pair = (link.key, link.value)
        if link.key in ids and link.value in ids and link.key != link.value and pair not in seen:
            seen.add(pair)
            links.append(Link(key=link.key, value=link.value))
    return Document(id=edited.id, source_name=edited.source_name or prediction.source_name,
                    sha256=edited.sha256 or prediction.sha256, created_at=prediction.created_at,
                    model_versions=dict(prediction.model_versions), pages=pages, links=links)


def _segment_versions(segment: Segment) -> dict[str, Any]:
    return {k: v for k, v in (("det", segment.det_version), ("rec", segment.rec_version),
                              ("ser", segment.ser_version)) if v}


def _box_changed(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    return len(a) != len(b) or any(abs(p[0] - q[0]) > BOX_TOLERANCE or abs(p[1] - q[1]) > BOX_TOLERANCE
                                   for p, q in zip(a, b))


def diff_documents(before: Document, after: Document, from_gold: bool = False, revision: int = 0) -> list[Change]:
    """The changes from ``before`` to ``after``, one per field, segment or link."""
    def versions(segment: Segment | None = None, link: Link | None = None) -> dict[str, Any]:
        if from_gold:
            return {"gold_revision": revision}
        if segment is not None:
            return _segment_versions(segment) or dict(before.model_versions)
        if link is not None and link.re_version:
            return {"re": link.re_version}
        return dict(before.model_versions)

    old = {s.id: s for s in before.segments}
    new = {s.id: s for s in after.segments}
    changes = _grouping_changes(old, new, lambda segment: versions(segment))
    grouped = {sid for c in changes for sid in [c.target, *(c.before if c.action == "merge" else c.after)]}
    for sid, segment in new.items():
        if sid not in old:
            if sid not in grouped:
                changes.append(Change("add_segment", sid, None, _segment_summary(segment), {}))
            continue
        previous = old[sid]
        if previous.text.strip() != segment.text:
            changes.append(Change("text", sid, previous.text, segment.text, versions(previous)))
        if (previous.label or None) != (segment.label or None):
            changes.append(Change("label", sid, {"label": previous.label, "score": previous.label_score},
                                  {"label": segment.label}, versions(previous)))
        if _box_changed(previous.box, segment.box):
            changes.append(Change("box", sid, [list(p) for p in previous.box], [list(p) for p in segment.box],
                                  versions(previous)))
    for sid, segment in old.items():
        if sid not in new and sid not in grouped:
            changes.append(Change("delete_segment", sid, _segment_summary(segment), None, versions(segment)))
    old_links = {(link.key, link.value): link for link in before.links}
    new_links = {(link.key, link.value) for link in after.links}
    for pair in new_links - set(old_links):
        changes.append(Change("add_link", f"{pair[0]}->{pair[1]}", None, {"key": pair[0], "value": pair[1]}, {}))
    for pair in sorted(set(old_links) - new_links):
        link = old_links[pair]
        changes.append(Change("delete_link", f"{pair[0]}->{pair[1]}", link.to_dict(), None, versions(link=link)))
    return changes


def _segment_summary(segment: Segment) -> dict[str, Any]:
    return {"text": segment.text, "label": segment.label, "box": [list(p) for p in segment.box],
            "rec_score": segment.rec_score, "label_score": segment.label_score}
