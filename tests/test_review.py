"""The service side of review: routing, uncertainty, queue, claims, gold saves, audit log, exports.

The helpers at the top build processed documents without running the OCR models; the other review
test modules import them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import copy
import json
import sqlite3

import pytest
from PIL import Image, ImageDraw

from service.config import PaperloopConfig, ReviewConfig
from service.document import Document, Link, Page, Segment, bbox_to_quad
from service.labels import LabelStore
from service.pipeline import DocumentPipeline
from service.review import (
    ClaimError, ConflictError, ReviewService, add_link, add_segment, auth_policy, delete_segment, decide, document_uncertainty,
    export_gold, hash_password, hmean_history, is_audit_sample, is_loopback, review_uncertainty, score_uncertainty, segment_uncertainty, update_segment,
    verify_password,
)
from service.store import DONE, NEEDS_REVIEW, Store


def segment(page: int, i: int, box: tuple[float, float, float, float], text: str, rec: float = 0.99,
            label: str | None = None, label_score: float | None = None) -> Segment:
    """A predicted segment with model versions."""
    return Segment(id=f"p{page}-s{i:04d}", box=bbox_to_quad(box), text=text, label=label, label_score=label_score,
                   det_score=0.9, rec_score=rec, det_version="base", rec_version="base",
                   ser_version="v1" if label else None)


def page_image(path: Path, size: tuple[int, int] = (600, 400), lines: list[tuple[tuple[int, ...], str]] = ()) -> None:
    """A white page with some text drawn on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for box, text in lines:
        draw.text((box[0] + 2, box[1] + 2), text, fill="black")
    image.save(path)


def make_document(cfg: PaperloopConfig, store: Store, name: str, segments_per_page: list[list[Segment]],
                  links: list[Link] = (), image_size: tuple[int, int] = (600, 400)) -> Document:
    """Store a processed document (job, pages with images, segments) routed by the real pipeline rule."""
    source = cfg.paths.resolve("inbox") / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(name.encode())
    sha = hashlib.sha256(name.encode()).hexdigest()
    job = store.enqueue(source, sha, source.stat().st_size)
    document_id = f"doc-{job.id:06d}"
    pages = []
    for number, segments in enumerate(segments_per_page, start=1):
        relative = Path("pages") / document_id / f"page-{number:03d}.png"
        page_image(cfg.paths.resolve("data") / relative, image_size,
                   [(tuple(int(v) for v in s.bbox), s.text) for s in segments])
        pages.append(Page(number=number, width=image_size[0], height=image_size[1], image=str(relative),
                          segments=segments))
    document = Document(id=document_id, source_name=name, sha256=sha, created_at=f"2026-01-0{job.id % 9 + 1}T00:00:00.000+00:00",
                        model_versions={"det": "base", "rec": "base"}, pages=pages, links=list(links))
    routing = DocumentPipeline.route(_PipelineStub(cfg), document)
    store.save_result(job.id, document, routing.state, routing.reason, cfg.paths.resolve("output") / f"{document_id}.json",
                      cfg.paths.resolve("archive") / name, routing=routing.record)
    return document


class _PipelineStub:
    """Just enough of a DocumentPipeline for ``route`` (no models loaded)."""

    def __init__(self, cfg: PaperloopConfig) -> None:
        self.cfg = cfg


def form_segments(page: int = 1, low: bool = True) -> list[Segment]:
    """A small form: a question, its answer (read with low confidence), a header."""
    return [
        segment(page, 0, (20, 20, 300, 50), "INVOICE", 0.98),
        segment(page, 1, (20, 80, 120, 105), "Date:", 0.97),
        segment(page, 2, (140, 80, 300, 105), "12/1O/98" if low else "12/10/98", 0.55 if low else 0.97),
        segment(page, 3, (20, 130, 120, 155), "Total:", 0.96),
    ]


# -- tests ----------------------------------------------------------------------------------------


@pytest.fixture
def store(cfg: PaperloopConfig) -> Store:
    s = Store(cfg.paths.database)
    yield s
    s.close()


@pytest.fixture
def service(cfg: PaperloopConfig, store: Store) -> ReviewService:
    return ReviewService(cfg, store)


