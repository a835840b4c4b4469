"""A reviewer's save becomes the document's result: what a user reads is the reviewed document.

The pipeline's prediction stays in SQLite (``segments``, ``links``: what the models said, which the
review app and the learning loop compare against), the reviewed document is the gold one
(``gold_documents``), and the output JSON, the interface for other programs, is rewritten from the
gold: its segments, labels and links as the reviewer left them, the key-value pairs and the schema's
fields read from them, ``state: reviewed`` and a ``review`` record (who, when, which revision). The
document and its job are ``reviewed`` in SQLite too.
"""

from __future__ import annotations

import re
from pathlib import Path

from service.config import PaperloopConfig
from service.document import Document
from service.fields.extract import fill_fields
from service.results import result_json, write_json_atomic
from service.review_store import ReviewStore
from service.store import JobState

_DOCUMENT_ID = re.compile(r"doc-[0-9]{6,}")


def reviewed_result(gold: Document, cfg: PaperloopConfig) -> Document:
    """The result a user reads for a reviewed document: a copy of the gold with the schema's fields read
    from the reviewer's labels (each certain: a person chose it)."""
    result = Document.from_dict(gold.to_dict())
    if cfg.fields.fields:
        fill_fields(result, cfg.fields)
    return result


def publish_review(cfg: PaperloopConfig, records: ReviewStore, gold: Document, reviewed_by: str,
                   reviewed_at: str, revision: int) -> Path | None:
    """Make ``gold`` the result of its document: ``reviewed`` state in SQLite, the output JSON rewritten.

    Returns the JSON's path, or ``None`` when the pipeline never processed the document (gold imported
    from a label file has no result to replace). Call it inside the transaction that saves the gold, so
    that a JSON that cannot be written undoes the save.
    """
    if not _DOCUMENT_ID.fullmatch(gold.id):
        return None  # only the pipeline's documents (doc-<job id>) have an output file
    stored = records.mark_reviewed(gold.id)
    if stored is None:
        return None
    path = cfg.paths.resolve("output") / f"{gold.id}.json"
    review = {"reviewed_by": reviewed_by, "reviewed_at": reviewed_at, "revision": revision}
    write_json_atomic(path, result_json(reviewed_result(gold, cfg), JobState.REVIEWED, stored.review_reason,
                                        stored.routing, review))
    return path
