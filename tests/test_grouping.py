"""Entity grouping (issue 11): targets from gold words, decoding, entities as segments, alignment of
OCR words to gold entities, and the pair metric. Training on FUNSD is in the slow tier."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.document import Document, Link, Page, Segment, Word, bbox_to_quad
from service.kie.grouping import (WordUnit, accepted_links, candidate_predecessors, decode_groups, entity_segment,
                                  gold_groups, gold_word_page, grouping_scores, groups_of_links, links_kept,
                                  predecessor_matrix, reading_order, regroup_page, simulated_lines, units_of_lines)
from service.kie.pairs import PairCounts, fold, lenient_equal, pair_counts, strict_equal
from service.kie.service_view import align_units, view_page


def _entity(sid: str, label: str, words: list[tuple[str, tuple[float, float, float, float]]]) -> Segment:
    ws = [Word(t, b) for t, b in words]
    x0, y0 = min(b[0] for _, b in words), min(b[1] for _, b in words)
    x1, y1 = max(b[2] for _, b in words), max(b[3] for _, b in words)
    return Segment(id=sid, box=bbox_to_quad((x0, y0, x1, y1)), text=" ".join(t for t, _ in words), label=label, words=ws)


def _form_page() -> Page:
    """`Date: 03/12/98` on one printed line (two entities), and a two-line answer beside `Address:`."""
    return Page(number=1, width=1000, height=1000, segments=[
        _entity("q1", "question", [("Date:", (50, 100, 110, 120))]),
        _entity("a1", "answer", [("03/12/98", (120, 100, 200, 120))]),
        _entity("q2", "question", [("Address:", (50, 200, 140, 220))]),
        _entity("a2", "answer", [("12", (400, 200, 430, 220)), ("Main", (440, 200, 490, 220)),
                                 ("Street", (400, 230, 470, 250))]),
    ])


def test_gold_words_make_detector_like_lines_and_predecessor_targets() -> None:
    page = gold_word_page(_form_page())
    texts = [u.text for u in page.units]
    lines = {}
    for u in page.units:
        lines.setdefault(u.line, []).append(u.text)
    # "Date: 03/12/98" is one line (a narrow gap), "Address:" and its answer are apart (a wide gap).
    assert sorted(lines.values()) == sorted([["Date:", "03/12/98"], ["Address:"], ["12", "Main"], ["Street"]])
    matrix = predecessor_matrix(page)
    index = {t: k for k, t in enumerate(texts)}
    assert matrix[index["12"], index["Main"]] == 1 and matrix[index["Main"], index["Street"]] == 1
    assert matrix[index["Date:"], index["03/12/98"]] == 0  # same line, different entities
    assert matrix.sum() == 2
    groups = {frozenset(texts[k] for k in g) for g in gold_groups(page)}
    assert groups == {frozenset({"Date:"}), frozenset({"03/12/98"}), frozenset({"Address:"}),
                      frozenset({"12", "Main", "Street"})}


def _units() -> list[WordUnit]:
    return [WordUnit("Date:", (50, 100, 110, 120), 0, 0), WordUnit("03/12/98", (120, 100, 200, 120), 0, 1),
            WordUnit("12", (400, 200, 430, 220), 1, 0), WordUnit("Main", (440, 200, 490, 220), 1, 1),
            WordUnit("Street", (400, 230, 470, 250), 2, 0)]


def _probabilities(links: dict[tuple[int, int], float], n: int) -> np.ndarray:
    """(N + 1, N) column-stochastic: the given (i → j) probabilities, the rest on "starts"."""
    p = np.zeros((n + 1, n))
    for (i, j), value in links.items():
        p[i, j] = value
    p[n] = 1.0 - p[:n].sum(axis=0)
    return p


def test_decoding_follows_confident_links_and_puts_words_in_reading_order() -> None:
    units = _units()
    # Street's best predecessor is Main, Main's is 12; Date: and 03/12/98 stay apart (0.3 < 0.5).
    groups = decode_groups(_probabilities({(2, 3): 0.9, (3, 4): 0.8, (0, 1): 0.3}, 5), units)
    assert [[units[k].text for k in g.units] for g in groups] == [["Date:"], ["03/12/98"], ["12", "Main", "Street"]]
    three = next(g for g in groups if len(g.units) == 3)
    assert three.score == pytest.approx(0.8)  # its weakest accepted link (12 starts it with 1.0)


def test_decoding_refuses_two_successors_and_cycles() -> None:
    units = _units()
    # 12 is the best predecessor of both Main (0.9) and Street (0.7): only the stronger is kept.
    groups = decode_groups(_probabilities({(2, 3): 0.9, (2, 4): 0.7}, 5), units)
    assert sorted(len(g.units) for g in groups) == [1, 1, 1, 2]
    # A cycle 0 → 1 → 0: the weaker link is refused, every word still lands in exactly one entity.
    cycle = np.zeros((3, 2))
    cycle[0, 1], cycle[1, 0], cycle[2, 1], cycle[2, 0] = 0.9, 0.8, 0.1, 0.2
    groups = decode_groups(cycle, units[:2])
    assert [sorted(g.units) for g in groups] == [[0, 1]]


def test_reading_order_is_lines_top_to_bottom_then_left_to_right() -> None:
    units = _units()
    assert [units[k].text for k in reading_order(units, [4, 3, 2])] == ["12", "Main", "Street"]


def test_entity_segments_replace_the_lines_with_text_box_scores_and_versions() -> None:
    lines = [Segment(id="p1-s0000", box=bbox_to_quad((48, 98, 202, 122)), text="Date: 03/12/98",
                     words=[Word("Date:", (50, 100, 110, 120)), Word("03/12/98", (120, 100, 200, 120))],
                     det_score=0.9, rec_score=0.8, det_version="base", rec_version="base"),
             Segment(id="p1-s0001", box=bbox_to_quad((398, 198, 492, 222)), text="12 Main",
                     words=[Word("12", (400, 200, 430, 220)), Word("Main", (440, 200, 490, 220))],
                     det_score=0.95, rec_score=0.7, det_version="base", rec_version="base"),
             Segment(id="p1-s0002", box=bbox_to_quad((398, 228, 472, 252)), text="Street",
                     words=[Word("Street", (400, 230, 470, 250))], det_score=0.99, rec_score=0.99,
                     det_version="base", rec_version="base")]
    page = Page(number=1, width=1000, height=1000, segments=lines)
    units = units_of_lines(lines)
    groups = decode_groups(_probabilities({(2, 3): 0.9, (3, 4): 0.8}, 5), units)
    regroup_page(page, groups, units, "v1-test")
    texts = [s.text for s in page.segments]
    assert texts == ["Date:", "03/12/98", "12 Main Street"]
    address = page.segments[2]
    assert address.bbox == (400, 200, 490, 250)
    assert address.rec_score == 0.7 and address.det_score == 0.95  # the lowest of its lines
    assert address.group_version == "v1-test" and address.group_score == pytest.approx(0.8)
    assert [w.text for w in address.words] == ["12", "Main", "Street"]
    assert len({s.id for s in page.segments}) == 3 and page.segments[0].id == "p1-e0000"
    assert entity_segment(lines, units, groups[0], 1, 0, "v").box != lines[0].box  # part of a line: word box
    whole = decode_groups(_probabilities({(0, 1): 0.9}, 2), units[:2])
    assert entity_segment(lines, units, whole[0], 1, 0, "v").box == lines[0].box  # a whole line keeps its quad


def test_grouping_scores_count_exact_word_sets() -> None:
    gold = [[frozenset({0}), frozenset({1}), frozenset({2, 3, 4})]]
    assert grouping_scores(gold, gold)["hmean"] == 1.0
    lines_as_entities = [[frozenset({0, 1}), frozenset({2, 3}), frozenset({4})]]
    assert grouping_scores(lines_as_entities, gold) == {"hmean": 0.0, "precision": 0.0, "recall": 0.0}


def test_ocr_words_are_aligned_to_the_gold_entity_they_cover() -> None:
    gold = _form_page()
    # The OCR read "Date:03/12/98" as one word (no space), "12 Main" and "Street", and a speck.
    lines = [Segment(id="a", box=bbox_to_quad((48, 96, 204, 124)), text="Date:03/12/98",
                     words=[Word("Date:03/12/98", (48, 96, 204, 124))]),
             Segment(id="b", box=bbox_to_quad((398, 196, 492, 224)), text="12 Main",
                     words=[Word("12", (398, 196, 432, 224)), Word("Main", (438, 196, 492, 224))]),
             Segment(id="c", box=bbox_to_quad((398, 226, 472, 254)), text="Street",
                     words=[Word("Street", (398, 226, 472, 254))]),
             Segment(id="d", box=bbox_to_quad((800, 900, 820, 910)), text=".", words=[Word(".", (800, 900, 820, 910))])]
    units = units_of_lines(lines)
    entity = align_units(units, gold)
    assert entity == [1, 3, 3, 3, -1]  # the glued word goes to the entity it covers most (the answer)
    word_page, segments = view_page(gold, lines)
    assert word_page.labels == ["answer", "answer", "answer", "answer", None]
    answer = next(s for s in segments if s.id == "a2")
    assert answer.text == "12 Main Street" and answer.label == "answer"
    assert next(s for s in segments if s.label is None).text == "."


def test_pairs_are_judged_on_folded_texts_one_to_one() -> None:
    assert fold("  Date :\n 03/12/98 ") == "date : 03/12/98"
    assert strict_equal("Date:", "date:") and not strict_equal("Date:", "Date")
    assert lenient_equal("LOT 276 JALAN BANTING", "LOT276JALANBANTING")
    assert not lenient_equal("Name:", "Address:")
    gold = [("Date:", "03/12/98"), ("Name:", "J. Smith"), ("Name:", "J. Smith")]
    predicted = [("DATE:", "03/12/98"), ("Name:", "J. Smith"), ("Name:", "J. Smith"), ("Name:", "J. Smith"),
                 ("To:", "Bob")]
    counts = pair_counts(predicted, gold)
    assert (counts.hits, counts.predicted, counts.gold) == (3, 5, 3)  # one gold pair matches once
    assert counts.precision == pytest.approx(0.6) and counts.recall == 1.0
    assert pair_counts([("Date", "03/12/9")], [("Date:", "03/12/98")], lenient=True).hits == 1
    total = PairCounts()
    total.add(counts)
    assert total.as_dict()["f1"] == pytest.approx(0.75)


def test_key_values_carry_entity_boxes_pages_and_versions() -> None:
    page = _form_page()
    page.segments[0].group_version = page.segments[1].group_version = "g1"
    page.segments[0].ser_version = "s1"
    document = Document(id="d", source_name="x.png", sha256="0", created_at="now", pages=[page],
                        links=[Link("q1", "a1", 0.9, "r1")])
    (pair,) = document.key_values()
    assert pair["key"] == "Date:" and pair["value"] == "03/12/98"
    assert pair["key_box"] == [50, 100, 110, 120] and pair["value_page"] == 1
    assert pair["versions"] == {"group": "g1", "ser": "s1", "re": "r1"}
    assert json.loads(json.dumps(document.to_dict()))["pages"][0]["segments"][0]["group_version"] == "g1"


def test_candidates_are_the_left_neighbour_and_line_ends_above_or_to_the_left() -> None:
    units = [WordUnit("Name", (50, 100, 90, 120), 0, 0), WordUnit("of", (95, 100, 110, 120), 0, 1),
             WordUnit("Account", (130, 100, 200, 120), 1, 0),    # the detector cut the printed line here
             WordUnit("Far", (400, 100, 440, 120), 2, 0),        # 10 line heights to the right: a new entity
             WordUnit("Street", (50, 125, 120, 145), 3, 0)]      # the next printed line
    allowed = candidate_predecessors(units)
    assert allowed[0, 1] == 1 and allowed[1, 2] == 1  # left neighbour; end of the line cut to its left
    assert allowed[2, 3] == 0 and allowed[1, 3] == 0  # too far to the right
    assert allowed[1, 4] == 1 and allowed[3, 4] == 0  # the end of the line just above; not one far off
    assert allowed[0, 2] == 0 and allowed[:, 0].sum() == 0 and np.trace(allowed) == 0


def test_simulated_lines_cut_rows_of_stacked_words() -> None:
    words = [Word("OUR", (120, 80, 158, 94)), Word("QUALITY", (142, 46, 237, 66)), Word("MISSION", (162, 78, 232, 92))]
    lines = [[w.text for w in line] for line in simulated_lines(words)]
    assert ["QUALITY"] in lines and ["OUR", "MISSION"] in lines


def test_an_uncertain_entity_sends_the_document_to_review_with_its_reason() -> None:
    from service.config import PaperloopConfig
    from service.review.routing import decide, segment_is_low

    cfg = PaperloopConfig()
    page = _form_page()
    for segment in page.segments:
        segment.rec_score, segment.group_score, segment.group_version = 0.99, 0.95, "g1"
    document = Document(id="d", source_name="x.png", sha256="00", created_at="now", pages=[page])
    assert not [r for r in decide(document, cfg).reasons if r.kind == "group"]
    page.segments[3].group_score = 0.3  # "12 Main Street": not sure these words make one entity
    (reason,) = [r for r in decide(document, cfg).reasons if r.kind == "group"]
    assert reason.count == 1 and reason.lowest == 0.3 and reason.segments == ("a2",)
    assert segment_is_low(page.segments[3], cfg) and not segment_is_low(page.segments[0], cfg)


def test_an_unsure_link_between_parts_that_ser_labels_differently_is_not_kept() -> None:
    """A receipt's ``..., JOHOR. TEL NO.: 07-387 3322`` on one OCR line: the grouping model joined the
    phone number to the address with a link it was unsure of, and the address value ran on into it.
    ``KieModels(label_check=...)`` keeps such a link only when SER gives the parts on both sides one label."""
    units = _units()
    probabilities = _probabilities({(0, 1): 0.7, (2, 3): 0.95, (3, 4): 0.7}, 5)
    links = accepted_links(probabilities, 0.65)
    assert [g.units for g in groups_of_links(probabilities, units, links)] == [(0, 1), (2, 3, 4)]
    parts = groups_of_links(probabilities, units, [link for link in links if link[2] >= 0.9])
    assert [g.units for g in parts] == [(0,), (1,), (2, 3), (4,)]

    kept = links_kept(links, parts, ["question", "answer", "answer", "answer"], sure=0.9)
    assert [g.units for g in groups_of_links(probabilities, units, kept)] == [(0,), (1,), (2, 3, 4)]
    kept = links_kept(links, parts, ["question", "question", "answer", "other"], sure=0.9)
    assert [g.units for g in groups_of_links(probabilities, units, kept)] == [(0, 1), (2, 3), (4,)]