def _doc(segments: list[Segment], links: list[Link] = (), sha: str = "ab" * 32) -> Document:
    return Document(id="doc-000001", source_name="a.png", sha256=sha, created_at="2026-01-01T00:00:00+00:00",
                    pages=[Page(number=1, width=600, height=400, segments=segments)], links=list(links))


def test_routing_per_task_per_field_and_audit(cfg: PaperloopConfig) -> None:
    cfg.review.audit_percent = 0
    ok = [segment(1, 0, (0, 0, 10, 10), "a", 0.95, "question", 0.97), segment(1, 1, (0, 20, 10, 30), "b", 0.99,
                                                                          "total", 0.93)]
    assert not decide(_doc(ok), cfg).needs_review
    low_rec = decide(_doc([segment(1, 0, (0, 0, 10, 10), "a", 0.5)]), cfg)
    assert low_rec.needs_review and [r.kind for r in low_rec.reasons] == ["rec"]
    assert "1 of 1 segments read with confidence below 0.80 (lowest 0.50)" in low_rec.summary
    low_ser = decide(_doc([segment(1, 0, (0, 0, 10, 10), "a", 0.99, "answer", 0.6)]), cfg)
    assert [r.kind for r in low_ser.reasons] == ["ser"]
    link_doc = _doc(ok, [Link("p1-s0000", "p1-s0001", score=0.4, re_version="v1")])
    assert [r.kind for r in decide(link_doc, cfg).reasons] == ["re"]
    cfg.review.field_thresholds = {"total": 0.95}
    field = decide(_doc(ok), cfg)
    assert [r.kind for r in field.reasons] == ["field"] and "'total'" in field.summary
    assert decide(_doc([]), cfg).reasons[0].kind == "no_text"
    # no SER/RE model yet: no labels, no links, only rec scores -> routed on recognition alone
    assert not decide(_doc([segment(1, 0, (0, 0, 10, 10), "a", 0.99)]), cfg).needs_review


def test_audit_sample_is_reproducible_and_close_to_the_configured_share(cfg: PaperloopConfig) -> None:
    docs = [_doc([segment(1, 0, (0, 0, 10, 10), "a", 0.99)], sha=hashlib.sha256(str(i).encode()).hexdigest())
            for i in range(2000)]
    drawn = sum(is_audit_sample(d, 5.0) for d in docs)
    assert 60 <= drawn <= 140
    cfg.review.audit_percent = 100
    decision = decide(docs[0], cfg)
    assert decision.needs_review and decision.audit and decision.reasons[0].kind == "audit"
    assert decide(docs[0], cfg) == decision
    cfg.review.audit_percent = 0
    assert not decide(docs[0], cfg).needs_review


def test_uncertainty_orders_documents_and_is_normalized_by_length() -> None:
    for strategy in ("entropy", "margin", "least_confidence"):
        values = [score_uncertainty(p, strategy) for p in (0.5, 0.7, 0.9, 0.99, 1.0)]
        assert values == sorted(values, reverse=True) and values[-1] == 0.0 and values[0] >= 0.5
    short = _doc([segment(1, 0, (0, 0, 1, 1), "a", 0.6)])
    long = _doc([segment(1, i, (0, 0, 1, 1), "a", 0.6) for i in range(20)])
    assert document_uncertainty(short) == document_uncertainty(long)  # length does not make it more informative
    mixed = _doc([segment(1, 0, (0, 0, 1, 1), "a", 0.99, "answer", 0.55)])
    assert document_uncertainty(mixed) > document_uncertainty(_doc([segment(1, 0, (0, 0, 1, 1), "a", 0.99)]))


def test_pipeline_route_delegates_to_review_routing(cfg: PaperloopConfig, store: Store) -> None:
    low = make_document(cfg, store, "low.png", [form_segments(low=True)])
    good = make_document(cfg, store, "good.png", [form_segments(low=False)])
    states = dict(store.db.execute("SELECT id, state FROM documents").fetchall())
    assert states[low.id] == NEEDS_REVIEW and states[good.id] == DONE
    reason = store.db.execute("SELECT review_reason FROM documents WHERE id = ?", [low.id]).fetchone()[0]
    assert "below 0.80" in reason


