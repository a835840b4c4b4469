"""A document's result as other programs read it: one JSON file per document in ``output/``.

The pipeline writes it when a document is processed (:meth:`service.jobs.JobRunner.finish`), and the
review writes it again when a reviewer saves the document (:mod:`service.review.publish`), so that what a
user reads is the reviewed result once there is one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from service.document import Document


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON so that readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def result_json(document: Document, state: str, review_reason: str | None, routing: dict[str, Any] | None,
                review: dict[str, Any] | None = None) -> dict[str, Any]:
    """The output JSON of a document: the document, its key-value pairs, where it went and why, and
    (once a reviewer saved it) who reviewed it and when."""
    data = {**document.to_dict(), "key_values": document.key_values(), "state": str(state),
            "review_reason": review_reason, "routing": routing}
    if review is not None:
        data["review"] = review
    return data
