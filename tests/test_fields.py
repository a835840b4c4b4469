"""Fields as results (issue 12): schema, typed values inside lines, one value per single field, labels
from known values, class-balanced SER loss, per-field training report, straight-through routing.

Fast tier: synthetic documents and pages rendered here; the real base OCR reads them where OCR matters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont

from service.cli import cli
from service.cli_kie import per_label_lines
from service.config import ConfigError, PaperloopConfig, load_config
from service.document import Document, FieldValue, Page, Segment, Word, bbox_to_quad
from service.fields.bootstrap import bootstrap
from service.fields.calibration import Outcome, field_threshold, straight_through, thresholds
from service.fields.extract import fill_fields
from service.fields.matching import find_value
from service.fields.schema import FieldsConfig
from service.fields.values import find_dates, parse_value, with_misread_digits
from service.kie import fit
from service.labels import LabelStore
from service.review.routing import decide
from service.store import Store

from conftest import FONT_DIRS, PROJECT_ROOT

RECEIPT = load_config(PROJECT_ROOT / "configs/receipt.yaml")
SCHEMA = RECEIPT.fields


def spec(name: str):  # noqa: ANN201 - a FieldSpec of the receipt schema
    found = SCHEMA.get(name)
    assert found is not None
    return found


def line(sid: str, text: str, y: float, x: float = 10.0, label: str | None = None, score: float | None = None,
         rec: float = 0.99) -> Segment:
    """An OCR line whose words are placed 12 px per character."""
    words, cursor = [], x
    for token in text.split(" "):
        words.append(Word(token, (cursor, y, cursor + 12 * len(token), y + 20)))
        cursor += 12 * (len(token) + 1)
    return Segment(id=sid, box=bbox_to_quad((x, y, cursor, y + 20)), text=text, words=words, label=label,
                   label_score=score, rec_score=rec, det_version="base", rec_version="base", ser_version="v1")


def receipt(segments: list[Segment]) -> Document:
    return Document(id="r1", source_name="r1.png", sha256="0" * 64, created_at="2026-01-01T00:00:00.000Z",
                    model_versions={"det": "base", "rec": "base", "ser": "v1"},
                    pages=[Page(number=1, width=800, height=1200, segments=segments)])


# -- 1. the schema ---------------------------------------------------------------------------------

def test_receipt_schema_loads() -> None:
    assert SCHEMA.names == ["company", "address", "date", "total"]
    assert spec("total").type == "amount" and spec("total").found_by == "key"


@pytest.mark.parametrize(("text", "message"), [
    ("kie: {labels: [total, other]}\nfields: {fields: [{name: total, colour: red}]}\n", "colour"),
    ("fields: {fields: [{name: total, type: amount}]}\n", "not SER labels"),
    ("kie: {labels: [total, other]}\nfields: {fields: [{name: total, found_by: key}]}\n", "needs keys"),
    ("kie: {labels: [total, other]}\nfields: {fields: [{name: total, type: amount, trim_words: x}]}\n",
     "only for type text"),
    ("kie: {labels: [company, other]}\nfields: {fields: [{name: company, trim_words: '(x'}]}\n", "bad trim_words"),
])
def test_a_bad_schema_is_refused_with_its_reason(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(bad)


# -- 2. values inside lines --------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "iso"), [
    ("Date:07/03/2018", "2018-03-07"), ("15/01/201810:59:13", "2018-01-15"), ("19 JUL 2016", "2016-07-19"),
    (":19 Jul201601:25pm", "2016-07-19"), ("08-06-16", "2016-06-08"), ("2018-03-07 12:00", "2018-03-07"),
])
def test_dates_are_read_out_of_their_lines(text: str, iso: str) -> None:
    assert parse_value(spec("date"), text, SCHEMA).value == iso


def test_amounts_keep_their_currency_and_drop_their_key() -> None:
    total = parse_value(spec("total"), "TOTAL RM 193.00", SCHEMA)
    assert (total.value, total.currency) == ("193.00", "MYR")
    assert parse_value(spec("total"), "5.16 91.16", SCHEMA).value == "91.16"
    assert parse_value(spec("total"), "Total: 1,234.50", SCHEMA).value == "1234.50"
    assert find_dates("no date here 12:30") == []


@pytest.mark.parametrize(("text", "value"), [
    ("NETT TOTAL: RM1O.35", "10.35"), ("TOTAL 12O.OO", "120.00"), ("Total: l5.90", "15.90"), ("RM 3.0o", "3.00"),
])
def test_digits_read_as_letters_inside_an_amount_are_digits(text: str, value: str) -> None:
    """Before: ``RM1O.35`` (a receipt's nett total, O for 0) held no amount and the total was missed."""
    assert parse_value(spec("total"), text, SCHEMA).value == value


def test_letters_in_words_next_to_digits_stay_letters() -> None:
    assert with_misread_digits("INVOICE NO.12 Vol1 1Oth TOTAl 2O18") == "INVOICE NO.12 Vol1 1Oth TOTAl 2018"
    assert parse_value(spec("date"), "Date:1O/03/2O18", SCHEMA).value == "2018-03-10"


def test_processed_document_has_fields_with_values_parsed_out_of_lines() -> None:
    """Before: documents had labelled lines only, no ``fields`` (the user joined lines themselves)."""
    document = receipt([
        line("p1-s0000", "99 SPEED MART S/B", 10, label="company", score=0.9),
        line("p1-s0001", "LOT P.T. 33198, BATU 4", 40, label="address", score=0.8),
        line("p1-s0002", "JALAN KAPAR 42100 KLANG", 62, label="address", score=0.7),
        line("p1-s0003", "Date:07/03/2018", 120, label="date", score=0.95),
        line("p1-s0004", "TOTAL RM 193.00", 300, label="total", score=0.9),
    ])
    fill_fields(document, SCHEMA, thresholds={"total": 0.5})
    values = {f.name: f for f in document.fields}
    assert values["date"].value == "2018-03-07" and values["date"].raw == "07/03/2018"
    assert (values["total"].value, values["total"].currency, values["total"].threshold) == ("193.00", "MYR", 0.5)
    assert values["total"].boxes[0][0] > document.segment("p1-s0004").bbox[0]  # the value's words, not the key's
    assert values["address"].value == "LOT P.T. 33198, BATU 4 JALAN KAPAR 42100 KLANG"
    assert values["address"].segments == ["p1-s0001", "p1-s0002"]
    assert values["company"].versions == {"det": "base", "rec": "base", "ser": "v1"}
    again = Document.from_dict(json.loads(json.dumps(document.to_dict())))
    assert again.fields == document.fields


def test_a_single_value_field_gets_one_value_the_most_probable() -> None:
    """Before: SER labelled several lines ``total`` (the tax and the total) and all of them came out."""
    document = receipt([
        line("p1-s0000", "GST 6% 5.16", 280, label="total", score=0.55),
        line("p1-s0001", "TOTAL 91.16", 300, label="total", score=0.85),
        line("p1-s0002", "CASH 100.00", 320, label="other", score=0.9),
    ])
    probabilities = np.array([[0, 0, 0, 0.55, 0.45], [0, 0, 0, 0.85, 0.15], [0, 0, 0, 0.3, 0.7]])
    fill_fields(document, SCHEMA, probabilities, RECEIPT.kie.labels)
    totals = [f for f in document.fields if f.name == "total"]
    assert [(t.value, t.segments) for t in totals] == [("91.16", ["p1-s0001"])]
    assert totals[0].confidence == pytest.approx(0.85 * 0.99)


def test_a_text_value_is_assembled_from_every_labelled_piece_next_to_it_in_reading_order() -> None:
    """Before: the value ran over the segments next to the seed in segment order only, so an address cut
    into entities with another segment between them in that order (here a line far below) came out cut.
    A line printed between two labelled ones (a registration number under the company) still separates them."""
    document = receipt([
        line("p1-s0005", "99 SPEED MART", 0, label="address", score=0.5),  # cut off by the line below
        line("p1-s0006", "(123-X)", 20, label="other", score=0.9),
        line("p1-s0000", "NO 5, JALAN", 40, label="address", score=0.9),
        line("p1-s0001", "GST ID: 0001", 400, label="other", score=0.9),
        line("p1-s0002", "42100 KLANG", 62, label="address", score=0.6),
        line("p1-s0003", "BATU 4", 40, x=170, label="address", score=0.7),
        line("p1-s0004", "LOT 9 SHAH ALAM", 900, label="address", score=0.5),  # far away: another value
    ])
    fill_fields(document, SCHEMA)
    address = next(f for f in document.fields if f.name == "address")
    assert address.value == "NO 5, JALAN BATU 4 42100 KLANG"
    assert sorted(address.segments) == ["p1-s0000", "p1-s0002", "p1-s0003"]


def test_the_words_of_a_tilted_line_keep_the_order_the_recognizer_read_them_in() -> None:
    """Before: a value's words were sorted into rows by their height, so on a receipt line tilted up to the
    right (each word higher than the one before it) the company came out as ``SDN BHD UNIHAKKA INTERNATIONAL``."""
    words = [Word("UNIHAKKA", (10, 40, 106, 60)), Word("INTERNATIONAL", (118, 28, 274, 48)),
             Word("SDN", (286, 18, 322, 38)), Word("BHD", (334, 10, 370, 30))]
    tilted = Segment(id="p1-s0000", box=bbox_to_quad((10, 10, 370, 60)), text="UNIHAKKA INTERNATIONAL SDN BHD",
                     words=words, label="company", label_score=0.9, rec_score=0.99, det_version="base",
                     rec_version="base", ser_version="v1")
    document = receipt([tilted, line("p1-s0001", "NO 5, JALAN", 80, label="address", score=0.9)])
    fill_fields(document, SCHEMA)
    company = next(f for f in document.fields if f.name == "company")
    assert company.value == "UNIHAKKA INTERNATIONAL SDN BHD"


def test_a_parenthesis_cut_by_the_edges_of_a_text_value_is_not_part_of_it() -> None:
    """Before: a registration number printed across two lines, ``(CO`` after the company and ``NO. 95156P)``
    above the address, came out glued to both values. A parenthesis the value holds whole stays."""
    document = receipt([
        line("p1-s0000", "SYARIKAT KAM LAI SEONG SDN BHD (CO", 0, label="company", score=0.9),
        line("p1-s0001", "NO. 95156P)", 22, label="address", score=0.6),
        line("p1-s0002", "NO. 1442, JALAN SK (11/5)", 44, label="address", score=0.9),
        line("p1-s0003", "43300 SELANGOR", 66, label="address", score=0.9),
    ])
    fill_fields(document, SCHEMA)
    values = {f.name: f for f in document.fields}
    assert values["company"].value == "SYARIKAT KAM LAI SEONG SDN BHD"
    assert values["address"].value == "NO. 1442, JALAN SK (11/5) 43300 SELANGOR"
    assert sorted(values["address"].segments) == ["p1-s0002", "p1-s0003"]
    assert values["address"].confidence == pytest.approx(0.9 * 0.99)


def test_a_value_whose_most_probable_piece_was_cut_off_is_as_sure_as_what_is_left() -> None:
    document = receipt([line("p1-s0000", "NO. 95156P)", 0, label="address", score=0.95),
                        line("p1-s0001", "NO. 1442, JALAN SK", 22, label="address", score=0.7),
                        line("p1-s0002", "43300 SELANGOR", 44, label="address", score=0.6)])
    fill_fields(document, SCHEMA)
    (address,) = [f for f in document.fields if f.name == "address"]
    assert address.value == "NO. 1442, JALAN SK 43300 SELANGOR"
    assert address.confidence == pytest.approx(0.7 * 0.99)


def test_a_registration_number_after_a_company_name_is_not_part_of_it() -> None:
    """Before: ``MOONLIGHT CAKE HOUSE SDN BHD 862725-U`` on one line came out as the company. The receipt
    schema's ``trim_words`` drops such a word at either end of the value, never a word inside it."""
    document = receipt([line("p1-s0000", "MOONLIGHT CAKE HOUSE SDN BHD 862725-U", 0, label="company", score=0.9),
                        line("p1-s0001", "(1234-A) 99 SPEED MART 2018 S/B", 100, label="address", score=0.9)])
    fill_fields(document, SCHEMA)
    values = {f.name: f.value for f in document.fields}
    assert values["company"] == "MOONLIGHT CAKE HOUSE SDN BHD"
    assert values["address"] == "(1234-A) 99 SPEED MART 2018 S/B"  # the address has no trim_words
    lone = receipt([line("p1-s0000", "862725-U", 0, label="company", score=0.9)])
    fill_fields(lone, SCHEMA)
    assert [f.value for f in lone.fields if f.name == "company"] == ["862725-U"]  # never cut to nothing


def test_full_width_punctuation_in_a_text_value_is_normalized_and_kept_raw() -> None:
    """The base recognizer's alphabet is Chinese: it reads some commas of a Latin address as ``，``."""
    document = receipt([line("p1-s0000", "16G BLOCK B，ZENITH PARK", 40, label="address", score=0.9)])
    fill_fields(document, SCHEMA)
    (address,) = [f for f in document.fields if f.name == "address"]
    assert (address.value, address.raw) == ("16G BLOCK B,ZENITH PARK", "16G BLOCK B，ZENITH PARK")


def test_a_speck_read_as_a_dot_before_a_text_value_is_not_part_of_it() -> None:
    """The recognizer reads a speck before an address as a dot glued to its first word (``.NO.1,``);
    no text value begins with punctuation, but a value's own final comma or dot stays."""
    document = receipt([line("p1-s0000", ".NO.1, JALAN PERMAS", 40, label="address", score=0.9),
                        line("p1-s0001", "81750 JOHOR.", 62, label="address", score=0.9)])
    fill_fields(document, SCHEMA)
    address = next(f for f in document.fields if f.name == "address")
    assert address.value == "NO.1, JALAN PERMAS 81750 JOHOR."


def test_a_keyed_total_is_the_last_one_printed_with_its_key_not_the_one_before_rounding() -> None:
    """Before: SER's most probable amount won, and on holdout receipts that was mostly the total before
    rounding (``Total Amount: RM8.76`` above ``Rounding: -RM0.01`` and ``Nett Total: RM8.75``)."""
    document = receipt([
        line("p1-s0000", "Total Amount:", 300, x=10), line("p1-s0001", "RM8.76", 300, x=300),
        line("p1-s0002", "Rounding: -RM0.01", 330),
        line("p1-s0003", "Nett Total: RM8.75", 360),
        line("p1-s0004", "TOTAL QTY: 3", 390),  # keyed too, but a count: amounts with decimals first
        line("p1-s0005", "CASH RM10.00", 420),
    ])
    probabilities = np.array([[0, 0, 0, 0.05, 0.95], [0, 0, 0, 0.84, 0.16], [0, 0, 0, 0.01, 0.99],
                              [0, 0, 0, 0.02, 0.98], [0, 0, 0, 0.01, 0.99], [0, 0, 0, 0.3, 0.7]])
    fill_fields(document, SCHEMA, probabilities, RECEIPT.kie.labels)
    totals = [f for f in document.fields if f.name == "total"]
    assert [(t.value, t.segments) for t in totals] == [("8.75", ["p1-s0003"])]


def test_a_total_ser_labels_after_the_last_keyed_amount_is_the_last_candidate() -> None:
    """Before: only keyed amounts could be the last one, so ``TOTAL SALES INCLUSIVE GST 2.99`` (keyed, the
    sum before rounding) beat ``AMOUNT TO BE PAID 3.00`` under it, a key the schema does not list, which
    SER labelled total (a holdout receipt). An amount SER labels the field is a candidate for last too."""
    document = receipt([
        line("p1-s0000", "TOTAL SALES INCLUSIVE GST", 300), line("p1-s0001", "2.99", 300, x=400),
        line("p1-s0002", "ROUNDING ADJ", 330), line("p1-s0003", "0.01", 330, x=400),
        line("p1-s0004", "AMOUNT TO BE PAID", 360), line("p1-s0005", "3.00", 360, x=400),
        line("p1-s0006", "CASH", 390), line("p1-s0007", "5.00", 390, x=400),
    ])
    p_total = [0.0, 0.34, 0.0, 0.01, 0.0, 0.56, 0.0, 0.2]
    probabilities = np.array([[0, 0, 0, p, 1 - p] for p in p_total])
    fill_fields(document, SCHEMA, probabilities, RECEIPT.kie.labels)
    assert [(f.value, f.segments) for f in document.fields if f.name == "total"] == [("3.00", ["p1-s0005"])]


def test_a_tax_summary_row_after_the_total_is_not_a_keyed_total() -> None:
    """Before: any amount with a key anywhere to its left on its row counted as keyed, and the last keyed one
    won, so the tax summary printed under the payment (``Total 86.00 5.16``: amount and tax) gave the tax.
    A value is printed with its key only when no other amount stands between them or after it on its row."""
    document = receipt([
        line("p1-s0000", "SUBTOTAL", 280), line("p1-s0001", "86.00", 280, x=400),
        line("p1-s0002", "GST 6%", 300), line("p1-s0003", "5.16", 300, x=400),
        line("p1-s0004", "TOTAL", 320), line("p1-s0005", "91.16", 320, x=400),
        line("p1-s0006", "CASH", 340), line("p1-s0007", "100.00", 340, x=400),
        line("p1-s0008", "GST SUMMARY AMOUNT TAX", 400),
        line("p1-s0009", "Total", 420), line("p1-s0010", "86.00", 420, x=300), line("p1-s0011", "5.16", 420, x=400),
    ])
    p_total = [0.0, 0.1, 0.0, 0.1, 0.0, 0.5, 0.0, 0.2, 0.0, 0.0, 0.3, 0.4]
    probabilities = np.array([[0, 0, 0, p, 1 - p] for p in p_total])
    fill_fields(document, SCHEMA, probabilities, RECEIPT.kie.labels)
    assert [(f.value, f.segments) for f in document.fields if f.name == "total"] == [("91.16", ["p1-s0005"])]


def test_a_key_at_the_end_of_a_longer_label_is_not_the_key() -> None:
    """Before: ``TAX TOTAL 1.58`` printed under the total held the key ``total``, was the last keyed amount
    and won over ``TOTAL 28.00`` that SER gave the total (a holdout receipt). A key counts where it
    heads its label."""
    document = receipt([
        line("p1-s0000", "SUB-TOTAL (GST)", 280), line("p1-s0001", "28.00", 280, x=400),
        line("p1-s0002", "TOTAL", 320), line("p1-s0003", "28.00", 320, x=400),
        line("p1-s0004", "*GST @ 6% INCLUDED IN TOTAL", 360),
        line("p1-s0005", "TAX TOTAL", 400), line("p1-s0006", "1.58", 400, x=400),
        line("p1-s0007", "GRAND TOTAL", 440, x=500),  # a compound key of the schema, heading its label
    ])
    p_total = [0.0, 0.3, 0.0, 0.6, 0.0, 0.0, 0.05, 0.0]
    probabilities = np.array([[0, 0, 0, p, 1 - p] for p in p_total])
    fill_fields(document, SCHEMA, probabilities, RECEIPT.kie.labels)
    assert [(f.value, f.segments) for f in document.fields if f.name == "total"] == [("28.00", ["p1-s0003"])]
    document.pages[0].segments[7] = line("p1-s0007", "GRAND TOTAL 27.95", 440)
    fill_fields(document, SCHEMA, probabilities, RECEIPT.kie.labels)
    assert [f.value for f in document.fields if f.name == "total"] == ["27.95"]


def test_a_keyed_field_without_any_printed_key_falls_back_to_ser() -> None:
    document = receipt([line("p1-s0000", "5.16", 280), line("p1-s0001", "91.16", 300)])
    probabilities = np.array([[0, 0, 0, 0.2, 0.8], [0, 0, 0, 0.7, 0.3]])
    fill_fields(document, SCHEMA, probabilities, RECEIPT.kie.labels)
    assert [f.value for f in document.fields if f.name == "total"] == ["91.16"]


def test_a_multiple_value_field_keeps_every_labelled_value() -> None:
    schema = FieldsConfig.model_validate({"fields": [{"name": "total", "type": "amount", "multiple": True}]})
    document = receipt([line("p1-s0000", "5.16", 280, label="total", score=0.6),
                        line("p1-s0001", "91.16", 300, label="total", score=0.9)])
    assert [f.value for f in fill_fields(document, schema)] == ["5.16", "91.16"]


# -- 4. labels from known values -------------------------------------------------------------------

def ocr_receipt() -> Document:
    return receipt([
        line("p1-s0000", "99SPEEDMART S/B", 10),
        line("p1-s0001", "LOT P.T.33198,BATU4", 40),
        line("p1-s0002", "JALANKAPAR 42100 KLANG", 62),
        line("p1-s0003", "Date:07/03/2018 10:59", 120),
        line("p1-s0004", "SUBTOTAL 193.00", 280),
        line("p1-s0005", "TOTAL RM 193.00", 300),
    ])


def test_known_values_are_found_as_values_among_ocr_words() -> None:
    document = ocr_receipt()
    assert find_value(document, spec("date"), "7/3/2018", SCHEMA).words == (("p1-s0003", 0),)
    total = find_value(document, spec("total"), "193", SCHEMA)  # the occurrence after the key TOTAL
    assert total.words == (("p1-s0005", 2),)
    company = find_value(document, spec("company"), "99 speed mart s/b", SCHEMA)  # spaces and case forgiven
    assert company.words == (("p1-s0000", 0), ("p1-s0000", 1))
    address = find_value(document, spec("address"), "LOT P.T. 33198, BATU 4 JALAN KAPAR 42100 KLANG", SCHEMA)
    assert address.words[0] == ("p1-s0001", 0) and address.words[-1] == ("p1-s0002", 2)
    assert find_value(document, spec("company"), "TOTALLY DIFFERENT SHOP NAME", SCHEMA) is None


def test_bootstrap_labels_the_value_words_and_keeps_the_rest_of_their_line() -> None:
    result = bootstrap(ocr_receipt(), {"date": "07/03/2018", "total": "193.00", "company": "99 Speed Mart S/B",
                                       "address": "nowhere street 1"}, SCHEMA, "other")
    labelled = {s.label: s.text for s in result.document.segments if s.label != "other"}
    assert labelled == {"company": "99SPEEDMART S/B", "date": "07/03/2018", "total": "193.00"}
    rest = {s.text for s in result.document.segments if s.label == "other"}
    assert {"TOTAL RM", "Date: 10:59", "SUBTOTAL 193.00"} <= rest
    assert result.missing == ["address"]
    gold = {f.name: f.value for f in result.document.fields}
    assert gold == {"company": "99 speed mart s/b", "date": "2018-03-07", "total": "193.00"}
    ids = {s.id for s in result.document.segments}
    assert all(seg in ids for f in result.document.fields for seg in f.segments)


def test_bootstrap_cuts_glued_words_where_a_text_value_starts_and_ends() -> None:
    """Before: the base recognizer's glued words (``SDN.BHD.(974306-T)``, ``NO.2JALAN``) went whole into the
    value's entity, so the grouping model and SER learned that a company ends with its registration
    number and an address starts with ``NO.``. The value's words are now cut out of them."""
    document = receipt([line("p1-s0000", "YIN MA (M)SDN.BHD.(974306-T)", 10), line("p1-s0001", "NO.2JALAN UDANG", 40),
                        line("p1-s0002", "KUALA LUMPUR.Tel:03-1234", 62)])
    result = bootstrap(document, {"company": "YIN MA (M) SDN. BHD.", "address": "2 JALAN UDANG KUALA LUMPUR."},
                       SCHEMA, "other")
    entities = {(s.label, s.text) for s in result.document.segments}
    assert {("company", "YIN MA (M)SDN.BHD."), ("other", "(974306-T)"), ("other", "NO."), ("other", "Tel:03-1234"),
            ("address", "2JALAN UDANG KUALA LUMPUR.")} == entities
    company = next(s for s in result.document.segments if s.label == "company")
    registration = next(s for s in result.document.segments if s.text == "(974306-T)")
    assert company.bbox[2] <= registration.bbox[0] + 1e-6  # the cut words' boxes split the glued word's
    assert {f.name: f.raw for f in result.document.fields} == {"company": "YIN MA (M)SDN.BHD.",
                                                               "address": "2JALAN UDANG KUALA LUMPUR."}


def render_receipt(path: Path) -> None:
    font = ImageFont.truetype(str(next(d / "DejaVuSans.ttf" for d in FONT_DIRS if (d / "DejaVuSans.ttf").is_file())), 30)
    image = Image.new("RGB", (900, 520), "white")
    draw = ImageDraw.Draw(image)
    for y, text in [(30, "GREEN LEAF CAFE"), (120, "Date: 07/03/2018"), (210, "Coffee 4.50"), (300, "TOTAL RM 12.80")]:
        draw.text((60, y), text, fill="black", font=font)
    image.save(path)


def test_import_values_ocrs_the_document_and_files_bootstrapped_gold(tmp_path: Path, models_dir: Path) -> None:
    """`paperloop import values FILE`: the real base OCR reads a rendered receipt; the values' words are labelled."""
    render_receipt(tmp_path / "r1.png")
    (tmp_path / "values.csv").write_text("document,field,value\nr1.png,company,Green Leaf Cafe\n"
                                         "r1.png,date,7/3/2018\nr1.png,total,12.8\n")
    config = tmp_path / "config.yaml"
    config.write_text((PROJECT_ROOT / "configs/receipt.yaml").read_text()
                      + f"\npaths:\n  root: {tmp_path}\n  models: {models_dir}\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "import", "values", str(tmp_path / "values.csv")])
    assert result.exit_code == 0, result.output
    assert "date" in result.output and "3 found" not in result.output
    cfg = load_config(config)
    store = Store(cfg.paths.database)
    try:
        [gold] = LabelStore(store).documents("train")
        [(source,)] = store.db.execute("SELECT source FROM gold_documents").fetchall()
    finally:
        store.close()
    assert source == "values:bootstrapped"
    assert {f.name: f.value for f in gold.fields} == {"company": "green leaf cafe", "date": "2018-03-07",
                                                      "total": "12.80"}
    labelled = {s.label: s.text for s in gold.segments if s.label != "other"}
    assert labelled["total"] == "12.80" and "date" in labelled


# -- 3. rare fields are learned and reported --------------------------------------------------------

def test_class_weights_lift_a_rare_field_and_the_loss_uses_them() -> None:
    """Before: plain cross-entropy; one total line among ~55 weighed 1/55 of the loss and vanished."""
    labels = np.array([4] * 54 + [3])
    example = fit.Example(None, labels, np.zeros((55, 55), np.float32), fit.one_hot(labels, 5))  # type: ignore[arg-type]
    weights = fit.class_weights([example], 5)
    assert weights[3] / weights[4] == pytest.approx(np.sqrt(54), rel=1e-4)
    assert np.allclose(fit.class_weights([example], 5, "none"), 1.0)
    assert PaperloopConfig().kie.training.class_balance == "inverse_sqrt"


def test_train_prints_per_field_figures() -> None:
    """Before: `train ser` printed only the overall validation Hmean; a field at 0 went unnoticed."""
    metrics = {"validation": {"total": {"precision": 0.0, "recall": 0.0, "hmean": 0.0},
                              "date": {"precision": 0.9, "recall": 0.8, "hmean": 0.8471},
                              "overall": {"precision": 0.9, "recall": 0.5, "hmean": 0.64}}}
    lines = per_label_lines(metrics, {"split": "holdout", "metrics": {"hmean": 0.6, "total_hmean": 0.0,
                                                                       "date_hmean": 0.8}})
    assert any(l.split()[:4] == ["total", "0.0000", "0.0000", "0.0000"] for l in lines)
    assert any(l.split()[0] == "date" and l.split()[-1] == "0.8000" for l in lines)


def test_macro_hmean_does_not_let_a_rare_field_vanish() -> None:
    gold = ["other"] * 50 + ["total"] * 2
    never = ["other"] * 52
    scores = fit.ser_scores(gold, never, ["total", "other"], ignored="other")
    assert fit.macro_hmean(scores, ["total", "other"]) == 0.0


# -- 5. straight-through processing ------------------------------------------------------------------

def test_thresholds_are_set_so_accepted_values_meet_the_target() -> None:
    values = [Outcome("total", c, ok) for c, ok in
              [(0.99, True), (0.97, True), (0.95, True), (0.9, False), (0.8, True), (0.7, False), (None, False)]]
    assert field_threshold(values, 0.98) == 0.95
    assert field_threshold(values, 0.75) == 0.8
    assert field_threshold([Outcome("total", 0.9, False)], 0.98) == 1.0  # never reached: always review
    docs = [[o] for o in values]
    cut = thresholds(docs, 0.98)
    result = straight_through(docs, cut, ["total"])
    assert result["accepted"] == 3 and result["field_accuracy"] == 1.0


def test_documents_go_straight_through_on_their_fields() -> None:
    """Before: any line read below 0.80 (every receipt has one) sent the document to review."""
    cfg = RECEIPT.model_copy(deep=True)
    cfg.review.audit_percent = 0
    document = receipt([line("p1-s0000", "~~smudge~~", 500, rec=0.3)])
    document.fields = [FieldValue(name, "x", "x", 1, confidence=0.95, threshold=0.9) for name in SCHEMA.names]
    assert not decide(document, cfg).needs_review
    document.fields[3].confidence = 0.5
    decision = decide(document, cfg)
    assert decision.needs_review and [r.field for r in decision.reasons] == ["total"]
    document.fields = document.fields[:3]
    assert "not found" in decide(document, cfg).summary
    document.fields = [FieldValue(name, "x", "x", 1, confidence=0.95) for name in SCHEMA.names]  # never calibrated
    assert decide(document, cfg).needs_review


# -- real receipts (slow tier) -----------------------------------------------------------------------

SROIE = PROJECT_ROOT.parent / "shared/datasets/sroie-dev"


@pytest.mark.slow
@pytest.mark.skipif(not (SROIE / "entities").is_dir(), reason="sroie-dev not present")
def test_sroie_values_are_found_in_the_base_ocr(cfg: PaperloopConfig) -> None:
    """Five SROIE receipts read by the base OCR: their known date and total are found and labelled as values."""
    from service.pipeline import DocumentPipeline

    cfg = cfg.model_copy(update={"kie": RECEIPT.kie, "fields": SCHEMA})
    pipeline = DocumentPipeline(cfg)
    found = 0
    for entities in sorted((SROIE / "entities").glob("*.txt"))[:5]:
        values = json.loads(entities.read_text())
        image = SROIE / "img" / f"{entities.stem}.jpg"
        result = bootstrap(pipeline.process_file(image, entities.stem, "0" * 64, image.name), values, SCHEMA, "other")
        gold = {f.name: f for f in result.document.fields}
        found += sum(name in gold for name in ("date", "total", "company"))
        if "total" in gold:
            [segment] = [s for s in result.document.segments if s.label == "total"]
            assert parse_value(spec("total"), segment.text, SCHEMA).value == gold["total"].value
    assert found >= 12  # of 15


def test_the_learning_gate_rejects_a_candidate_that_loses_a_field() -> None:
    """SER's metrics carry each field's Hmean, and the gate holds each one to learning.tolerance."""
    from service.tasks import get_task

    rule = get_task("ser").gate_rule(RECEIPT)
    current = {"hmean": 0.80, "company_hmean": 0.7, "total_hmean": 0.6}
    ok, why = rule.decide({"hmean": 0.85, "company_hmean": 0.9, "total_hmean": 0.2}, current)
    assert not ok and "total_hmean" in why
    assert rule.decide({"hmean": 0.85, "company_hmean": 0.9, "total_hmean": 0.6}, current)[0]


def test_the_kie_gate_reads_bootstrapped_holdout_pages_with_the_rec_in_service(
        tmp_path: Path, cfg: PaperloopConfig, models_dir: Path) -> None:
    """Before: a gold document labelled on OCR text (``import values``) was evaluated on its stored text,
    the reading of the rec that was in service then; after a rec promotion, a SER candidate trained on the
    new rec's reading was judged on the old one. Now such a page is re-read by the OCR in service and its
    labels carried over to the OCR words (the documents SER/RE score, the word pages grouping scores);
    a document whose text no rec read stays as it is. Real OCR, no stand-in for our own components: an
    earlier version of this test replaced ``grouping_scores`` and a module imported meanwhile kept the
    stand-in for the rest of the test session."""
    from service.kie.service_view import as_read_in_service
    from service.registry import ModelRegistry

    render_receipt(tmp_path / "r1.png")
    stale = Segment(id="p1-s0000", box=bbox_to_quad((50, 20, 420, 75)), text="GRFFNLFAFCAF", label="company",
                    rec_version="an-old-rec", rec_score=0.5)
    rest = Segment(id="p1-s0001", box=bbox_to_quad((50, 200, 420, 255)), text="Coffee4.50", label="other",
                   rec_version="an-old-rec", rec_score=0.5)
    gold = Document(id="g1", source_name="r1.png", sha256="1" * 64, created_at="2026-01-01T00:00:00.000Z",
                    pages=[Page(number=1, width=900, height=520, image=str(tmp_path / "r1.png"), segments=[stale, rest])])
    typed = receipt([line("p1-s0000", "TYPED BY A REVIEWER", 10, label="company")])
    typed.id = "typed"
    for segment in typed.segments:
        segment.rec_version = None
    receipt_cfg = cfg.model_copy(update={"kie": RECEIPT.kie, "fields": RECEIPT.fields})

    kept, view = as_read_in_service(receipt_cfg, ModelRegistry(models_dir), [gold, typed])
    assert [d.id for d in kept] == ["typed"] and kept[0].segments[0].text == "TYPED BY A REVIEWER"
    [reread] = view.documents
    assert reread.id == "g1#ocr"
    [company] = [s for s in reread.segments if s.label == "company"]
    assert "".join(company.text.split()).casefold() == "greenleafcafe"
    [page] = view.word_pages
    assert "".join(u.text for u in page.units).casefold().startswith("greenleafcafe")


@pytest.mark.slow
def test_with_a_schema_ser_is_gated_on_the_fields_the_pipeline_reads(tmp_path: Path, own_registry: PaperloopConfig) -> None:
    """A SER candidate whose entity Hmean moved by chance while it read the fields better (the receipts'
    holdout: 0.7934 vs 0.7969, fields 0.78 vs 0.75) was refused. With a field schema SER's main metric is
    the share of the holdout's gold field values the whole pipeline reads right with that version, pinned:
    the version in service does not stand in for the one under evaluation."""
    from service.kie.candidates import register, train_ser
    from service.pipeline import DocumentPipeline
    from service.registry import ModelRegistry
    from service.tasks import get_task

    cfg = own_registry.model_copy(update={"kie": RECEIPT.kie, "fields": SCHEMA})
    render_receipt(tmp_path / "r1.png")
    gold = DocumentPipeline(cfg).process_file(tmp_path / "r1.png", "r1", "1" * 64, "r1.png")
    misled = Document.from_dict(gold.to_dict())
    assert [s.text[:4] for s in gold.segments] == ["GREE", "Date", "Coff", "TOTA"]  # the base OCR's lines
    for document, labels in ((gold, ["company", "date", "other", "total"]),
                             (misled, ["other", "date", "company", "total"])):  # taught the wrong company
        for segment, label in zip(document.segments, labels):
            segment.label = label
    gold.fields = [FieldValue(name="company", value="greenleafcafe", raw="GREENLEAFCAFE", page=1),
                   FieldValue(name="date", value="2018-03-07", raw="07/03/2018", page=1),
                   FieldValue(name="total", value="12.80", raw="12.80", page=1)]
    settings = fit.TrainSettings(epochs=30, dim=32, layers=1, heads=2, embed_dim=16, seed=0, learning_rate=3e-3)
    registry = ModelRegistry(cfg.paths.resolve("models"))
    taught = register(train_ser([gold], [gold], cfg.kie.labels, settings, progress=False), registry)
    untaught = register(train_ser([misled], [misled], cfg.kie.labels, settings, progress=False), registry)
    registry.set_current("ser", taught, reason="test", actor="test")
    task = get_task("ser")

    theirs = task.evaluate(cfg, registry, taught, [gold])
    ours = task.evaluate(cfg, registry, untaught, [gold])
    assert next(iter(ours)) == "fields_exact" and "hmean" in ours
    assert (theirs["fields_exact"], ours["fields_exact"]) == (1.0, 2 / 3)  # its company is the coffee
    assert task.gate_rule(cfg, [gold]).decide(theirs, ours)[0]
    assert not task.gate_rule(cfg, [gold]).decide(ours, theirs)[0]
    assert "fields_exact" not in task.evaluate(own_registry, registry, taught, [gold])  # no schema: Hmeans only