def test_queue_order_filters_and_audit_mixing(cfg: PaperloopConfig, store: Store, service: ReviewService) -> None:
    cfg.review.audit_every = 2
    made = {}
    for name, rec in (("a.png", 0.7), ("b.png", 0.3), ("c.png", 0.6), ("d.png", 0.75)):
        made[name] = make_document(cfg, store, name, [[segment(1, 0, (10, 10, 100, 40), name, rec)]])
    cfg.review.audit_percent = 100
    audit = make_document(cfg, store, "audit.png", [form_segments(low=False)])
    cfg.review.audit_percent = 5
    queue = service.queue()
    assert [i.source_name for i in queue] == ["b.png", "c.png", "audit.png", "a.png", "d.png"]
    assert queue[2].audit and queue[2].kinds == ["audit"]
    assert [i.source_name for i in service.queue(kinds=["audit"])] == ["audit.png"]
    assert [i.source_name for i in service.queue(search="C.PN")] == ["c.png"]
    assert [i.source_name for i in service.queue(order="oldest")][0] == "a.png"
    assert all(i.uncertainty >= 0.9 for i in service.queue(min_uncertainty=0.9))
    assert service.item(audit.id).reason.startswith("audit sample")
    assert service.item(made["b.png"].id).age_seconds() > 0


def test_claims_keep_two_reviewers_apart(cfg: PaperloopConfig, store: Store, service: ReviewService) -> None:
    a = make_document(cfg, store, "a.png", [form_segments()])
    b = make_document(cfg, store, "b.png", [[segment(1, 0, (10, 10, 100, 40), "x", 0.2),
                                             segment(1, 1, (10, 50, 100, 80), "y", 0.3)]])
    first = service.next_for("alice")
    assert first == b.id  # the more uncertain one (review.uncertainty_aggregate: sum, 2.0 against 1.6)
    assert service.next_for("bob") == a.id  # alice holds b
    with pytest.raises(ClaimError, match="alice"):
        service.claim(b.id, "bob")
    service.claim(b.id, "alice")  # renewing one's own claim is fine
    service.release(b.id, "bob")  # not bob's: nothing happens
    assert service.claimed_by(b.id) == "alice"
    service.release(b.id, "alice")
    service.claim(b.id, "bob")
    store.db.execute("UPDATE review_claims SET expires_at = '2000-01-01T00:00:00.000+00:00'")
    service.claim(a.id, "carol")  # lapsed claims can be taken over


def test_save_writes_gold_and_one_audit_row_per_change(cfg: PaperloopConfig, store: Store,
                                                       service: ReviewService) -> None:
    made = make_document(cfg, store, "form.png", [form_segments()])
    service.next_for("alice")
    draft, revision = service.working_copy(made.id)
    assert revision == 0 and draft.segments[2].rec_score == 0.55
    update_segment(draft, "p1-s0002", text="12/10/98", label="answer")
    update_segment(draft, "p1-s0001", label="question")
    update_segment(draft, "p1-s0003", box=(18, 128, 125, 158))
    new_id = add_segment(draft, 1, [140, 130, 220, 155])
    update_segment(draft, new_id, text="$1,234.00", label="answer")
    delete_segment(draft, "p1-s0000")
    assert add_link(draft, "p1-s0001", "p1-s0002") and add_link(draft, "p1-s0003", new_id)
    result = service.save(made.id, draft, "alice", revision)
    assert result.revision == 1 and result.split in ("train", "holdout")

    gold = LabelStore(store).get(made.id)
    assert [s.id for s in gold.segments] == ["p1-s0001", "p1-s0002", "p1-s0003", new_id]
    assert gold.segment("p1-s0002").text == "12/10/98" and gold.segment("p1-s0002").label == "answer"
    assert gold.segment("p1-s0002").rec_score is None and gold.segment("p1-s0002").rec_version is None
    assert [(link.key, link.value) for link in gold.links] == [("p1-s0001", "p1-s0002"), ("p1-s0003", new_id)]

    rows = sqlite3.connect(cfg.paths.database).execute(
        "SELECT reviewer, action, target, before, after, model_versions FROM review_audit ORDER BY id").fetchall()
    actions = sorted((r[1], r[2]) for r in rows)
    assert actions == sorted([("text", "p1-s0002"), ("label", "p1-s0002"), ("label", "p1-s0001"),
                              ("box", "p1-s0003"), ("add_segment", new_id), ("delete_segment", "p1-s0000"),
                              ("add_link", "p1-s0001->p1-s0002"), ("add_link", f"p1-s0003->{new_id}")])
    text_row = next(r for r in rows if r[1] == "text")
    assert text_row[0] == "alice" and json.loads(text_row[3]) == "12/1O/98" and json.loads(text_row[4]) == "12/10/98"
    assert json.loads(text_row[5]) == {"det": "base", "rec": "base"}
    item = service.item(made.id)
    assert item.status == "reviewed" and item.reviewed_by == "alice"
    assert service.queue() == []


