"""Typed values inside text: find a field's value in a segment's text and normalize it.

A segment labelled ``date`` may read ``Date:07/03/2018`` or ``15/01/201810:59:13`` (the time glued
on); one labelled ``total`` may read ``TOTAL RM 193.00``. :func:`parse_value` finds the value's
characters in such a text and normalizes it: ISO dates, decimal amounts with the currency when one
is printed, numbers without thousands separators, the matched group of a pattern, or the text
itself (whitespace folded) for text fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

from service.fields.schema import FieldsConfig, FieldSpec

MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)}
_MONTH = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_NUMERIC_DATE = re.compile(r"(?<!\d)(\d{1,4})\s?[/.\-]\s?(\d{1,2})\s?[/.\-]\s?(\d{4}|\d{2})")
_DAY_MONTH_YEAR = re.compile(rf"(?<!\d)(\d{{1,2}})(?:st|nd|rd|th)?[\s\-/.,]*{_MONTH}[\s\-/.,]*(\d{{4}}|\d{{2}}(?!\d))", re.I)
_MONTH_DAY_YEAR = re.compile(rf"{_MONTH}[\s\-/.]*(\d{{1,2}})(?:st|nd|rd|th)?,?[\s\-/.]*(\d{{4}}|\d{{2}})(?!\d)", re.I)
_NUMBER = re.compile(r"(?<![\d])-?\d{1,3}(?:[,.\s]\d{3})+(?:[.,]\d{1,2})?(?!\d)|(?<![\d])-?\d+(?:[.,]\d{1,2})?(?!\d)")


@dataclass(frozen=True)
class ParsedValue:
    """A value found in a text: normalized, with its currency (amounts) and its characters' span."""

    value: str
    start: int
    end: int
    currency: str | None = None


def fold(text: str) -> str:
    """Case and whitespace folded: the form in which two values are compared exactly."""
    return " ".join(text.casefold().split())


def squash(text: str) -> str:
    """Case folded, without whitespace: the form in which OCR text that lost its spaces is compared."""
    return "".join(text.casefold().split())


_DIGIT_LOOKALIKES = str.maketrans({"O": "0", "o": "0", "I": "1", "l": "1", "|": "1"})


def with_misread_digits(text: str) -> str:
    """``text`` with the letters a recognizer reads for digits put back where they stand against a digit
    and not inside a word (``RM1O.35`` → ``RM10.35``, ``2O18`` → ``2018``; ``NO.12`` and ``Vol1`` are kept).
    The length is unchanged, so spans found in the result are spans of ``text``."""
    chars = list(text)
    for i, c in enumerate(text):
        if c not in "OoIl|":
            continue
        left, right = text[i - 1:i], text[i + 1:i + 2]
        if (left.isdigit() and not right.isalpha()) or (right.isdigit() and not left.isalpha()):
            chars[i] = c.translate(_DIGIT_LOOKALIKES)
    return "".join(chars)


def _year(text: str) -> int:
    year = int(text)
    return year + (2000 if year < 70 else 1900) if len(text) == 2 else year


def _iso(year: int, month: int, day: int) -> str | None:
    if not 1900 <= year <= 2099:
        return None
    try:
        return date(year, month, day).isoformat()
    except ValueError:
        return None


def _numeric_date(match: re.Match[str], order: str) -> str | None:
    a, b, c = match.group(1), match.group(2), match.group(3)
    if len(a) == 4:  # 2018-03-07 is year first whatever the configured order
        return _iso(int(a), int(b), int(c))
    if len(a) > 2:
        return None
    if order == "MDY":
        return _iso(_year(c), int(a), int(b))
    if order == "YMD" and len(c) <= 2 and len(a) == 2:
        return _iso(_year(a), int(b), int(c))
    return _iso(_year(c), int(b), int(a))


def find_dates(text: str, order: str = "DMY") -> list[ParsedValue]:
    """Every date in ``text`` (numeric in ``order``, or with a month name), as ISO dates, in text order."""
    found, text = [], with_misread_digits(text)
    for match in _NUMERIC_DATE.finditer(text):
        if (iso := _numeric_date(match, order)) is not None:
            found.append(ParsedValue(iso, match.start(), match.end()))
    for match in _DAY_MONTH_YEAR.finditer(text):
        if (iso := _iso(_year(match.group(3)), MONTHS[match.group(2).lower()], int(match.group(1)))) is not None:
            found.append(ParsedValue(iso, match.start(), match.end()))
    for match in _MONTH_DAY_YEAR.finditer(text):
        if (iso := _iso(_year(match.group(3)), MONTHS[match.group(1).lower()], int(match.group(2)))) is not None:
            found.append(ParsedValue(iso, match.start(), match.end()))
    return sorted(found, key=lambda v: v.start)


