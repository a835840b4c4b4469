"""The gold-label store: labelled documents (imported data sets, reviewers' corrections).

A gold document is a :class:`Document` whose segments carry gold ``label``s and whose ``links``
are gold key → value links. Each belongs to a split: ``train`` (used for training), ``holdout``
(frozen evaluation set, never trained on) or ``test`` (a public benchmark's test split).
Holdout membership is permanent: a holdout document never moves to another split, and a
document stored in another split never moves into holdout (models may have trained on it).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from service.document import Document
from service.store import Store, utc_now

SPLITS = ("train", "holdout", "test")


class LabelError(ValueError):
    """A labelled document is invalid (unknown split, dangling link, duplicate segment id...)."""


def validate(document: Document) -> None:
    """Check that segment ids are unique and every link joins two existing segments."""
    ids = [s.id for s in document.segments]
    if len(ids) != len(set(ids)):
        duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise LabelError(f"{document.id}: duplicate segment ids {duplicates[:5]}")
    known = set(ids)
    for link in document.links:
        if link.key not in known or link.value not in known:
            raise LabelError(f"{document.id}: link {link.key} → {link.value} names a missing segment")


class FrozenHoldoutError(LabelError):
    """A document would move into or out of the frozen holdout split."""


def check_split_change(document_id: str, stored: str | None, split: str) -> None:
    """Refuse a move into or out of ``holdout`` (``stored`` is the document's split now, if any)."""
    if stored is None or stored == split or "holdout" not in (stored, split):
        return
    if stored == "holdout":
        raise FrozenHoldoutError(f"{document_id} is in the frozen holdout split and stays there; it cannot "
                                 f"move to {split} (holdout documents are never trained on). Import it with "
                                 f"--split holdout, or leave it out of the data")
    raise FrozenHoldoutError(f"{document_id} is in the {stored} split and cannot join the frozen holdout split "
                             f"(models may have been trained on it); import it with --split {stored}")


class LabelStore:
    """Gold labelled documents in the Paperloop database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def put(self, document: Document, source: str, split: str) -> None:
        """Insert or replace a gold document; :class:`FrozenHoldoutError` if it would move into or out of holdout."""
        if split not in SPLITS:
            raise LabelError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        validate(document)
        now = utc_now()
        with self.store.transaction() as db:
            existing = db.execute("SELECT created_at, split FROM gold_documents WHERE id = ?", [document.id]).fetchone()
            check_split_change(document.id, existing[1] if existing else None, split)
            db["gold_documents"].upsert({
                "id": document.id, "source": source, "split": split,
                "document": json.dumps(document.to_dict(), ensure_ascii=False),
                "created_at": existing[0] if existing else now, "updated_at": now,
            }, pk="id")

    def exists(self, document_id: str) -> bool:
        """Whether a gold document with this id is stored."""
        with self.store.transaction() as db:
            return db.execute("SELECT 1 FROM gold_documents WHERE id = ?", [document_id]).fetchone() is not None

    def get(self, document_id: str) -> Document:
        """One gold document; ``KeyError`` when absent."""
        with self.store.transaction() as db:
            row = db.execute("SELECT document FROM gold_documents WHERE id = ?", [document_id]).fetchone()
        if row is None:
            raise KeyError(document_id)
        return Document.from_dict(json.loads(row[0]))

    def documents(self, split: str | None = None, source: str | None = None) -> list[Document]:
        """Gold documents, by id, optionally filtered by split and source."""
        clauses, args = [], []
        for column, value in (("split", split), ("source", source)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.store.transaction() as db:
            rows = db.execute(f"SELECT document FROM gold_documents {where} ORDER BY id", args).fetchall()
        return [Document.from_dict(json.loads(r[0])) for r in rows]

    def counts(self) -> dict[str, Any]:
        """Documents, segments, links and segments per label, for each split."""
        result: dict[str, Any] = {}
        for split in SPLITS:
            docs = self.documents(split)
            labels = Counter(s.label or "(none)" for d in docs for s in d.segments)
            result[split] = {"documents": len(docs), "segments": sum(labels.values()),
                             "links": sum(len(d.links) for d in docs), "labels": dict(sorted(labels.items()))}
        return result
