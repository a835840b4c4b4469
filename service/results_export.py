"""``paperloop results``: the processed documents' fields or key-value pairs as one CSV table.

Operations teams read results in a spreadsheet: one row per document with the schema's fields, or one
row per key-value pair. The rows come from the output JSON files (:mod:`service.results`), so a reviewed
document contributes what the reviewer saved. Which documents: those the store lists as processed, in
the states asked for; each file is found by its document id under ``output/``, never by a stored path.

OCR text is data, not formulas: a cell that a spreadsheet would evaluate (starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return) is written with a leading apostrophe, unless it is a plain
number such as ``-12.50``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from service.config import PaperloopConfig
from service.store import DONE, NEEDS_REVIEW, REVIEWED, Store

RESULT_STATES = (DONE, NEEDS_REVIEW, REVIEWED)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")
_DOCUMENT_ID = re.compile(r"doc-[0-9]{6,}")
PAIR_COLUMNS = ("document", "source_name", "state", "key", "value", "score", "key_label", "value_label", "page")


class ResultsExportError(ValueError):
    """The export cannot be made as asked (an unknown state, no field schema for a fields table)."""


def spreadsheet_safe(value: Any) -> str:
    """``value`` as a CSV cell that no spreadsheet evaluates as a formula."""
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def result_files(cfg: PaperloopConfig, store: Store, states: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The output JSON of every document in ``states``, oldest first (a missing or unreadable file is skipped)."""
    unknown = sorted(set(states) - set(RESULT_STATES))
    if unknown:
        raise ResultsExportError(f"unknown state(s) {', '.join(unknown)}; expected some of {', '.join(RESULT_STATES)}")
    output = cfg.paths.resolve("output")
    for document_id in store.document_ids(states):
        if not _DOCUMENT_ID.fullmatch(document_id):
            continue
        try:
            yield json.loads((output / f"{document_id}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue


def field_rows(results: Iterable[dict[str, Any]], names: Sequence[str]) -> Iterator[list[str]]:
    """One row per document: id, source name, state, then each field's value and confidence (several
    values of a multi-value field joined by `` | ``, the lowest confidence)."""
    for result in results:
        row = [result["id"], result["source_name"], result.get("state")]
        for name in names:
            found = [f for f in result.get("fields", []) if f["name"] == name]
            confidences = [f["confidence"] for f in found if f.get("confidence") is not None]
            row += [" | ".join(str(f["value"]) for f in found if f.get("value") is not None),
                    min(confidences) if confidences else None]
        yield [spreadsheet_safe(cell) for cell in row]


def pair_rows(results: Iterable[dict[str, Any]]) -> Iterator[list[str]]:
    """One row per key-value pair: document, source name, state, key text, value text, score, labels, page."""
    for result in results:
        for pair in result.get("key_values", []):
            row = [result["id"], result["source_name"], result.get("state"), pair["key"], pair["value"],
                   pair.get("score"), pair.get("key_label"), pair.get("value_label"), pair.get("value_page")]
            yield [spreadsheet_safe(cell) for cell in row]


def write_results_csv(cfg: PaperloopConfig, store: Store, out: TextIO, pairs: bool = False,
                      states: Sequence[str] = RESULT_STATES) -> int:
    """Write the fields table (or, with ``pairs`` or no field schema, the pairs table) to ``out``;
    returns the number of rows written."""
    results = result_files(cfg, store, states)
    writer = csv.writer(out)
    if pairs or not cfg.fields.fields:
        header, rows = list(PAIR_COLUMNS), pair_rows(results)
    else:
        names = cfg.fields.names
        header = ["document", "source_name", "state"] + [c for n in names for c in (n, f"{n}_confidence")]
        rows = field_rows(results, names)
    writer.writerow(header)
    count = 0
    for row in rows:
        writer.writerow(row)
        count += 1
    return count
