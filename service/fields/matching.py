"""Find a value a user already has among a document's OCR words.

Text values are matched by approximate substring alignment over the page's words in reading order
(case, spaces and punctuation ignored: the base recognizer drops spaces), so a value may span
several lines (an address). Dates, amounts and numbers are compared as values: ``7/3/2018`` finds
``Date:07/03/2018``, ``193.00`` finds ``RM193.00``; when a value is printed several times, the
occurrence next to one of the field's printed keys wins, else the first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.document import Document, Segment
from service.fields.schema import FieldsConfig, FieldSpec
from service.fields.values import fold, normalize, find_values

WordRef = tuple[str, int]  # (segment id, index of the word in the segment)


@dataclass(frozen=True)
class Match:
    """Where a value was found: its words (in reading order), how far their text is from it, on which page."""

    words: tuple[WordRef, ...]
    distance: float  # normalized edit distance of the matched text (0: exact)
    page: int
    span: tuple[str, int, int] | None = None  # a typed value's characters: (segment id, start, end) in its text
    head: int = 0  # characters of the first word before a text value (``(123-X)SHOP``: the value starts at 7)
    tail: int = 0  # characters of the last word after a text value (``BHD.(974306-T)``: 11 after ``BHD.``)


def _letters(text: str) -> str:
    """Case folded, letters and digits only: the form in which text values are aligned."""
    return "".join(c for c in text.casefold() if c.isalnum())


def _page_words(document: Document, page_number: int) -> list[tuple[WordRef, str]]:
    page = next(p for p in document.pages if p.number == page_number)
    return [((s.id, i), w.text) for s in page.segments for i, w in enumerate(s.words)]


def align(pattern: str, text: str) -> tuple[int, int, int]:
    """Best approximate occurrence of ``pattern`` in ``text``: (edit distance, start, end)."""
    m = len(pattern)
    previous = [0] * (len(text) + 1)  # row 0: a match may start anywhere
    starts = list(range(len(text) + 1))
    for i in range(1, m + 1):
        current, current_starts = [i] + [0] * len(text), [0] + [0] * len(text)
        for j in range(1, len(text) + 1):
            options = ((previous[j - 1] + (pattern[i - 1] != text[j - 1]), starts[j - 1]),
                       (previous[j] + 1, starts[j]), (current[j - 1] + 1, current_starts[j - 1]))
            current[j], current_starts[j] = min(options)
        previous, starts = current, current_starts
    end = min(range(len(text) + 1), key=lambda j: previous[j])
    return previous[end], starts[end], end


def match_text(document: Document, value: str, max_distance: float) -> Match | None:
    """The run of words, across lines in reading order, whose letters are closest to ``value``'s."""
    target = _letters(value)
    if not target:
        return None
    best: Match | None = None
    for page in document.pages:
        words = _page_words(document, page.number)
        owner: list[int] = []
        for k, (_, text) in enumerate(words):
            owner.extend([k] * len(_letters(text)))
        text = "".join(_letters(t) for _, t in words)
        if not text:
            continue
        cost, start, end = align(target, text)
        distance = cost / len(target)
        if end > start and distance <= max_distance and (best is None or distance < best.distance):
            first, last = owner[start], owner[end - 1]
            letters_before = start - owner.index(first)
            letters_after = len(owner) - 1 - (end - 1) - owner[::-1].index(last)
            best = Match(tuple(ref for ref, _ in words[first:last + 1]), distance, page.number,
                         head=_head(words[first][1], letters_before, value),
                         tail=_tail(words[last][1], letters_after, value))
    return best


def _head(word: str, letters: int, value: str) -> int:
    """Characters of ``word`` before its letter number ``letters``, less the punctuation the value starts
    with (a value ``(M) SDN BHD`` keeps the ``(`` of ``X(M)``)."""
    if letters == 0:
        return 0
    seen, cut = 0, 0
    for cut, c in enumerate(word):
        if c.isalnum():
            if seen == letters:
                break
            seen += 1
    lead = len(value) - len(value.lstrip(_PUNCTUATION))
    while lead and cut > 0 and not word[cut - 1].isalnum():
        cut, lead = cut - 1, lead - 1
    return cut


def _tail(word: str, letters: int, value: str) -> int:
    """Characters of ``word`` after its last ``letters`` letters are dropped, less the punctuation the
    value ends with (a value ``SDN. BHD.`` keeps the ``.`` of ``BHD.(974306-T)``)."""
    if letters == 0:
        return 0
    return _head(word[::-1], letters, value[::-1])


_PUNCTUATION = "".join(chr(c) for c in range(32, 127) if not chr(c).isalnum() and chr(c) != " ")


def word_spans(segment: Segment) -> list[tuple[int, int]]:
    """Character span of each word in the segment's text."""
    spans, position = [], 0
    for word in segment.words:
        start = segment.text.find(word.text, position)
        start = position if start < 0 else start
        spans.append((start, start + len(word.text)))
        position = start + len(word.text)
    return spans


def words_of_span(segment: Segment, start: int, end: int) -> tuple[WordRef, ...]:
    return tuple((segment.id, i) for i, (a, b) in enumerate(word_spans(segment)) if a < end and b > start)


def has_key(document: Document, segment: Segment, start: int, keys: list[str]) -> bool:
    """Whether one of ``keys`` is printed before the value, in its segment or on its row to the left."""
    x0, y0, _, y1 = segment.bbox
    before = [segment.text[:start]]
    for other in document.segments:
        ox0, oy0, ox1, oy1 = other.bbox
        overlap = min(y1, oy1) - max(y0, oy0)
        if other is not segment and ox1 <= x0 + 5 and overlap > 0.5 * min(y1 - y0, oy1 - oy0):
            before.append(other.text)
    text = fold(" ".join(before))
    return any(re.search(rf"(?<![a-z]){re.escape(fold(key))}(?![a-z])", text) for key in keys)


def match_typed(document: Document, spec: FieldSpec, value: str, cfg: FieldsConfig) -> Match | None:
    """The words of a date, amount, number or pattern value equal to ``value`` as a value."""
    wanted = normalize(spec, value, cfg)
    if wanted is None:
        return None
    found = []
    for page in document.pages:
        for segment in page.segments:
            for parsed in find_values(spec, segment.text, cfg):
                words = words_of_span(segment, parsed.start, parsed.end)
                if parsed.value == wanted and words:
                    keyed = bool(spec.keys) and has_key(document, segment, parsed.start, spec.keys)
                    found.append((not keyed, Match(words, 0.0, page.number, (segment.id, parsed.start, parsed.end))))
    return min(found, key=lambda f: f[0])[1] if found else None


def find_value(document: Document, spec: FieldSpec, value: str, cfg: FieldsConfig) -> Match | None:
    """Where ``value`` of field ``spec`` is printed in the OCR'd ``document``, or ``None``.

    Typed values are compared as values first; a text value, or a typed one whose characters the
    recognizer misread, is matched by letters within ``cfg.match_max_distance``.
    """
    if spec.type != "text":
        typed = match_typed(document, spec, value, cfg)
        if typed is not None:
            return typed
        return match_text(document, value, min(cfg.match_max_distance, 0.1))
    return match_text(document, value, cfg.match_max_distance)
