"""Persistence stays in the store: the review tables behind :class:`ReviewStore`, job states as an enum,
and a ``sqlite-utils`` floor that has the API the store uses."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import pytest
import sqlite_utils
from packaging.requirements import Requirement

import service.review.queue as queue_module
from service.config import PaperloopConfig
from service.document import Document, Page, Segment, bbox_to_quad
from service.review_store import Claim, ReviewStore
from service.store import DONE, DUPLICATE, FAILED, NEEDS_REVIEW, PROCESSING, QUEUED, REVIEWED, STATES, JobState, Store

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# sqlite-utils 4.0 (first released as 4.0rc1) added Database.atomic(), which Store.transaction and
# migrate() use.
FIRST_WITH_ATOMIC = "4.0"


@pytest.fixture
def store(cfg: PaperloopConfig) -> Store:
    s = Store(cfg.paths.database)
    yield s
    s.close()


def _stored_document(cfg: PaperloopConfig, store: Store, name: str = "a.png") -> str:
    source = cfg.paths.resolve("inbox") / name
    source.write_bytes(name.encode())
    job = store.enqueue(source, name * 4, 1)
    document = Document(id=f"doc-{job.id:06d}", source_name=name, sha256=name * 4,
                        created_at="2026-01-01T00:00:00.000+00:00",
                        pages=[Page(number=1, width=100, height=100, segments=[
                            Segment(id="p1-s0000", box=bbox_to_quad((0, 0, 10, 10)), text="x", rec_score=0.5)])])
    store.save_result(job.id, document, NEEDS_REVIEW, "low", Path("x.json"), Path("x"))
    return document.id


def test_job_states_are_an_enum_stored_as_their_values(cfg: PaperloopConfig, store: Store) -> None:
    assert [s.value for s in JobState] == ["queued", "processing", "done", "needs_review", "failed", "duplicate",
                                           "reviewed"]
    assert (QUEUED, PROCESSING, DONE, NEEDS_REVIEW, FAILED, DUPLICATE, REVIEWED) == tuple(JobState) == STATES
    assert QUEUED is JobState.QUEUED and DONE == "done" and isinstance(DONE, str)
    assert f"{NEEDS_REVIEW}" == str(NEEDS_REVIEW) == "needs_review"
    source = cfg.paths.resolve("inbox") / "a.png"
    source.write_bytes(b"a")
    job = store.enqueue(source, "ab" * 32, 1)
    assert job.state is JobState.QUEUED
    assert store.db.execute("SELECT state, typeof(state) FROM jobs").fetchone() == ("queued", "text")
    assert store.counts()["queued"] == 1 and store.jobs(QUEUED)[0].id == job.id


def test_the_review_queue_module_holds_no_sql() -> None:
    source = inspect.getsource(queue_module)
    assert ".execute(" not in source and 'db["' not in source and "db[" not in source
    assert not re.search(r"\b(SELECT|INSERT|UPDATE|DELETE)\b", source)


def test_review_store_items_claims_and_audit_rows(cfg: PaperloopConfig, store: Store) -> None:
    records = ReviewStore(store)
    document_id = _stored_document(cfg, store)
    assert [r.document_id for r in records.routed_documents("waiting")] == [document_id]
    assert records.item_status(document_id) is None and records.item_state(document_id) is None
    reasons = [{"kind": "rec", "detail": "low"}]
    created_at = records.document_created_at(document_id)
    records.put_item(document_id, created_at, "low", reasons, False, 0.5, "waiting", "2026-01-02")
    assert records.routed_documents("waiting") == []
    (item,) = records.items("waiting", "2026-01-03")
    assert item["reasons"] == reasons and item["source_name"] == "a.png" and item["claimed_by"] is None
    assert records.item_state(document_id) == {"revision": 0, "split": None, "reviewed_by": None,
                                               "reviewed_at": None, "status": "waiting"}
    records.put_claim(document_id, "alice", "2026-01-03", "2026-01-04")
    assert records.claim(document_id) == Claim("alice", "2026-01-03", "2026-01-04")
    assert records.live_claimant(document_id, "2026-01-03T12") == "alice"
    assert records.live_claimant(document_id, "2026-01-05") is None
    assert records.items("waiting", "2026-01-03")[0]["claimed_by"] == "alice"
    records.delete_claim(document_id, "bob")
    assert records.claim(document_id) is not None
    records.delete_claim(document_id, "alice")
    assert records.claim(document_id) is None
    records.add_audit_rows([{"save_id": "s", "document_id": document_id, "reviewer": "alice", "at": "t",
                             "action": "text", "target": "p1-s0000", "before": "é", "after": None,
                             "model_versions": {"rec": "base"}}])
    (row,) = records.audit_rows(document_id)
    assert (row["before"], row["after"], row["model_versions"]) == ("é", None, {"rec": "base"})
    raw = store.db.execute("SELECT before, after FROM review_audit").fetchone()
    assert raw == ('"é"', None)
    records.update_item(document_id, {"status": "reviewed", "split": "holdout", "stratum": "x"})
    assert records.stratum_splits("x") == (1, 1) and records.items("waiting", "t") == []
    with pytest.raises(KeyError):
        records.document_created_at("doc-missing")


def test_review_store_calls_join_an_enclosing_transaction(cfg: PaperloopConfig, store: Store) -> None:
    records = ReviewStore(store)
    document_id = _stored_document(cfg, store)
    with pytest.raises(RuntimeError):
        with records.transaction():
            records.put_item(document_id, None, "r", [], False, 0.0, "waiting", "t")
            records.put_claim(document_id, "alice", "t", "u")
            raise RuntimeError("roll back")
    assert records.item_status(document_id) is None and records.claim(document_id) is None


def test_the_sqlite_utils_floor_has_database_atomic() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (requirement,) = [Requirement(d) for d in project["project"]["dependencies"]
                      if Requirement(d).name == "sqlite-utils"]
    assert not requirement.specifier.contains("3.39.1"), requirement  # the last release without atomic()
    assert requirement.specifier.contains(FIRST_WITH_ATOMIC)
    pins = (PROJECT_ROOT / "constraints.txt").read_text(encoding="utf-8")
    pinned = re.search(r"^sqlite-utils==(\S+)$", pins, re.M).group(1)
    assert requirement.specifier.contains(pinned)
    assert callable(getattr(sqlite_utils.Database, "atomic", None))