def test_accept_without_changes_is_logged_and_releases_the_claim(cfg: PaperloopConfig, store: Store,
                                                                 service: ReviewService) -> None:
    made = make_document(cfg, store, "form.png", [form_segments()])
    service.claim(made.id, "alice")
    draft, revision = service.working_copy(made.id)
    result = service.save(made.id, draft, "alice", revision, accept=True)
    assert [c.action for c in result.changes] == ["accept"]
    assert service.claimed_by(made.id) is None
    assert [r["action"] for r in service.audit_log(made.id)] == ["accept"]


def test_saves_are_never_lost_or_silently_overwritten(cfg: PaperloopConfig, store: Store,
                                                      service: ReviewService) -> None:
    made = make_document(cfg, store, "form.png", [form_segments()])
    service.claim(made.id, "alice")
    draft, revision = service.working_copy(made.id)
    stale = copy.deepcopy(draft)
    update_segment(draft, "p1-s0002", text="12/10/98")
    service.save(made.id, draft, "alice", revision)
    # another reviewer cannot save over the claim; a save from an outdated revision is refused
    with pytest.raises(ClaimError):
        service.save(made.id, stale, "bob", revision)
    update_segment(stale, "p1-s0002", text="something else")
    with pytest.raises(ConflictError, match="alice"):
        service.save(made.id, stale, "alice", revision)
    # a later pipeline run over the same document leaves the gold and the review alone
    job_id = store.job(1).id
    rerun = store.document(made.id)
    rerun.created_at = "2026-02-01T00:00:00.000+00:00"
    store.save_result(job_id, rerun, NEEDS_REVIEW, "re-run", cfg.paths.resolve("output") / "x.json",
                      cfg.paths.resolve("archive") / "x")
    assert service.queue() == []
    assert LabelStore(store).get(made.id).segment("p1-s0002").text == "12/10/98"
    again, revision = service.working_copy(made.id)
    assert revision == 1 and again.segment("p1-s0002").text == "12/10/98"
    # editing the gold again logs the change against the previous gold revision
    update_segment(again, "p1-s0002", label="answer")
    service.save(made.id, again, "alice", revision)
    last = service.audit_log(made.id)[0]
    assert last["action"] == "label" and last["model_versions"] == {"gold_revision": 1}


def test_new_gold_is_split_with_a_stratified_holdout(cfg: PaperloopConfig, store: Store,
                                                     service: ReviewService) -> None:
    cfg.review.holdout_fraction = 0.25
    splits = []
    for i in range(8):
        made = make_document(cfg, store, f"f{i}.png", [[segment(1, 0, (10, 10, 100, 40), f"x{i}", 0.3)]])
        service.claim(made.id, "alice")
        draft, revision = service.working_copy(made.id)
        update_segment(draft, "p1-s0000", label="answer" if i % 2 else "question")
        splits.append(service.save(made.id, draft, "alice", revision).split)
        draft, revision = service.working_copy(made.id)
        assert service.save(made.id, draft, "alice", revision).split == splits[-1]  # frozen once assigned
    assert splits.count("holdout") == 2
    assert {splits[i] for i in range(0, 8, 2)} == {"train", "holdout"}  # one per label stratum
    assert {splits[i] for i in range(1, 8, 2)} == {"train", "holdout"}


def test_passwords_are_hashed_and_loopback_is_recognized(cfg: PaperloopConfig) -> None:
    encoded = hash_password("s3cret")
    assert "s3cret" not in encoded and encoded.startswith("scrypt$")
    assert verify_password("s3cret", encoded) and not verify_password("S3cret", encoded)
    assert not verify_password("x", "garbage")
    assert auth_policy(cfg, {}).check("anyone", "") and not auth_policy(cfg, {}).password_required
    policy = auth_policy(cfg, {"PAPERLOOP_REVIEW_PASSWORD": "pw"})
    assert policy.password_required and policy.check("bob", "pw") and not policy.check("bob", "nope")
    assert not policy.check("  ", "pw")
    cfg.review.reviewers = {"carol": hash_password("carols")}
    policy = auth_policy(cfg, {})
    assert policy.check("carol", "carols") and not policy.check("dave", "carols")
    assert all(is_loopback(a) for a in ("127.0.0.1", "localhost", "::1", "127.0.0.5"))
    assert not any(is_loopback(a) for a in ("0.0.0.0", "192.168.1.4", "::", "example.org"))


