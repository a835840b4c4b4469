"""Gold KIE documents as training data, at the granularity the pipeline sees.

Imported data sets label *entities* (a question may span two lines); the pipeline labels OCR
*lines*. Each gold document with word boxes is therefore also offered split into lines, each line
keeping its entity's label, and links joining the first lines of the linked entities.
"""

from __future__ import annotations

from dataclasses import replace

from service.document import Document, Link, Page, Segment, Word, bbox_to_quad
from service.funsd import Word as FunsdWord
from service.funsd import group_into_rows, union_box


def _lines_of(segment: Segment) -> list[Segment]:
    words = [FunsdWord(text=w.text, box=w.box) for w in segment.words if w.text.strip()]
    rows = group_into_rows(words)
    if len(rows) <= 1:
        return [segment]
    return [
        Segment(id=f"{segment.id}.l{k}", box=bbox_to_quad(union_box([w.box for w in row])),
                text=" ".join(w.text for w in row), label=segment.label,
                words=[Word(text=w.text, box=w.box) for w in row])
        for k, row in enumerate(rows)
    ]


def _words_spell_text(segment: Segment) -> bool:
    return " ".join(w.text for w in segment.words).split() == segment.text.split()


def line_segments(segments: list[Segment]) -> list[Segment]:
    """Segments as text lines: an entity whose words spell its text is split into its lines; one
    whose text was changed after its words were placed (a reviewer's fix) is kept whole."""
    return [line for s in segments for line in (_lines_of(s) if s.words and _words_spell_text(s) else [s])]


def split_into_lines(document: Document) -> Document:
    """The document with every multi-line segment split into its lines (needs word boxes)."""
    first_line: dict[str, str] = {}
    pages = []
    for page in document.pages:
        segments = []
        for segment in page.segments:
            lines = _lines_of(segment)
            first_line[segment.id] = lines[0].id
            segments.extend(lines)
        pages.append(Page(number=page.number, width=page.width, height=page.height, image=page.image,
                          segments=segments))
    links = [Link(key=first_line[l.key], value=first_line[l.value]) for l in document.links
             if l.key in first_line and l.value in first_line]
    return replace(document, id=f"{document.id}#lines", pages=pages, links=links)


def training_documents(documents: list[Document], with_lines: bool = True) -> list[Document]:
    """The documents, plus their line-split versions where that changes anything."""
    result = list(documents)
    if with_lines:
        for document in documents:
            lines = split_into_lines(document)
            if len(lines.segments) != len(document.segments):
                result.append(lines)
    return result
