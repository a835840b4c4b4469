"""``paperloop import values FILE``: gold labels from field values kept in another system.

FILE is CSV (columns ``document``, ``field``, ``value``; a header row) or JSON (a list of such
objects, or ``{document: {field: value}}``). Document paths are relative to FILE's folder. Each
document is read by the models in service, its values are found among the OCR words
(:mod:`service.fields.matching`), the words are labelled (:mod:`service.fields.bootstrap`), and the
document is filed as gold with source ``values:bootstrapped``, for review to confirm.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from service.config import PaperloopConfig
from service.fields.bootstrap import BOOTSTRAPPED_SOURCE, Bootstrapped, bootstrap
from service.labels import LabelStore
from service.pipeline import DocumentPipeline
from service.store import Store

ValuesByDocument = dict[Path, dict[str, str]]


class ValuesFileError(ValueError):
    """A values file that cannot be read, or names unknown fields or missing documents."""


@dataclass
class ImportReport:
    """What an import of values did: documents filed, values found and missed per field."""

    documents: int = 0
    found: Counter = field(default_factory=Counter)
    missing: Counter = field(default_factory=Counter)
    results: list[Bootstrapped] = field(default_factory=list)


def _rows(path: Path) -> list[dict[str, str]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            return [{"document": d, "field": f, "value": v} for d, values in data.items() for f, v in values.items()]
        return list(data)
    return list(csv.DictReader(text.splitlines()))


def read_values(path: Path, cfg: PaperloopConfig) -> ValuesByDocument:
    """Document path → field → value, checked against the schema (``fields``) and the file system."""
    try:
        rows = _rows(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise ValuesFileError(f"cannot read values file {path}: {exc}") from exc
    values: ValuesByDocument = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not {"document", "field", "value"} <= set(row):
            raise ValuesFileError(f"{path}: row {number} needs document, field and value")
        if cfg.fields.get(str(row["field"])) is None:
            raise ValuesFileError(f"{path}: row {number}: field {row['field']!r} is not in the schema "
                                  f"(fields: {', '.join(cfg.fields.names) or 'none configured'})")
        document = (path.parent / str(row["document"])).resolve()
        if not document.is_file():
            raise ValuesFileError(f"{path}: row {number}: no such document {document}")
        values.setdefault(document, {})[str(row["field"])] = str(row["value"])
    return values


def document_id(path: Path, sha256: str) -> str:
    """The gold document id of an imported file: its name's stem and the start of its hash."""
    return f"{path.stem}-{sha256[:8]}"


def import_values(cfg: PaperloopConfig, values: ValuesByDocument, split: str,
                  pipeline: DocumentPipeline | None = None) -> ImportReport:
    """OCR each document, label its values' words and file it as gold in ``split`` (see the module docstring)."""
    pipeline = pipeline or DocumentPipeline(cfg)
    store = Store(cfg.paths.database)
    labels, report = LabelStore(store), ImportReport()
    try:
        for path, known in sorted(values.items()):
            sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
            ocr = pipeline.process_file(path, document_id(path, sha256), sha256, path.name)
            result = bootstrap(ocr, known, cfg.fields, cfg.kie.other_label)
            labels.put(result.document, source=BOOTSTRAPPED_SOURCE, split=split)
            report.documents += 1
            report.found.update(list(result.found))
            report.missing.update(result.missing)
            report.results.append(result)
    finally:
        store.close()
    return report
