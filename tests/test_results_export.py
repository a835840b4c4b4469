"""``paperloop results``: fields and key-value pairs of the processed documents as CSV, reviewed ones as saved."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from service.cli import cli
from service.config import PaperloopConfig
from service.document import Document
from service.fields.extract import fill_fields
from service.results import result_json, write_json_atomic
from service.results_export import spreadsheet_safe
from service.review import ReviewService, add_link, update_segment
from service.store import Store

from test_review import form_segments, make_document, segment


@pytest.fixture
def receipts(tmp_path: Path, models_dir: Path) -> PaperloopConfig:
    return PaperloopConfig.model_validate({
        "paths": {"root": str(tmp_path), "models": str(models_dir)},
        "kie": {"labels": ["question", "answer", "date", "other"], "other_label": "other"},
        "fields": {"date_order": "DMY", "fields": [{"name": "date", "type": "date"}]},
    })


def _processed(cfg: PaperloopConfig, store: Store, name: str, segments: list) -> Document:
    """A document stored and written out as the pipeline does (fields read from its labels)."""
    document = make_document(cfg, store, name, [segments])
    fill_fields(document, cfg.fields)
    state = store.jobs()[-1].state
    write_json_atomic(cfg.paths.resolve("output") / f"{document.id}.json", result_json(document, state, None, None))
    return document


def _csv(cfg: PaperloopConfig, *args: str) -> list[list[str]]:
    config = cfg.paths.resolve("data") / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    result = CliRunner().invoke(cli, ["--config", str(config), "results", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return list(csv.reader(io.StringIO(result.stdout)))


def test_results_give_each_documents_fields_and_a_reviewed_document_as_saved(receipts: PaperloopConfig) -> None:
    store = Store(receipts.paths.database)
    confident = _processed(receipts, store, "a.png", [segment(1, 0, (20, 20, 200, 50), "03/12/98", 0.99, "date", 0.99)])
    doubtful = _processed(receipts, store, "b.png", form_segments())
    service = ReviewService(receipts, store)
    draft, revision = service.working_copy(doubtful.id)
    update_segment(draft, "p1-s0002", text="12/10/98", label="date")
    service.save(doubtful.id, draft, "alice", revision)

    rows = _csv(receipts)
    assert rows[0] == ["document", "source_name", "state", "date", "date_confidence"]
    assert rows[1][:4] == [confident.id, "a.png", store.jobs()[0].state, "1998-12-03"]
    assert rows[2] == [doubtful.id, "b.png", "reviewed", "1998-10-12", "1.0"]
    assert _csv(receipts, "--state", "reviewed")[1:] == [rows[2]]
    store.close()


def test_pairs_come_one_per_row_and_no_cell_is_a_formula(cfg: PaperloopConfig) -> None:
    store = Store(cfg.paths.database)
    made = _processed(cfg, store, "form.png", [
        segment(1, 0, (20, 20, 120, 50), "Total:", 0.99, "question", 0.99),
        segment(1, 1, (140, 20, 300, 50), '=HYPERLINK("http://x","y")', 0.99, "answer", 0.99),
    ])
    service = ReviewService(cfg, store)
    draft, revision = service.working_copy(made.id)
    add_link(draft, "p1-s0000", "p1-s0001")
    service.save(made.id, draft, "alice", revision)

    rows = _csv(cfg)  # no field schema: the pairs table
    assert rows[0][:5] == ["document", "source_name", "state", "key", "value"]
    assert rows[1][:5] == [made.id, "form.png", "reviewed", "Total:", '\'=HYPERLINK("http://x","y")']
    store.close()


def test_spreadsheet_safe_keeps_numbers_and_defuses_formulas() -> None:
    assert spreadsheet_safe("-12.50") == "-12.50" and spreadsheet_safe("+3") == "+3"
    assert spreadsheet_safe("-1+1") == "'-1+1" and spreadsheet_safe("@SUM(A1)") == "'@SUM(A1)"
    assert spreadsheet_safe("\tx") == "'\tx" and spreadsheet_safe(None) == "" and spreadsheet_safe("TOTAL") == "TOTAL"


def test_an_unknown_state_is_refused(cfg: PaperloopConfig) -> None:
    config = cfg.paths.resolve("data") / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    result = CliRunner().invoke(cli, ["--config", str(config), "results", "--state", "failed"])
    assert result.exit_code == 2 and "failed" in result.output