def test_exports_in_paddleocr_formats(cfg: PaperloopConfig, store: Store, service: ReviewService,
                                      tmp_path: Path) -> None:
    made = make_document(cfg, store, "form.png", [form_segments(), form_segments(page=2)])
    service.claim(made.id, "alice")
    draft, revision = service.working_copy(made.id)
    update_segment(draft, "p1-s0001", label="question")
    update_segment(draft, "p1-s0002", text="12/10/98", label="answer")
    add_link(draft, "p1-s0001", "p1-s0002")
    split = service.save(made.id, draft, "alice", revision).split
    out = tmp_path / "export"
    summary = export_gold(service, out, splits=[split])
    assert summary[split]["det"]["pages"] == 2 and summary[split]["rec"]["crops"] == 8

    det = (out / split / "det" / "Label.txt").read_text(encoding="utf-8").splitlines()
    image, annotations = det[0].split("\t")
    assert (out / split / "det" / image).is_file()
    first = json.loads(annotations)
    assert first[2] == {"transcription": "12/10/98", "points": [[140, 80], [300, 80], [300, 105], [140, 105]],
                        "difficult": False}
    rec = (out / split / "rec" / "rec_gt.txt").read_text(encoding="utf-8").splitlines()
    assert rec[2] == f"crop_img/{made.id}-p001_crop_2.jpg\t12/10/98"
    crop = Image.open(out / split / "rec" / "crop_img" / f"{made.id}-p001_crop_2.jpg")
    assert crop.size == (160, 25)

    if "error" in summary[split].get("kie", {}):
        pytest.skip(summary[split]["kie"]["error"])
    kie = (out / split / "kie" / "Label.txt").read_text(encoding="utf-8").splitlines()
    items = json.loads(kie[0].split("\t")[1])
    assert items[2]["label"] == "answer" and "key_cls" not in items[2]
    xfund = json.loads((out / split / "xfund" / f"en.{split}.json").read_text(encoding="utf-8"))
    entities = xfund["documents"][0]["document"]
    assert [e["label"] for e in entities][1:3] == ["question", "answer"]
    assert (out / split / "xfund" / f"en.{split}" / xfund["documents"][0]["img"]["fname"]).is_file()


def test_gold_summary_counts_tasks_labels_and_new_since_training(cfg: PaperloopConfig, store: Store,
                                                                 service: ReviewService) -> None:
    made = make_document(cfg, store, "form.png", [form_segments()])
    service.claim(made.id, "alice")
    draft, revision = service.working_copy(made.id)
    update_segment(draft, "p1-s0001", label="question")
    update_segment(draft, "p1-s0002", label="answer")
    add_link(draft, "p1-s0001", "p1-s0002")
    split = service.save(made.id, draft, "alice", revision).split
    summary = service.gold_summary()
    assert summary["per_split"][split] == {"documents": 1, "det": 4, "rec": 4, "group": 0, "ser": 2, "re": 1}
    assert summary["per_label"]["answer"] == {split: 1} and summary["per_label"]["(none)"] == {split: 2}
    assert summary["new_since_training"]["det"]["since_version"] == "base"
    assert summary["new_since_training"]["det"]["count"] == 4  # saved after the base models were installed
    assert summary["new_since_training"]["ser"] == {"count": 2, "since_version": None, "since": None}


def test_hmean_history_reads_what_cards_hold(tmp_path: Path) -> None:
    from service.registry import ModelCard, ModelRegistry

    registry = ModelRegistry(tmp_path)
    model = tmp_path / "m.bin"
    model.write_bytes(b"x")
    for version, metrics in (("v1", {"holdout": {"hmean": 0.71}}), ("v2", {"hmean": 0.78, "precision": 0.8})):
        registry.add_version(ModelCard(task="det", version=version, model_name="PP-OCRv4_mobile_det",
                                       metrics=metrics), {"inference.pdiparams": model}, {})
    history = hmean_history(registry)
    assert [(h["version"], h["metric"], h["hmean"]) for h in history] == [("v1", "holdout.hmean", 0.71),
                                                                          ("v2", "hmean", 0.78)]


