"""The routing decision is stored with the result as structured data, and the review queue reads it.

No OCR model runs here: the pipeline is a stub that returns a prepared document and routes it with
the real rule (:meth:`DocumentPipeline.route`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import sqlite_utils

import service.store as store_module
from service.config import PaperloopConfig
from service.document import Document, Link, Page, Segment, bbox_to_quad
from service.jobs import JobRunner
from service.pipeline import DocumentPipeline, Routing
from service.review import Decision, ReviewReason, ReviewService, decide
from service.store import DONE, NEEDS_REVIEW, Store


def _segment(i: int, rec: float = 0.99, label: str | None = None, label_score: float | None = None) -> Segment:
    return Segment(id=f"p1-s{i:04d}", box=bbox_to_quad((10, 10 + 40 * i, 200, 40 + 40 * i)), text=f"text {i}",
                   label=label, label_score=label_score, det_score=0.9, rec_score=rec, det_version="base",
                   rec_version="base", ser_version="v1" if label else None)


def _document(segments: list[Segment], links: list[Link] = (), name: str = "form.png") -> Document:
    return Document(id="doc-000001", source_name=name, sha256=hashlib.sha256(name.encode()).hexdigest(),
                    created_at="2026-01-01T00:00:00.000+00:00", model_versions={"det": "base", "rec": "base"},
                    pages=[Page(number=1, width=600, height=400, segments=segments)], links=list(links))


class _StubPipeline:
    """A pipeline that 'reads' every file as the prepared document and routes it by the real rule."""

    def __init__(self, cfg: PaperloopConfig, document: Document) -> None:
        self.cfg = cfg
        self.document = document

    def process_file(self, path: Path, document_id: str, sha256: str, source_name: str) -> Document:
        self.document.id, self.document.sha256, self.document.source_name = document_id, sha256, source_name
        return self.document

    def route(self, document: Document) -> Routing:
        return DocumentPipeline.route(self, document)  # type: ignore[arg-type]


def _process(cfg: PaperloopConfig, store: Store, document: Document, tmp_path: Path) -> tuple[str, dict]:
    """Run the job runner over one file with the stub pipeline; (document id, output JSON)."""
    source = tmp_path / document.source_name
    source.write_bytes(document.source_name.encode())
    runner = JobRunner(cfg, store, _StubPipeline(cfg, document))  # type: ignore[arg-type]
    outcome = runner.process_job(runner.enqueue(source, keep_source=True).id, keep_source=True)
    assert outcome is not None and outcome.json_path is not None, outcome
    return outcome.job.document_id, json.loads(outcome.json_path.read_text(encoding="utf-8"))


@pytest.fixture
def store(cfg: PaperloopConfig) -> Store:
    s = Store(cfg.paths.database)
    yield s
    s.close()


def test_a_decision_names_its_segments_links_and_fields_and_round_trips(cfg: PaperloopConfig) -> None:
    cfg.review.audit_percent = 0
    cfg.review.field_thresholds = {"total": 0.95}
    segments = [_segment(0, rec=0.5), _segment(1, label="question", label_score=0.6),
                _segment(2, label="total", label_score=0.9), _segment(3)]
    decision = decide(_document(segments, [Link("p1-s0001", "p1-s0002", score=0.3, re_version="v1")]), cfg)
    by_kind = {r.kind: r for r in decision.reasons}
    assert list(by_kind) == ["rec", "ser", "re", "field"]
    assert by_kind["rec"].segments == ("p1-s0000",) and by_kind["rec"].threshold == cfg.routing.min_rec_score
    assert by_kind["ser"].segments == ("p1-s0001",)
    assert by_kind["re"].links == (("p1-s0001", "p1-s0002"),) and by_kind["re"].segments == ()
    assert by_kind["field"].field == "total" and by_kind["field"].segments == ("p1-s0002",)
    record = json.loads(json.dumps(decision.to_dict()))
    assert record["needs_review"] is True and record["audit"] is False
    assert record["uncertainty"] == decision.uncertainty
    assert record["reasons"][0]["segments"] == ["p1-s0000"] and record["reasons"][2]["links"] == [["p1-s0001", "p1-s0002"]]
    assert Decision.from_dict(record) == decision
    # reason dicts written before targets were recorded (review_items.reasons) still read
    assert ReviewReason.from_dict({"kind": "rec", "detail": "x", "count": 1, "lowest": 0.5}) == \
        ReviewReason("rec", "x", 1, 0.5)


def test_the_decision_is_stored_in_the_database_and_the_output_json(cfg: PaperloopConfig, store: Store,
                                                                    tmp_path: Path) -> None:
    cfg.review.audit_percent = 0
    document = _document([_segment(0, rec=0.4), _segment(1)])
    expected = decide(document, cfg)
    document_id, output = _process(cfg, store, document, tmp_path)
    assert output["routing"] == expected.to_dict() == store.routing(document_id)
    assert output["state"] == NEEDS_REVIEW and output["review_reason"] == expected.summary  # kept for compatibility
    row = store.db.execute("SELECT state, review_reason FROM documents WHERE id = ?", [document_id]).fetchone()
    assert row == (NEEDS_REVIEW, expected.summary)
    assert store.job(1).reason == expected.summary


def test_a_document_that_passed_stores_a_decision_too(cfg: PaperloopConfig, store: Store, tmp_path: Path) -> None:
    cfg.review.audit_percent = 0
    document_id, output = _process(cfg, store, _document([_segment(0), _segment(1)]), tmp_path)
    assert output["state"] == DONE and output["review_reason"] is None
    assert output["routing"] == {"needs_review": False, "audit": False, "uncertainty": output["routing"]["uncertainty"],
                                 "reasons": []} == store.routing(document_id)


def test_the_queue_takes_the_stored_decision_not_a_new_one(cfg: PaperloopConfig, store: Store,
                                                          tmp_path: Path) -> None:
    cfg.review.audit_percent = 0
    document_id, output = _process(cfg, store, _document([_segment(0, rec=0.5), _segment(1)]), tmp_path)
    # the configuration changes after processing: deciding again would find nothing to review
    cfg.routing.min_rec_score = 0.1
    cfg.review.uncertainty = "least_confidence"
    service = ReviewService(cfg, store)
    assert service.sync() == 1
    item = service.item(document_id)
    assert item.reasons == output["routing"]["reasons"] and item.kinds == ["rec"]
    assert item.reasons[0]["segments"] == ["p1-s0000"]
    assert item.uncertainty == output["routing"]["uncertainty"]
    assert item.reason == output["review_reason"] and not item.audit


def test_an_audit_sample_is_known_from_its_record_not_its_text(cfg: PaperloopConfig, store: Store) -> None:
    document = _document([_segment(0)])
    source = cfg.paths.resolve("inbox") / document.source_name
    source.write_bytes(b"x")
    job = store.enqueue(source, document.sha256, 1)
    document.id = f"doc-{job.id:06d}"
    record = Decision(True, (ReviewReason("audit", "drawn for a second look"),), True, 0.0).to_dict()
    store.save_result(job.id, document, NEEDS_REVIEW, "drawn for a second look", Path("x.json"), Path("x"),
                      routing=record)
    cfg.review.audit_percent = 0  # today's configuration would not draw it
    service = ReviewService(cfg, store)
    service.sync()
    item = service.item(document.id)
    assert item.audit and item.kinds == ["audit"] and item.reason == "drawn for a second look"


def test_results_stored_before_routing_records_are_still_queued(cfg: PaperloopConfig, store: Store) -> None:
    document = _document([_segment(0, rec=0.5)])
    source = cfg.paths.resolve("inbox") / document.source_name
    source.write_bytes(b"x")
    job = store.enqueue(source, document.sha256, 1)
    document.id = f"doc-{job.id:06d}"
    store.save_result(job.id, document, NEEDS_REVIEW, "an old reason", Path("x.json"), Path("x"))
    assert store.routing(document.id) is None
    service = ReviewService(cfg, store)
    assert service.sync() == 1
    item = service.item(document.id)
    assert item.kinds == ["rec"] and item.reason == "an old reason"


def test_migration_0006_adds_the_routing_column_to_an_existing_database(
        cfg: PaperloopConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    names = [name for name, _ in store_module.MIGRATIONS]
    assert names[5] == "0006_routing_decision"
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:5])
        Store(cfg.paths.database).close()
    before = sqlite_utils.Database(cfg.paths.database)
    assert "routing" not in before["documents"].columns_dict
    before.conn.close()
    store = Store(cfg.paths.database)
    try:
        assert "routing" in store.db["documents"].columns_dict
        assert "0006_routing_decision" in {r["name"] for r in store.db["_migrations"].rows}
    finally:
        store.close()
