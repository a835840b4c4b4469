"""Gold labels to and from FUNSD, XFUND and PPOCRLabel, on the real FUNSD test split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from conftest import FUNSD_ROOT
from service.cli import cli
from service.document import Document, Link, Page, Segment, Word
from service.formats import (FormatError, funsd_dict, read_funsd, read_ppocr_kie, read_xfund,
                             write_ppocr_kie, xfund_dict)
from service.labels import LabelStore
from service.store import Store

TEST_SPLIT = FUNSD_ROOT / "dataset/testing_data"


def _pairs() -> list[tuple[Path, Path]]:
    annotations = sorted((TEST_SPLIT / "annotations").glob("*.json"))
    assert len(annotations) == 50, f"FUNSD is expected at {FUNSD_ROOT} (see README)"
    return [(a, TEST_SPLIT / "images" / f"{a.stem}.png") for a in annotations]


@pytest.fixture(scope="module")
def funsd_docs() -> list[Document]:
    """The 50 FUNSD test pages as gold documents, with their images."""
    return [read_funsd(annotation, image) for annotation, image in _pairs()]


def _dicts(documents: list[Document]) -> list[dict[str, Any]]:
    return [d.to_dict() for d in documents]


# -- FUNSD ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_funsd_round_trip_gives_every_test_file_back_exactly() -> None:
    differing = [a.name for a, _ in _pairs()
                 if funsd_dict(read_funsd(a)) != json.loads(a.read_text(encoding="utf-8"))]
    assert differing == []


@pytest.mark.slow
def test_read_funsd_fills_the_document(funsd_docs: list[Document]) -> None:
    doc = next(d for d in funsd_docs if d.id == "funsd-82092117")
    image = TEST_SPLIT / "images/82092117.png"
    page = doc.pages[0]
    assert (doc.source_name, doc.sha256) == ("82092117.png", hashlib.sha256(image.read_bytes()).hexdigest())
    assert (page.width, page.height, page.image) == (754, 1000, str(image.resolve()))
    first = page.segments[1]
    assert (first.id, first.text, first.label) == ("1", "TO:", "question")
    assert first.box == [(102, 345), (129, 345), (129, 359), (102, 359)]
    assert [w.text for w in first.words] == ["TO:"]
    # each pair is listed on both entities in the file, once in the document, question → answer
    assert len(doc.links) == 9 and Link(key="1", value="14") in doc.links
    assert doc.segment("14").label == "answer"
    assert sum(len(d.links) for d in funsd_docs) == 1076


def test_link_order_follows_each_entity_list_and_keeps_self_and_repeated_links(tmp_path: Path) -> None:
    def entity(i: int, linking: list[list[int]]) -> dict[str, Any]:
        return {"box": [i, i, i + 5, i + 5], "text": f"t{i}", "label": "question", "words": [],
                "linking": linking, "id": i}

    # entity 2 lists 1 → 2 before 0 → 2, against first-seen order; 3 → 3 is a self-link; 4 → 5 twice
    form = [entity(0, [[0, 2]]), entity(1, [[1, 2]]), entity(2, [[1, 2], [0, 2]]),
            entity(3, [[3, 3], [3, 3]]), entity(4, [[4, 5], [4, 5]]), entity(5, [[4, 5], [4, 5]])]
    path = tmp_path / "form.json"
    path.write_text(json.dumps({"form": form}))
    doc = read_funsd(path)
    assert [(link.key, link.value) for link in doc.links] == [("1", "2"), ("0", "2"), ("3", "3"),
                                                            ("4", "5"), ("4", "5")]
    assert funsd_dict(doc) == {"form": form}


# -- XFUND and PPOCRLabel ------------------------------------------------------------------------

@pytest.mark.slow
def test_xfund_round_trip_is_identity(funsd_docs: list[Document], tmp_path: Path) -> None:
    data = xfund_dict(funsd_docs, lang="en", split="val")
    assert (data["lang"], data["split"], len(data["documents"])) == ("en", "val", 50)
    assert data["documents"][0]["img"]["width"] > 0 and data["documents"][0]["id"].startswith("funsd-")
    path = tmp_path / "en.val.json"
    path.write_text(json.dumps(data))
    assert _dicts(read_xfund(path)) == _dicts(funsd_docs)


@pytest.mark.slow
def test_ppocr_round_trip_is_identity_and_links_images(funsd_docs: list[Document], tmp_path: Path) -> None:
    label_txt = tmp_path / "test" / "Label.txt"
    write_ppocr_kie(funsd_docs, label_txt)
    lines = label_txt.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 50 and lines[0].startswith("test/funsd-")
    item = json.loads(lines[0].split("\t")[1])[0]
    assert {"transcription", "points", "label", "id", "linking", "difficult", "words"} <= item.keys()
    assert "key_cls" not in item
    image = tmp_path / "test" / "funsd-82092117.png"
    assert image.is_symlink() and image.resolve() == (TEST_SPLIT / "images/82092117.png").resolve()
    assert _dicts(read_ppocr_kie(label_txt)) == _dicts(funsd_docs)


def test_ppocr_accepts_key_cls_and_label_wins(tmp_path: Path) -> None:
    points = [[1, 2], [30, 2], [30, 9], [1, 9]]
    items = [{"transcription": "Name:", "points": points, "key_cls": "question", "id": 0, "linking": [[0, 1]]},
             {"transcription": "Ann", "points": points, "key_cls": "other", "label": "answer", "id": 1,
              "linking": [[0, 1]], "difficult": False}]
    label_txt = tmp_path / "imgs" / "Label.txt"
    label_txt.parent.mkdir()
    label_txt.write_text(f"imgs/scan_7.jpg\t{json.dumps(items)}\n")
    doc, = read_ppocr_kie(label_txt)
    assert doc.id == "ppocr-scan_7" and doc.pages[0].image == "imgs/scan_7.jpg"
    assert [s.label for s in doc.segments] == ["question", "answer"]
    assert doc.links == [Link(key="0", value="1")]


def test_non_integer_segment_ids_are_numbered_and_links_follow(tmp_path: Path) -> None:
    box = [(0.0, 0.0), (10.0, 0.0), (10.0, 5.0), (0.0, 5.0)]
    segments = [Segment(id=f"p1-s{i:04d}", box=box, text=f"t{i}", label="question", words=[Word("t", (0, 0, 1, 1))])
                for i in range(3)]
    doc = Document(id="doc-000001", source_name="scan.pdf", sha256="", created_at="",
                   pages=[Page(number=1, width=100, height=50, segments=segments)],
                   links=[Link(key="p1-s0002", value="p1-s0001")])
    path = tmp_path / "x.json"
    path.write_text(json.dumps(xfund_dict([doc])))
    back, = read_xfund(path)
    assert back.id == "doc-000001" and [s.id for s in back.segments] == ["0", "1", "2"]
    assert back.links == [Link(key="2", value="1")]


def test_multi_page_link_across_pages_cannot_be_written() -> None:
    box = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    pages = [Page(number=n, width=9, height=9, segments=[Segment(id=f"p{n}", box=box, text="x")]) for n in (1, 2)]
    doc = Document(id="doc-000002", source_name="a.pdf", sha256="", created_at="", pages=pages,
                   links=[Link(key="p1", value="p2")])
    with pytest.raises(FormatError, match="joins two pages"):
        xfund_dict([doc])


# -- malformed input -----------------------------------------------------------------------------

GOOD = {"box": [1, 2, 3, 4], "text": "a", "label": "question", "words": [], "linking": [], "id": 0}


@pytest.mark.parametrize("data, message", [
    ({"forms": []}, "no 'form' list"),
    ({"form": [{k: v for k, v in GOOD.items() if k != "id"}]}, "has no id"),
    ({"form": [{**GOOD, "box": [1, 2, 3]}]}, "box must be 4 numbers"),
    ({"form": [{**GOOD, "words": [{"text": "a", "box": [1, 2, "x", 4]}]}]}, "box must be 4 numbers"),
    ({"form": [{**GOOD, "linking": [[0, 9]]}]}, "unknown id 9"),
    ({"form": [GOOD, {**GOOD, "id": 1, "linking": [[0, 2]]}, {**GOOD, "id": 2}]}, "does not involve entity 1"),
    ({"form": [GOOD, GOOD]}, "duplicate entity ids"),
])
def test_malformed_funsd_raises_format_error(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=message):
        read_funsd(path)


@pytest.mark.parametrize("line, message", [
    ("img.png [] no tab", "expected '<image path>"),
    ("img.png\t[{\"transcription\": \"a\"", "bad JSON"),
    ("img.png\t[{\"transcription\": \"a\", \"points\": [[1, 2], [3, 4]]}]", "points must be 4"),
    ("img.png\t[{\"points\": [[0, 0], [1, 0], [1, 1], [0, 1]]}]", "needs a transcription"),
])
def test_malformed_label_txt_raises_format_error(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "Label.txt"
    path.write_text(line + "\n")
    with pytest.raises(FormatError, match=message):
        read_ppocr_kie(path)


def test_malformed_xfund_and_missing_image_raise_format_error(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"lang": "en", "documents": [{"id": "en_train_0"}]}))
    with pytest.raises(FormatError, match="needs 'id' and 'document'"):
        read_xfund(path)
    annotation = tmp_path / "form.json"
    annotation.write_text(json.dumps({"form": [GOOD]}))
    with pytest.raises(FormatError, match="no image at"):
        read_funsd(annotation, tmp_path / "missing.png")


# -- command line --------------------------------------------------------------------------------

def _runner(root: Path) -> tuple[Path, Any]:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"paths": {"root": str(root)}}))

    def invoke(*args: str) -> Result:
        result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result
    return root / "data" / "paperloop.db", invoke


def _stored(database: Path, split: str = "test") -> list[dict[str, Any]]:
    store = Store(database)
    try:
        return _dicts(LabelStore(store).documents(split))
    finally:
        store.close()


@pytest.mark.slow
def test_cli_import_is_idempotent_and_export_round_trips(tmp_path: Path) -> None:
    database, invoke = _runner(tmp_path / "a")
    result = invoke("import", "funsd", str(TEST_SPLIT))
    assert "imported 50 funsd documents into test" in result.output
    documents = _stored(database)
    assert len(documents) == 50
    assert sum(len(d["pages"][0]["segments"]) for d in documents) == 2332

    invoke("import", "funsd", str(TEST_SPLIT))
    assert _stored(database) == documents
    assert _stored(database, "train") == []

    for fmt in ("funsd", "xfund", "ppocrlabel"):
        out = tmp_path / f"out-{fmt}"
        invoke("export", fmt, str(out))
        fresh, invoke_fresh = _runner(tmp_path / f"b-{fmt}")
        invoke_fresh("import", fmt, str(out))
        assert _stored(fresh) == documents, fmt
    exported = json.loads((tmp_path / "out-funsd/dataset/testing_data/annotations/82092117.json").read_text())
    assert exported == json.loads((TEST_SPLIT / "annotations/82092117.json").read_text())


def test_cli_import_needs_a_split_it_cannot_tell(tmp_path: Path) -> None:
    _, invoke = _runner(tmp_path / "a")
    folder = tmp_path / "somewhere"
    (folder / "annotations").mkdir(parents=True)
    (folder / "annotations" / "x.json").write_text(json.dumps({"form": [GOOD]}))
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "a/config.yaml"), "import", "funsd", str(folder)])
    assert result.exit_code == 1 and "pass --split" in result.output
    result = invoke("import", "funsd", str(folder), "--split", "holdout")
    assert "imported 1 funsd documents into holdout" in result.output