def test_edits_change_the_working_copy() -> None:
    document = _doc([segment(1, 0, (10, 10, 50, 30), "a", 0.5), segment(1, 1, (10, 40, 50, 60), "b", 0.5),
                     segment(1, 2, (10, 70, 50, 90), "c", 0.5)], [Link("p1-s0000", "p1-s0001")])
    assert update_segment(document, "p1-s0001", box=[12, 42, 52, 62])
    assert document.segment("p1-s0001").bbox == (12, 42, 52, 62)
    assert not update_segment(document, "p1-s0001", box=[12, 42, 52, 62])
    new_id = add_segment(document, 1, [100, 100, 160, 120])
    assert new_id == "p1-r0000" and document.segment(new_id).text == ""
    delete_segment(document, "p1-s0000")
    assert document.links == []  # the link named the deleted box
    assert update_segment(document, "p1-s0001", text="B!", label="question")
    assert [(s.id, s.text, s.label) for s in document.segments] == [
        ("p1-s0001", "B!", "question"), ("p1-s0002", "c", None), (new_id, "", None)]


# -- issue 9: accounts, lockout, sessions, exports, unchanged saves ------------------------------------


def test_accepting_unchanged_gold_changes_nothing_but_one_audit_row(cfg: PaperloopConfig, store: Store,
                                                                    service: ReviewService) -> None:
    made = make_document(cfg, store, "form.png", [form_segments()])
    service.claim(made.id, "alice")
    draft, revision = service.working_copy(made.id)
    update_segment(draft, "p1-s0001", label="question")
    service.save(made.id, draft, "alice", revision, accept=True)
    gold_row = store.db.execute("SELECT document, split, updated_at FROM gold_documents").fetchall()
    item = service.item(made.id)
    audit_before = len(service.audit_log(made.id))

    service.claim(made.id, "bob")
    again, revision = service.working_copy(made.id)
    result = service.save(made.id, again, "bob", revision, accept=True)
    assert result.revision == 1 == revision and [c.action for c in result.changes] == ["accept"]
    after = service.item(made.id)
    assert (after.revision, after.reviewed_by, after.reviewed_at, after.split) == (
        item.revision, "alice", item.reviewed_at, item.split)
    assert store.db.execute("SELECT document, split, updated_at FROM gold_documents").fetchall() == gold_row
    log = service.audit_log(made.id)
    assert len(log) == audit_before + 1
    assert (log[0]["reviewer"], log[0]["action"]) == ("bob", "accept")
    assert service.claimed_by(made.id) is None


