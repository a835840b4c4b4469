"""The review app's logic through Streamlit's AppTest (no browser): login, queue, editing, saving."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from service.config import PaperloopConfig
from service.labels import LabelStore
from service.review import PASSWORD_ENV, PASSWORD_HASH_ENV, ReviewService, hash_password
from service.store import Store

from conftest import PROJECT_ROOT
from test_review import form_segments, make_document, segment

APP = str(PROJECT_ROOT / "review_app" / "app.py")


@pytest.fixture
def app_env(cfg: PaperloopConfig, monkeypatch: pytest.MonkeyPatch) -> PaperloopConfig:
    """The app reads this test's config; no password unless a test sets one."""
    path = cfg.paths.resolve("data") / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    monkeypatch.setenv("PAPERLOOP_CONFIG", str(path))
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_HASH_ENV, raising=False)
    return cfg


def _login(name: str = "alice", password: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    at.text_input(key="login_name").set_value(name)
    if password is not None:
        at.text_input(key="login_password").set_value(password)
    at.button[0].click().run()
    assert not at.exception
    return at


def _widget(elements, label: str):
    found = [e for e in elements if e.label == label]
    assert found, f"no widget labelled {label!r}"
    return found[0]


def test_login_checks_the_password(app_env: PaperloopConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_HASH_ENV, hash_password("open sesame"))
    at = _login("alice", "wrong")
    assert "reviewer" not in at.session_state
    assert any("Wrong name or password" in e.value for e in at.error)
    at.text_input(key="login_password").set_value("open sesame")
    at.button[0].click().run()
    assert at.session_state["reviewer"] == "alice"
    assert any(m.value == "## Review queue" for m in at.markdown)


def test_edit_text_label_and_link_then_save(app_env: PaperloopConfig) -> None:
    cfg = app_env
    store = Store(cfg.paths.database)
    made = make_document(cfg, store, "form.png", [form_segments()])
    at = _login("alice")
    assert at.metric[0].value == "1"  # waiting
    at.button(key="queue_next").click().run()
    assert at.session_state["nav"] == "Document" and at.session_state["doc_id"] == made.id
    assert ReviewService(cfg, store).claimed_by(made.id) == "alice"

    _widget(at.selectbox, "Selected box").set_value("p1-s0002").run()
    _widget(at.text_input, "Text").set_value("12/10/98").run()
    _widget(at.selectbox, "Label").set_value("answer").run()
    _widget(at.selectbox, "Selected box").set_value("p1-s0001").run()
    _widget(at.selectbox, "Label").set_value("question").run()
    _widget(at.selectbox, "Key").set_value("p1-s0001")
    _widget(at.selectbox, "Value").set_value("p1-s0002")
    _widget(at.button, "Add link").click().run()
    assert not at.exception and at.session_state["dirty"]
    assert "1 page(s)" in " ".join(m.value for m in at.markdown)
    at.button(key="doc_save").click().run()
    assert not at.exception
    assert any("Saved" in s.value for s in at.success)

    gold = LabelStore(store).get(made.id)
    assert gold.segment("p1-s0002").text == "12/10/98" and gold.segment("p1-s0002").label == "answer"
    assert [(link.key, link.value) for link in gold.links] == [("p1-s0001", "p1-s0002")]
    rows = sqlite3.connect(cfg.paths.database).execute(
        "SELECT reviewer, action, target, before, after FROM review_audit ORDER BY id").fetchall()
    assert sorted((r[1], r[2]) for r in rows) == [("add_link", "p1-s0001->p1-s0002"), ("label", "p1-s0001"),
                                                  ("label", "p1-s0002"), ("text", "p1-s0002")]
    assert {r[0] for r in rows} == {"alice"}
    text = next(r for r in rows if r[1] == "text")
    assert json.loads(text[3]) == "12/1O/98" and json.loads(text[4]) == "12/10/98"


def test_delete_a_box_and_accept_opens_the_next_document(app_env: PaperloopConfig) -> None:
    cfg = app_env
    store = Store(cfg.paths.database)
    first = make_document(cfg, store, "first.png", [[segment(1, 0, (10, 10, 200, 40), "x", 0.2),
                                                     segment(1, 1, (10, 50, 200, 80), "y", 0.9)]])
    second = make_document(cfg, store, "second.png", [form_segments(), form_segments(page=2)])
    at = _login("alice")
    at.button(key="queue_next").click().run()
    assert at.session_state["doc_id"] == first.id  # the most uncertain first
    _widget(at.selectbox, "Selected box").set_value("p1-s0001").run()
    _widget(at.button, "Delete box").click().run()
    at.button(key="doc_accept").click().run()
    assert not at.exception
    assert [s.id for s in LabelStore(store).get(first.id).segments] == ["p1-s0000"]
    assert at.session_state["doc_id"] == second.id
    # multi-page: page by page
    assert "Page <b>1</b> of 2" in " ".join(m.value for m in at.markdown)
    at.button(key="doc_next_page").click().run()
    assert at.session_state["page_no"] == 2
    assert "Page <b>2</b> of 2" in " ".join(m.value for m in at.markdown)
    ids = _widget(at.selectbox, "Selected box").options
    assert any("p2" not in o and "#1" in o for o in ids)  # options are this page's boxes


def test_skip_with_unsaved_changes_asks_first_and_claims_keep_reviewers_apart(app_env: PaperloopConfig) -> None:
    cfg = app_env
    store = Store(cfg.paths.database)
    first = make_document(cfg, store, "first.png", [[segment(1, 0, (10, 10, 200, 40), "x", 0.2)]])
    second = make_document(cfg, store, "second.png", [form_segments()])
    ReviewService(cfg, store).claim(first.id, "bob")  # bob is on the most informative one
    at = _login("alice")
    at.button(key="queue_next").click().run()
    assert at.session_state["doc_id"] == second.id
    _widget(at.selectbox, "Selected box").set_value("p1-s0000").run()
    _widget(at.text_input, "Text").set_value("INVOICE!").run()
    at.button(key="doc_skip").click().run()
    assert at.session_state["doc_id"] == second.id and any("unsaved" in w.value for w in at.warning)
    at.button(key="doc_skip").click().run()
    assert at.session_state.get("doc_id") is None  # bob holds the other one: nothing left for alice
    assert ReviewService(cfg, store).claimed_by(second.id) is None
    assert not LabelStore(store).exists(second.id)


def test_data_and_models_pages(app_env: PaperloopConfig, tmp_path: Path) -> None:
    cfg = app_env
    store = Store(cfg.paths.database)
    made = make_document(cfg, store, "form.png", [form_segments()])
    service = ReviewService(cfg, store)
    service.claim(made.id, "alice")
    draft, revision = service.working_copy(made.id)
    draft.segments[1].label = "question"
    split = service.save(made.id, draft, "alice", revision).split
    at = _login("alice")
    at.radio(key="nav").set_value("Data").run()
    assert not at.exception
    assert _widget(at.metric, f"{split} documents").value == "1"
    at.text_input(key="export_folder").set_value(str(tmp_path / "out"))
    submit = [b for b in at.button if b.label == "Export"][0]
    submit.click().run()
    assert not at.exception
    assert (tmp_path / "out" / split / "det" / "Label.txt").is_file()
    assert (tmp_path / "out" / split / "rec" / "rec_gt.txt").is_file()
    at.radio(key="nav").set_value("Models").run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "det · in service: `base`" in text and "rec · in service: `base`" in text
    assert any("No version has an evaluation Hmean yet" in i.value for i in at.info)
    assert any("The learning job has not run yet" in i.value for i in at.info)
    with service.store.transaction() as db:
        db["learning_runs"].insert({"task": "rec", "started_at": "2026-11-24T01:00:00.000+00:00",
                                    "finished_at": "2026-11-24T01:05:00.000+00:00", "status": "rejected",
                                    "reason": "line_accuracy 0.40 vs 0.47", "candidate": "v2", "current": "base",
                                    "new_documents": 21, "metrics": "{}"})
    at.run()
    runs = at.dataframe[-1].value
    assert list(runs["Decision"]) == ["rejected"] and list(runs["Why"]) == ["line_accuracy 0.40 vs 0.47"]


def test_review_command_refuses_an_open_address_without_a_password(app_env: PaperloopConfig) -> None:
    from click.testing import CliRunner

    from service.cli import cli

    config = app_env.paths.resolve("data") / "config.yaml"
    result = CliRunner().invoke(cli, ["--config", str(config), "review", "--address", "0.0.0.0", "--port", "8999"])
    assert result.exit_code == 2
    assert "refusing to start the review app on 0.0.0.0 without a password" in result.output
    hashed = CliRunner().invoke(cli, ["--config", str(config), "review", "--hash-password"],
                                input="pa55word\npa55word\n")
    assert hashed.exit_code == 0
    encoded = hashed.output.strip().splitlines()[-1]
    assert encoded.startswith("scrypt$") and "pa55word" not in encoded
    from service.review import verify_password

    assert verify_password("pa55word", encoded)
