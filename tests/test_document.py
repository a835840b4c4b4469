import json

import pytest

from service.document import SCHEMA_VERSION, Document, Page, Segment, SchemaVersionError


def _document() -> Document:
    segment = Segment(id="p1-s0000", box=[(1.0, 2.0), (30.0, 2.0), (30.0, 12.5), (1.0, 12.5)],
                      text="Date: 12/10/98", det_score=0.9, rec_score=0.87, det_version="base", rec_version="v2")
    return Document(id="doc-000001", source_name="a.pdf", sha256="ab" * 32, created_at="2026-01-01T00:00:00+00:00",
                    model_versions={"det": "base", "rec": "v2"},
                    pages=[Page(number=1, width=100, height=200, image="pages/doc-000001/page-001.png",
                                segments=[segment]), Page(number=2, width=100, height=200)])


def test_round_trip_through_json() -> None:
    document = _document()
    again = Document.from_dict(json.loads(json.dumps(document.to_dict())))
    assert again == document
    assert again.segments[0].bbox == (1.0, 2.0, 30.0, 12.5)


def test_segments_are_in_page_order() -> None:
    document = _document()
    document.pages[1].segments.append(Segment(id="p2-s0000", box=[(0, 0)] * 4, text="x", det_score=1,
                                              rec_score=1, det_version="base", rec_version="v2"))
    assert [s.id for s in document.segments] == ["p1-s0000", "p2-s0000"]


def test_the_dict_carries_the_schema_version_and_older_dicts_still_load() -> None:
    data = _document().to_dict()
    assert data["schema_version"] == SCHEMA_VERSION == 1
    del data["schema_version"]  # written before versions were recorded
    assert Document.from_dict(data) == _document()


@pytest.mark.parametrize("version, message", [
    (SCHEMA_VERSION + 1, "newer than 1, the newest this Paperloop reads"),
    ("1", "must be a positive integer"),
    (0, "must be a positive integer"),
])
def test_a_newer_or_malformed_schema_version_is_refused(version: object, message: str) -> None:
    data = {**_document().to_dict(), "schema_version": version}
    with pytest.raises(SchemaVersionError, match=message):
        Document.from_dict(data)
