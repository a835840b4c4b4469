"""The output JSON: it carries its schema version, and every key in it is documented in the README."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from service.config import PaperloopConfig
from service.document import SCHEMA_VERSION, Document, Link, Word
from service.jobs import JobRunner
from service.ocr import OcrEngine
from service.pipeline import DocumentPipeline
from service.store import Store

from conftest import PROJECT_ROOT


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key of a JSON value as a dotted path; list items are ``[]`` (``pages[].segments[].text``)."""
    if isinstance(value, dict):
        paths = set()
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            paths |= {path} | key_paths(item, path)
        return paths
    if isinstance(value, list):
        return set().union(*(key_paths(item, f"{prefix}[]") for item in value)) if value else set()
    return set()


def readme_section(title: str) -> str:
    """The README's ``## title`` section, up to the next heading of the same level."""
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def documented_fields() -> set[str]:
    """The field paths in the first column of the README's "Output JSON" table."""
    return set(re.findall(r"^\| `([^`]+)` \|", readme_section("Output JSON"), re.M))


def _fill_optional_parts(document: Document) -> Document:
    """The parts OCR alone leaves empty (links) filled in, and words made sure of, so that every key occurs."""
    first, second = document.segments[:2]
    first.words = [Word(text=first.text.split()[0], box=first.bbox)]
    document.links = [Link(key=first.id, value=second.id, score=0.9, re_version="v1")]
    return document


def _process(cfg: PaperloopConfig, ocr_engine: OcrEngine, page: Path) -> dict[str, Any]:
    """The output JSON of ``page`` processed by the job runner, as a dict."""
    runner = JobRunner(cfg, Store(cfg.paths.database), DocumentPipeline(cfg, ocr_engine))
    outcome = runner.process_job(runner.enqueue(page, keep_source=True).id, keep_source=True)
    assert outcome is not None and outcome.json_path is not None, outcome
    return json.loads(outcome.json_path.read_text(encoding="utf-8"))


@pytest.fixture
def processed(cfg: PaperloopConfig, ocr_engine: OcrEngine, page_path: Path) -> dict[str, Any]:
    """The output JSON of a synthetic form, as a dict."""
    return _process(cfg, ocr_engine, page_path)


def test_the_output_json_carries_the_schema_version(processed: dict[str, Any]) -> None:
    assert processed["schema_version"] == SCHEMA_VERSION == 1
    assert len(processed["pages"][0]["segments"]) >= 5  # the page was read


def test_every_key_of_the_output_json_is_documented_in_the_readme(processed: dict[str, Any], cfg: PaperloopConfig,
                                                                   ocr_engine: OcrEngine, pages: list[Path]) -> None:
    cfg.routing.min_rec_score = 1.0  # every line is below it: a document sent to review, with its reasons
    for_review = _process(cfg, ocr_engine, pages[1])
    assert for_review["state"] == "needs_review"
    document = _fill_optional_parts(Document.from_dict(processed))
    full = {**processed, **document.to_dict(), "key_values": document.key_values()}
    reviewed = _reviewed(cfg, for_review["id"])
    keys = key_paths(processed) | key_paths(full) | key_paths(for_review) | key_paths(reviewed)
    assert {"pages[].segments[].words[].text", "links[].re_version", "key_values[].key_label",
            "routing.reasons[].threshold", "review.reviewed_by"} <= keys
    missing = keys - documented_fields()
    assert not missing, f"README 'Output JSON' does not document: {sorted(missing)}"


def _reviewed(cfg: PaperloopConfig, document_id: str) -> dict[str, Any]:
    """The output JSON of ``document_id`` once a reviewer has accepted it."""
    from service.review import ReviewService

    service = ReviewService(cfg, Store(cfg.paths.database))
    draft, revision = service.working_copy(document_id)
    service.save(document_id, draft, "alice", revision, accept=True)
    return json.loads((cfg.paths.resolve("output") / f"{document_id}.json").read_text(encoding="utf-8"))