def to_decimal(token: str) -> Decimal | None:
    """A printed number as a Decimal: ``1,234.50`` / ``1.234,50`` / ``1 234`` / ``193.00``."""
    token = token.replace(" ", "")
    last_sep = max(token.rfind("."), token.rfind(","))
    if last_sep >= 0 and len(token) - last_sep - 1 in (1, 2):  # a decimal separator: 1 or 2 digits after it
        whole, fraction = token[:last_sep], token[last_sep + 1:]
    else:
        whole, fraction = token, ""
    whole = whole.replace(",", "").replace(".", "")
    try:
        return Decimal(f"{whole}.{fraction}" if fraction else whole)
    except InvalidOperation:
        return None


def find_numbers(text: str) -> list[ParsedValue]:
    """Every number in ``text``, normalized (no thousands separators, ``.`` as the decimal point)."""
    return _numbers_in(with_misread_digits(text))


def _numbers_in(text: str) -> list[ParsedValue]:
    found = []
    for match in _NUMBER.finditer(text):
        number = to_decimal(match.group(0))
        if number is not None:
            found.append(ParsedValue(_plain(number), match.start(), match.end()))
    return found


def _plain(number: Decimal) -> str:
    return format(number, "f")


def find_currency(text: str, currencies: dict[str, str]) -> str | None:
    """The ISO code of the first currency printed in ``text`` (longest symbol first, whole words for codes)."""
    best: tuple[int, int, str] | None = None
    for symbol, code in currencies.items():
        pattern = re.escape(symbol)
        if symbol[-1:].isalpha():
            pattern = rf"(?<![A-Za-z]){pattern}(?![A-Za-z])"
        match = re.search(pattern, text)
        if match and (best is None or (match.start(), -len(symbol)) < (best[0], best[1])):
            best = (match.start(), -len(symbol), code)
    return best[2] if best else None


def find_amounts(text: str, currencies: dict[str, str]) -> list[ParsedValue]:
    """Every amount in ``text`` with two decimals (``193.00``), else every number; with the printed currency."""
    repaired = with_misread_digits(text)
    numbers = _numbers_in(repaired)
    decimal_ones = [n for n in numbers if re.search(r"[.,]\d{2}$", repaired[n.start:n.end])]
    currency = find_currency(text, currencies)
    return [ParsedValue(_two_places(n.value), n.start, n.end, currency) for n in (decimal_ones or numbers)]


def _two_places(value: str) -> str:
    return _plain(Decimal(value).quantize(Decimal("0.01")))


def find_values(spec: FieldSpec, text: str, cfg: FieldsConfig) -> list[ParsedValue]:
    """Every value of ``spec``'s type in ``text``, in text order (a text field: the whole text, folded)."""
    if spec.type == "date":
        return find_dates(text, cfg.date_order)
    if spec.type == "amount":
        return find_amounts(text, cfg.currencies)
    if spec.type == "number":
        return find_numbers(text)
    if spec.type == "pattern":
        assert spec.pattern is not None
        return [ParsedValue(m.group(1) if m.groups() else m.group(0), *(m.span(1) if m.groups() else m.span()))
                for m in re.finditer(spec.pattern, text)]
    stripped = " ".join(text.split())
    return [ParsedValue(stripped, 0, len(text))] if stripped else []


def parse_value(spec: FieldSpec, text: str, cfg: FieldsConfig) -> ParsedValue | None:
    """The field's value in a labelled text: for amounts and numbers the last one (a total line ends
    with its total), otherwise the first; ``None`` when the text holds no value of the type."""
    values = find_values(spec, text, cfg)
    if not values:
        return None
    return values[-1] if spec.type in ("amount", "number") else values[0]


def normalize(spec: FieldSpec, value: str, cfg: FieldsConfig) -> str | None:
    """A value as given by a user (an ERP export, a spreadsheet) in the normalized form of its type."""
    if spec.type == "text":
        return fold(value) or None
    parsed = parse_value(spec, value, cfg)
    return parsed.value if parsed is not None else None


def same_value(spec: FieldSpec, a: str, b: str, cfg: FieldsConfig) -> bool:
    """Whether two printed values are the same value: dates and amounts as values, text folded."""
    if spec.type == "text":
        return fold(a) == fold(b)
    na, nb = normalize(spec, a, cfg), normalize(spec, b, cfg)
    return na is not None and na == nb