def test_reviewer_accounts_are_hashed_and_lock_out_after_repeated_failures(
        cfg: PaperloopConfig, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    from service.review import AccountError, LockedOut, LoginError, ReviewerAccounts

    accounts = ReviewerAccounts(store, cfg.review)
    accounts.add("alice", "alice's secret")
    with pytest.raises(AccountError):
        accounts.add("alice", "again")
    with pytest.raises(AccountError):
        accounts.add("<b>eve</b>", "x")
    stored = store.db.execute("SELECT password_hash FROM reviewers WHERE name = 'alice'").fetchone()[0]
    assert stored.startswith("scrypt$") and "secret" not in stored
    assert accounts.authenticate("alice", "alice's secret", "10.0.0.7") == "alice"
    with pytest.raises(LoginError):
        accounts.authenticate("mallory", "alice's secret")  # no such account
    for _ in range(cfg.review.login_max_failures):
        with caplog.at_level("WARNING"), pytest.raises(LoginError):
            accounts.authenticate("alice", "guess", "10.0.0.9")
    assert sum("login failed" in r.getMessage() and "alice" in r.getMessage() for r in caplog.records) == 5
    with pytest.raises(LockedOut):  # even the right password, while locked
        accounts.authenticate("alice", "alice's secret", "10.0.0.7")
    rows = store.db.execute("SELECT ok, address FROM review_logins WHERE name = 'alice' ORDER BY rowid").fetchall()
    assert rows[0] == (1, "10.0.0.7") and len(rows) == 7
    # the lock lapses lockout_minutes after the last failure
    store.db.execute("UPDATE review_logins SET at = '2000-01-01T00:00:00.000+00:00'")
    assert accounts.authenticate("alice", "alice's secret") == "alice"
    accounts.set_password("alice", "new one")
    with pytest.raises(LoginError):
        accounts.authenticate("alice", "alice's secret")
    assert [r.name for r in accounts.list()] == ["alice"]
    accounts.remove("alice")
    with pytest.raises(LoginError):
        accounts.authenticate("alice", "new one")
    assert [(r.name, r.disabled) for r in accounts.list()] == [("alice", True)]


def test_sessions_survive_a_reload_expire_when_idle_and_end_at_logout(cfg: PaperloopConfig, store: Store) -> None:
    from service.review import ReviewerAccounts

    accounts = ReviewerAccounts(store, cfg.review)
    accounts.add("alice", "pw-alice")
    token = accounts.open_session("alice")
    assert len(token) >= 32
    stored = store.db.execute("SELECT token_hash FROM review_sessions").fetchall()
    assert stored and token not in stored[0][0]
    assert accounts.resume(token) == "alice" and accounts.resume(token + "x") is None
    store.db.execute("UPDATE review_sessions SET expires_at = '2000-01-01T00:00:00.000+00:00'")
    assert accounts.resume(token) is None  # idle too long
    token = accounts.open_session("alice")
    accounts.close_session(token)
    assert accounts.resume(token) is None
    token = accounts.open_session("alice")
    accounts.remove("alice")  # a removed account's sessions end
    assert accounts.resume(token) is None


def test_exports_go_under_the_exports_folder_and_the_archive_holds_only_what_they_wrote(
        cfg: PaperloopConfig, store: Store, service: ReviewService) -> None:
    import zipfile

    from service.review import create_export, exports_root

    made = make_document(cfg, store, "form.png", [form_segments()])
    service.claim(made.id, "alice")
    draft, revision = service.working_copy(made.id)
    split = service.save(made.id, draft, "alice", revision).split
    root = exports_root(cfg)
    assert root == cfg.paths.resolve("data") / "exports"
    root.mkdir(parents=True)
    (root / "secret.txt").write_text("not for download")
    first = create_export(service, splits=[split], formats=["det"], by="alice")
    second = create_export(service, splits=[split], formats=["det"], by="alice")
    assert first.folder != second.folder and first.folder.parent == root == second.folder.parent
    assert (first.folder / split / "det" / "Label.txt").is_file()
    manifest = json.loads((first.folder / "manifest.json").read_text())
    assert manifest["by"] == "alice" and f"{split}/det/Label.txt" in manifest["files"]
    (first.folder / "planted.txt").write_text("added later")
    with zipfile.ZipFile(first.archive) as archive:
        names = archive.namelist()
    assert names and all(n.startswith(first.folder.name + "/") for n in names)
    assert f"{first.folder.name}/{split}/det/Label.txt" in names
    assert not any("secret" in n or "planted" in n for n in names)


def test_many_failures_from_one_address_lock_that_address_out(cfg: PaperloopConfig, store: Store) -> None:
    from service.review import LockedOut, LoginError, ReviewerAccounts

    cfg.review.login_max_failures_per_address = 3
    accounts = ReviewerAccounts(store, cfg.review)
    accounts.add("alice", "pw-alice")
    for name in ("ann", "ben", "cy"):  # a different name each time: no name reaches its own limit
        with pytest.raises(LoginError):
            accounts.authenticate(name, "guess", "10.9.9.9")
    with pytest.raises(LockedOut):
        accounts.authenticate("alice", "pw-alice", "10.9.9.9")
    assert accounts.authenticate("alice", "pw-alice", "10.0.0.1") == "alice"


def test_uncertainty_reads_only_the_scores_named_in_uncertainty_from() -> None:
    """``review.uncertainty_from``: a badly read but confidently labelled segment is uncertain for
    the OCR's sake only; without ``rec`` it is not, and ``group`` brings the grouping score in."""
    badly_read = segment(1, 0, (0, 0, 1, 1), "a", 0.55)
    badly_read.label_score, badly_read.group_score = 0.99, 0.6
    document = _doc([badly_read])
    assert document_uncertainty(document) > 0.9
    assert document_uncertainty(document, sources=("label",)) < 0.1
    assert 0.9 < document_uncertainty(document, sources=("label", "group")) <= 0.98
    assert segment_uncertainty(badly_read, sources=("link",)) is None


def test_link_choice_sees_a_missed_link_that_kept_links_cannot() -> None:
    """A value RE hesitated to link (0.55 for "no key") leaves no Link; ``link_choice`` still counts it."""
    answer = segment(1, 0, (0, 0, 1, 1), "12/10/98", 0.99, "answer", 0.99)
    answer.link_score = 0.55
    document = _doc([answer])
    assert document_uncertainty(document, sources=("label", "link")) < 0.1
    assert document_uncertainty(document, sources=("label", "link_choice")) > 0.9


def test_summed_uncertainty_puts_a_long_uncertain_document_first() -> None:
    short = _doc([segment(1, 0, (0, 0, 1, 1), "a", 0.6)])
    long = _doc([segment(1, i, (0, 2 * i, 1, 2 * i + 1), "a", 0.7) for i in range(10)])
    assert document_uncertainty(short) > document_uncertainty(long)
    assert document_uncertainty(short, aggregate="sum") < document_uncertainty(long, aggregate="sum")
    assert review_uncertainty(long, ReviewConfig(uncertainty_aggregate="sum")) == document_uncertainty(long, aggregate="sum")


def test_a_save_makes_the_reviewed_document_the_result_users_read(cfg: PaperloopConfig, store: Store,
                                                                  service: ReviewService) -> None:
    """Before, a reviewer's corrections reached only the gold set: the output JSON kept the models' misreading
    and the job stayed ``needs_review`` for good."""
    made = make_document(cfg, store, "form.png", [form_segments()])
    output = cfg.paths.resolve("output") / f"{made.id}.json"
    draft, revision = service.working_copy(made.id)
    update_segment(draft, "p1-s0001", label="question")
    update_segment(draft, "p1-s0002", text="12/10/98", label="answer")
    add_link(draft, "p1-s0001", "p1-s0002")
    service.save(made.id, draft, "alice", revision, accept=True)

    result = json.loads(output.read_text(encoding="utf-8"))
    assert result["state"] == "reviewed" and result["review"]["reviewed_by"] == "alice"
    assert result["review"]["revision"] == 1
    assert [s["text"] for s in result["pages"][0]["segments"]][2] == "12/10/98"
    assert [(kv["key"], kv["value"]) for kv in result["key_values"]] == [("Date:", "12/10/98")]
    assert result["routing"]["needs_review"] and "confidence below" in result["review_reason"]  # why it went, kept
    job = store.jobs()[0]
    assert job.state == "reviewed" and store.counts()["reviewed"] == 1
    assert store.document(made.id).segments[2].text == "12/1O/98"  # SQLite keeps the models' prediction

    draft, revision = service.working_copy(made.id)
    update_segment(draft, "p1-s0003", label="question")
    service.save(made.id, draft, "bob", revision)
    result = json.loads(output.read_text(encoding="utf-8"))
    assert result["review"]["reviewed_by"] == "bob" and result["review"]["revision"] == 2

    again = cfg.paths.resolve("inbox") / "again.png"
    again.write_bytes(b"form.png")  # the same content as the reviewed file
    assert store.enqueue(again, job.sha256, again.stat().st_size).state == "duplicate"


def test_a_reviewed_document_gets_its_fields_from_the_reviewers_labels(tmp_path: Path, models_dir: Path) -> None:
    cfg = PaperloopConfig.model_validate({
        "paths": {"root": str(tmp_path), "models": str(models_dir)},
        "kie": {"labels": ["date", "other"], "other_label": "other"},
        "fields": {"date_order": "DMY", "fields": [{"name": "date", "type": "date"}]},
    })
    store = Store(cfg.paths.database)
    service = ReviewService(cfg, store)
    made = make_document(cfg, store, "receipt.png", [form_segments()])
    draft, revision = service.working_copy(made.id)
    update_segment(draft, "p1-s0002", text="12/10/98", label="date")
    service.save(made.id, draft, "alice", revision)
    result = json.loads((cfg.paths.resolve("output") / f"{made.id}.json").read_text(encoding="utf-8"))
    [date] = result["fields"]
    assert (date["name"], date["value"], date["raw"], date["confidence"]) == ("date", "1998-10-12", "12/10/98", 1.0)
    store.close()
