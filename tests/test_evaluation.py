"""Unit tests for service.evaluation and the FUNSD line grouping in service.funsd.

Expected values are worked out by hand in the comments next to each assertion.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.evaluation import (
    DetectionCounts,
    PageEvaluation,
    box_iou,
    char_accuracy,
    detection_scores,
    evaluate_page,
    greedy_match,
    iou_matrix,
    levenshtein,
    normalized_edit_distance,
    quad_bounding_box,
    recognition_over_pages,
    recognition_scores,
)
from service.funsd import Word, entity_lines, group_into_rows, load_gt_lines, split_pairs


def square(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """An axis-aligned quad, clockwise from top-left."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)


# --- IoU -------------------------------------------------------------------------------------


def test_box_iou_half_shifted_boxes() -> None:
    # intersection 5×10 = 50, union 100 + 100 − 50 = 150
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_box_iou_identical_disjoint_and_degenerate() -> None:
    assert box_iou((1, 2, 3, 4), (1, 2, 3, 4)) == 1.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_box_iou_contained_box() -> None:
    # inner 4×4 = 16 inside outer 10×10 = 100 → 16 / 100
    assert box_iou((0, 0, 10, 10), (3, 3, 7, 7)) == pytest.approx(0.16)


def test_iou_matrix_axis_aligned_quad_agrees_with_box_iou() -> None:
    ious = iou_matrix([square(0, 0, 10, 10)], [(5, 0, 15, 10), (0, 0, 10, 10)])
    assert ious.shape == (1, 2)
    assert ious[0] == pytest.approx([1 / 3, 1.0])


def test_iou_matrix_uses_the_polygon_not_its_bounding_box() -> None:
    # A diamond inscribed in the 10×10 square has area 50 and lies inside it: IoU 50 / 100.
    # Its bounding box is the square itself, which would give 1.0.
    diamond = np.array([[5, 0], [10, 5], [5, 10], [0, 5]], dtype=np.float32)
    assert iou_matrix([diamond], [(0, 0, 10, 10)])[0, 0] == pytest.approx(0.5)
    assert quad_bounding_box(diamond) == (0.0, 0.0, 10.0, 10.0)


def test_iou_matrix_empty_sides() -> None:
    assert iou_matrix([], [(0, 0, 1, 1)]).shape == (0, 1)
    assert iou_matrix([square(0, 0, 1, 1)], []).shape == (1, 0)


# --- matching --------------------------------------------------------------------------------


def test_greedy_match_takes_highest_iou_first_and_is_one_to_one() -> None:
    # 0.9 (p0, g0) is taken first; (p1, g0) and (p0, g1) then reuse a matched line.
    ious = np.array([[0.9, 0.6], [0.7, 0.0]])
    matches = greedy_match(ious)
    assert [(m.pred_index, m.gt_index) for m in matches] == [(0, 0)]
    assert matches[0].iou == pytest.approx(0.9)


def test_greedy_match_leaves_room_for_second_choices() -> None:
    # 0.8 (p1, g0) first; p0 then falls back to g1 at 0.55.
    ious = np.array([[0.6, 0.55], [0.8, 0.0]])
    pairs = sorted((m.pred_index, m.gt_index) for m in greedy_match(ious))
    assert pairs == [(0, 1), (1, 0)]


def test_greedy_match_threshold_is_inclusive() -> None:
    ious = np.array([[0.5, 0.0], [0.0, 0.49]])
    assert [(m.pred_index, m.gt_index) for m in greedy_match(ious)] == [(0, 0)]
    assert greedy_match(ious, threshold=0.4) and len(greedy_match(ious, threshold=0.4)) == 2


# --- detection scores ------------------------------------------------------------------------


def test_detection_counts_ratios() -> None:
    counts = DetectionCounts(matched=3, predicted=4, ground_truth=6)
    # P = 3/4, R = 3/6, H = 2·0.75·0.5 / 1.25 = 0.6
    assert counts.precision == pytest.approx(0.75)
    assert counts.recall == pytest.approx(0.5)
    assert counts.hmean == pytest.approx(0.6)


def test_detection_counts_zero_denominators() -> None:
    empty = DetectionCounts(matched=0, predicted=0, ground_truth=0)
    assert (empty.precision, empty.recall, empty.hmean) == (0.0, 0.0, 0.0)


def test_detection_scores_are_micro_averaged() -> None:
    # page 1: 2 of 3 predictions match 4 gt lines; page 2: 1 of 1 matches 2 gt lines.
    # Micro: P = 3/4 = 0.75 (a per-page mean would give (2/3 + 1) / 2 ≈ 0.833), R = 3/6.
    pages = [
        PageEvaluation(matches=(), counts=DetectionCounts(2, 3, 4), text_pairs=()),
        PageEvaluation(matches=(), counts=DetectionCounts(1, 1, 2), text_pairs=()),
    ]
    total = detection_scores(pages)
    assert total == DetectionCounts(matched=3, predicted=4, ground_truth=6)
    assert total.precision == pytest.approx(0.75)
    assert total.recall == pytest.approx(0.5)


# --- text ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("kitten", "sitting", 3),  # k→s, e→i, +g
        ("flaw", "lawn", 2),  # −f, +n
        ("", "abc", 3),
        ("abc", "", 3),
        ("same", "same", 0),
        ("ab", "ba", 2),  # no transpositions in plain Levenshtein
        ("Dec 10", "Dec10", 1),
    ],
)
def test_levenshtein(a: str, b: str, distance: int) -> None:
    assert levenshtein(a, b) == distance
    assert levenshtein(b, a) == distance


