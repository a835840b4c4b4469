"""The page editor's service side (fast tier): applying a save's diff, merges and splits as gold and in
the audit log, and re-reading a box with the real base recognizer on a rendered form."""

from __future__ import annotations

from difflib import SequenceMatcher
from pathlib import Path

import cv2
import pytest

from service.config import PaperloopConfig
from service.document import Word
from service.labels import LabelStore
from service.ocr import OcrEngine
from service.review import ReviewService
from service.review.editor import EditorDiffError, apply_editor_diff, editor_document, joined_text, reading_order
from service.review.gold import diff_documents
from service.review.reread import box_quad, reread_box
from service.store import Store

from test_review import form_segments, make_document

LABELS = ["header", "question", "answer", "other"]


@pytest.fixture
def service(cfg: PaperloopConfig) -> ReviewService:
    return ReviewService(cfg, Store(cfg.paths.database))


def _words(segment_words: list[tuple[str, tuple[float, float, float, float]]]) -> list[dict]:
    return [{"text": t, "box": list(b)} for t, b in segment_words]


def test_reading_order_joins_lines_top_to_bottom_and_words_left_to_right() -> None:
    words = [Word("Road", (60, 40, 100, 55)), Word("Main", (10, 40, 50, 55)), Word("12", (70, 10, 90, 26)),
             Word("Street:", (10, 12, 60, 27))]
    assert [w.text for w in reading_order(words)] == ["Street:", "12", "Main", "Road"]
    assert joined_text(words) == "Street: 12 Main Road"


def test_the_editor_document_marks_weak_links_and_uncertain_segments(cfg: PaperloopConfig, service) -> None:
    made = make_document(cfg, service.store, "form.png", [form_segments()])
    made.links[:] = []
    document = service.prediction(made.id)
    payload = editor_document(document, cfg)
    by_id = {s["id"]: s for s in payload["segments"]}
    assert by_id["p1-s0002"]["low"] and not by_id["p1-s0000"]["low"]
    assert by_id["p1-s0002"]["unc"] > by_id["p1-s0000"]["unc"]
    assert by_id["p1-s0001"]["words"] == [{"text": "Date:", "box": [20.0, 80.0, 120.0, 105.0]}]  # no OCR words: one


def test_a_diff_from_the_editor_is_saved_with_merges_and_splits_in_the_audit(cfg: PaperloopConfig, service) -> None:
    made = make_document(cfg, service.store, "form.png", [form_segments()])
    draft, revision = service.working_copy(made.id)
    merged_words = _words([("Date:", (20, 80, 120, 105)), ("12/10/98", (140, 80, 300, 105))])
    diff = {"segments": [{"id": "p1-m0000", "page": 1, "box": [20, 80, 300, 105], "text": "Date: 12/10/98",
                          "label": "answer", "words": merged_words},
                         {"id": "p1-s0000", "label": "header"}, {"id": "p1-s0003", "text": "Total :"}],
            "deleted": ["p1-s0001", "p1-s0002"], "links": [["p1-s0003", "p1-m0000"]]}
    apply_editor_diff(draft, diff, LABELS)
    result = service.save(made.id, draft, "alice", revision)
    actions = sorted((c.action, c.target) for c in result.changes)
    assert actions == [("add_link", "p1-s0003->p1-m0000"), ("label", "p1-s0000"), ("merge", "p1-m0000"),
                       ("text", "p1-s0003")]
    merge = next(c for c in result.changes if c.action == "merge")
    assert merge.before == ["p1-s0001", "p1-s0002"] and merge.after["text"] == "Date: 12/10/98"
    gold = LabelStore(service.store).get(made.id)
    assert [w.text for w in gold.segment("p1-m0000").words] == ["Date:", "12/10/98"]
    # the reviewer splits it again: two new segments, the merged one removed
    draft, revision = service.working_copy(made.id)
    split = {"segments": [{"id": "p1-s0004", "page": 1, "box": [20, 80, 120, 105], "text": "Date:", "label": "question",
                           "words": merged_words[:1]},
                          {"id": "p1-s0005", "page": 1, "box": [140, 80, 300, 105], "text": "12/10/98",
                           "label": "answer", "words": merged_words[1:]}],
             "deleted": ["p1-m0000"], "links": [["p1-s0004", "p1-s0005"]]}
    apply_editor_diff(draft, split, LABELS)
    changes = diff_documents(LabelStore(service.store).get(made.id), draft)
    assert ("split", "p1-m0000") in {(c.action, c.target) for c in changes}
    assert next(c for c in changes if c.action == "split").after == ["p1-s0004", "p1-s0005"]


def test_a_wrong_diff_changes_nothing(cfg: PaperloopConfig, service) -> None:
    made = make_document(cfg, service.store, "form.png", [form_segments()])
    draft, _ = service.working_copy(made.id)
    before = draft.to_dict()
    for diff in ({"deleted": ["p9-s0000"]}, {"segments": [{"id": "../etc", "box": [0, 0, 1, 1]}]},
                 {"segments": [{"id": "p1-s0000", "label": "nonsense"}]}, {"links": [["p1-s0000", "p7-x"]]}):
        with pytest.raises(EditorDiffError):
            apply_editor_diff(draft, diff, LABELS)
        assert draft.to_dict() == before


def test_reread_reads_a_drawn_box_with_the_recognizer_in_service(ocr_engine: OcrEngine, page_path: Path) -> None:
    image = cv2.imread(str(page_path), cv2.IMREAD_COLOR)
    line = max(ocr_engine.read_page(image), key=lambda l: len(l.text))
    x0, y0 = line.points.min(axis=0)
    x1, y1 = line.points.max(axis=0)
    result = reread_box(ocr_engine, image, [x0 - 3, y0 - 2, x1 + 3, y1 + 2])  # a reviewer's looser box
    squeeze = lambda t: t.replace(" ", "").lower()
    assert SequenceMatcher(None, squeeze(result.text), squeeze(line.text)).ratio() > 0.9 and result.score > 0.8
    assert result.rec_version == "base" and " ".join(w["text"] for w in result.words) == result.text
    assert reread_box(ocr_engine, image, [5, 5, 6, 6]).text == ""  # too small to read
    assert box_quad([-10, -10, 5000, 20], 800, 1040)[2].tolist() == [799.0, 20.0]  # clipped to the page