def test_normalized_edit_distance_and_char_accuracy() -> None:
    # 3 edits / max(6, 7) characters
    assert normalized_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)
    assert char_accuracy("kitten", "sitting") == pytest.approx(4 / 7)
    assert char_accuracy("", "") == 1.0
    assert char_accuracy("abc", "") == 0.0
    assert char_accuracy("abc", "xyz") == 0.0


def test_recognition_scores_average_over_lines() -> None:
    pairs = [("abc", "abc"), ("abcd", "abed"), ("a b", "ab")]
    scores = recognition_scores(pairs)
    # accuracies 1, 1 − 1/4, 1 − 1/3 → mean 0.80556; only the first is an exact match
    assert scores.lines == 3
    assert scores.char_accuracy == pytest.approx((1 + 0.75 + 2 / 3) / 3)
    assert scores.exact_match == pytest.approx(1 / 3)


def test_recognition_scores_empty() -> None:
    scores = recognition_scores([])
    assert (scores.lines, scores.char_accuracy, scores.exact_match) == (0, 0.0, 0.0)


# --- a whole page ----------------------------------------------------------------------------


def test_evaluate_page_end_to_end() -> None:
    gt_boxes = [(0, 0, 100, 20), (0, 30, 100, 50), (0, 60, 100, 80)]
    gt_texts = ["first line", "second line", "third line"]
    preds = [
        square(0, 31, 100, 50),  # IoU 19/20 with gt 1
        square(2, 0, 100, 20),  # IoU 98/100 with gt 0
        square(0, 60, 30, 80),  # IoU 30/100 with gt 2: no match
    ]
    pred_texts = ["second lime", "first line", "thi"]
    page = evaluate_page(preds, pred_texts, gt_boxes, gt_texts)
    assert sorted((m.pred_index, m.gt_index) for m in page.matches) == [(0, 1), (1, 0)]
    assert page.counts == DetectionCounts(matched=2, predicted=3, ground_truth=3)
    assert set(page.text_pairs) == {("first line", "first line"), ("second line", "second lime")}
    scores = recognition_over_pages([page])
    # accuracies 1 and 1 − 1/11
    assert scores.char_accuracy == pytest.approx((1 + 10 / 11) / 2)
    assert scores.exact_match == pytest.approx(0.5)


def test_evaluate_page_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        evaluate_page([square(0, 0, 1, 1)], [], [], [])


# --- FUNSD line grouping ---------------------------------------------------------------------


def test_group_into_rows_orders_rows_and_words() -> None:
    words = [
        Word("world", (60, 2, 110, 20)),
        Word("second", (0, 30, 60, 48)),
        Word("hello", (0, 0, 50, 18)),
        Word("row", (70, 32, 100, 50)),
    ]
    rows = group_into_rows(words)
    assert [[w.text for w in row] for row in rows] == [["hello", "world"], ["second", "row"]]


def test_entity_lines_skip_empty_words_and_union_boxes() -> None:
    entity = {
        "id": 7,
        "label": "answer",
        "words": [
            {"text": "-466", "box": [296, 84, 320, 101]},
            {"text": "614", "box": [275, 85, 295, 99]},
            {"text": " ", "box": [330, 84, 340, 101]},
            {"text": "-5087", "box": [320, 82, 354, 100]},
        ],
    }
    (line,) = entity_lines(entity)
    assert line.text == "614 -466 -5087"
    assert line.box == (275, 82, 354, 101)
    assert (line.entity_id, line.label) == (7, "answer")
    assert entity_lines({"id": 0, "label": "other", "words": [{"text": "", "box": [0, 0, 5, 5]}]}) == []


def _funsd_page(stem: str) -> Path:
    """Annotation path of a FUNSD test page, or skip when the data set is not on this machine."""
    try:
        pairs = split_pairs("testing")
    except FileNotFoundError as exc:
        pytest.skip(f"FUNSD not available: {exc}")
    return next(ann for _, ann in pairs if ann.stem == stem)


@pytest.mark.slow
def test_real_funsd_page_lines() -> None:
    annotation = _funsd_page("82092117")
    lines = load_gt_lines(annotation)
    form = json.loads(annotation.read_text(encoding="utf-8"))["form"]
    expected_words = sorted(
        (e["id"], w["text"].strip(), tuple(w["box"])) for e in form for w in e["words"] if w["text"].strip()
    )
    got_words = sorted((ln.entity_id, w.text, tuple(int(v) for v in w.box)) for ln in lines for w in ln.words)
    assert got_words == expected_words  # every non-empty word in exactly one line
    texts = {line.text for line in lines}
    assert "Dec 10 '98 17 :46 P. 01" in texts  # entity 8: seven words on one row → one line
    by_entity = {}
    for line in lines:
        by_entity.setdefault(line.entity_id, []).append(line.text)
    assert by_entity[10] == ["Attorney General", "Betty D. Montgomery"]  # two rows → two lines
    assert by_entity[11] == ["CONFIDENTIAL FACSIMILE", "TRANSMISSION COVER SHEET"]
    assert 0 not in by_entity  # the empty logo entity gives no line
    for line in lines:
        assert line.box[0] <= line.box[2] and line.box[1] <= line.box[3]
        assert all(a.box[0] <= b.box[0] for a, b in zip(line.words, line.words[1:]))
