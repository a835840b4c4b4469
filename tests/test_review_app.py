"""The review app's logic through Streamlit's AppTest (no browser): login, queue, editing, saving."""

from __future__ import annotations

import json
import uuid
import re
import sqlite3
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image
from streamlit.testing.v1 import AppTest

from review_app.box_editor import EDITOR_KEY
from service.config import PaperloopConfig
from service.labels import LabelStore
from service.document import Link
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


def _send(at: AppTest, action: str, **extra) -> AppTest:
    """What the page editor sends (review_app/box_editor): one event, then the app runs."""
    at.session_state[EDITOR_KEY] = {"uid": uuid.uuid4().hex, "action": action, "doc": at.session_state["doc_id"],
                                    **extra}
    at.run()
    assert not at.exception
    return at


def _accounts(cfg: PaperloopConfig):
    """The reviewer accounts of the test's database."""
    from service.review import ReviewerAccounts

    return ReviewerAccounts(Store(cfg.paths.database), cfg.review)


def test_only_accounts_log_in_and_the_audit_name_is_the_account(app_env: PaperloopConfig,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = app_env
    monkeypatch.setenv(PASSWORD_HASH_ENV, hash_password("open sesame"))  # the legacy shared password
    store = Store(cfg.paths.database)
    made = make_document(cfg, store, "form.png", [form_segments()])
    _accounts(cfg).add("alice", "alice's own")
    at = _login("mallory", "open sesame")  # a self-declared name, even with the shared password
    assert "reviewer" not in at.session_state
    assert any("Wrong name or password" in e.value for e in at.error)
    at = _login("alice", "wrong")
    assert "reviewer" not in at.session_state
    at.text_input(key="login_password").set_value("alice's own")
    at.button[0].click().run()
    assert at.session_state["reviewer"] == "alice"
    assert any(m.value == "## Review queue" for m in at.markdown)
    at.button(key="queue_next").click().run()
    _send(at, "save", diff={"segments": [{"id": "p1-s0002", "text": "12/10/98"}]})
    rows = sqlite3.connect(cfg.paths.database).execute("SELECT DISTINCT reviewer FROM review_audit").fetchall()
    assert rows == [("alice",)] and ReviewService(cfg, store).item(made.id).reviewed_by == "alice"


def test_repeated_failures_lock_the_account(app_env: PaperloopConfig) -> None:
    _accounts(app_env).add("alice", "alice's own")
    at = _login("alice", "guess 0")
    for n in range(1, app_env.review.login_max_failures):
        at.text_input(key="login_password").set_value(f"guess {n}")
        at.button[0].click().run()
    at.text_input(key="login_password").set_value("alice's own")
    at.button[0].click().run()
    assert "reviewer" not in at.session_state
    assert any("locked" in e.value for e in at.error)


def test_a_session_survives_a_reload_expires_when_idle_and_ends_at_logout(app_env: PaperloopConfig) -> None:
    cfg = app_env
    _accounts(cfg).add("alice", "alice's own")
    at = _login("alice", "alice's own")
    token = at.query_params.get("session")
    assert token and at.session_state["reviewer"] == "alice"

    def reload() -> AppTest:  # a new browser session on the same URL
        again = AppTest.from_file(APP, default_timeout=60)
        again.query_params["session"] = token
        return again.run()

    again = reload()
    assert not again.exception and again.session_state["reviewer"] == "alice"
    assert any(m.value == "## Review queue" for m in again.markdown)
    again.button(key="logout").click().run()
    assert "reviewer" not in again.session_state and not again.query_params.get("session")
    assert "reviewer" not in reload().session_state  # logged out: the token is gone

    at = _login("alice", "alice's own")
    token = at.query_params["session"]
    sqlite3.connect(cfg.paths.database).execute(
        "UPDATE review_sessions SET expires_at = '2000-01-01T00:00:00.000+00:00'").connection.commit()
    at.run()  # idle too long: back to the login form
    assert "reviewer" not in at.session_state
    assert any("expired" in w.value for w in at.warning)
    assert "reviewer" not in reload().session_state


def test_text_from_files_and_names_from_reviewers_are_shown_as_text(app_env: PaperloopConfig) -> None:
    cfg = app_env
    store = Store(cfg.paths.database)
    evil = "<img src=x onerror=alert(1)><b>x</b>"
    segments = form_segments()
    segments[2].text = evil
    made = make_document(cfg, store, "form.png", [segments], links=[Link("p1-s0001", "p1-s0002")])
    service = ReviewService(cfg, store)
    service.claim(made.id, "<img src=y onerror=alert(2)>")
    draft, revision = service.working_copy(made.id)
    service.save(made.id, draft, "<img src=y onerror=alert(2)>", revision, accept=True)
    at = _login("alice")
    at.radio(key="nav").set_value("Queue").run()
    at.button(key="queue_again_open").click().run()
    assert not at.exception and at.session_state["doc_id"] == made.id
    shown = [m.value for m in at.markdown if "img" in m.value]
    assert shown  # the "reviewed by" line (the editor shows text only as text nodes)
    for value in shown:  # every < escaped: neither Markdown nor HTML makes an element of it
        assert not re.search(r"(?<!\\)<(img|b>)", value), value


def test_edit_text_label_and_link_then_save(app_env: PaperloopConfig) -> None:
    cfg = app_env
    store = Store(cfg.paths.database)
    made = make_document(cfg, store, "form.png", [form_segments()])
    at = _login("alice")
    assert at.metric[0].value == "1"  # waiting
    at.button(key="queue_next").click().run()
    assert at.session_state["nav"] == "Document" and at.session_state["doc_id"] == made.id
    assert ReviewService(cfg, store).claimed_by(made.id) == "alice"

    _send(at, "save", diff={"segments": [{"id": "p1-s0002", "text": "12/10/98", "label": "answer"},
                                         {"id": "p1-s0001", "label": "question"}],
                            "deleted": [], "links": [["p1-s0001", "p1-s0002"]]})
    assert "1 page(s)" in " ".join(m.value for m in at.markdown)
    assert "Saved" in at.session_state["editor_status"]["message"]

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
                                                     segment(1, 1, (10, 50, 200, 80), "y", 0.5)]])
    second = make_document(cfg, store, "second.png", [form_segments(low=False),
                                                      [segment(2, 0, (20, 20, 300, 50), "12/1O/98", 0.55)]])
    at = _login("alice")
    at.button(key="queue_next").click().run()
    assert at.session_state["doc_id"] == first.id  # the most uncertain first (in total: 2.0 against 1.8)
    _send(at, "accept", diff={"deleted": ["p1-s0001"]})
    assert [s.id for s in LabelStore(store).get(first.id).segments] == ["p1-s0000"]
    assert at.session_state["doc_id"] == second.id
    assert "2 page(s)" in " ".join(m.value for m in at.markdown)
    _send(at, "save", diff={"segments": [{"id": "p2-r0000", "page": 2, "box": [10, 300, 90, 330], "text": "",
                                          "label": None, "words": []}]})
    assert [s.id for s in LabelStore(store).get(second.id).pages[1].segments][-1] == "p2-r0000"
    _send(at, "save", diff={"segments": [{"id": "p1-s0000", "label": "not in the schema"}]})
    assert at.session_state["editor_status"]["kind"] == "error"  # refused; the editor keeps the edits


def test_skip_releases_the_document_and_claims_keep_reviewers_apart(app_env: PaperloopConfig) -> None:
    cfg = app_env
    store = Store(cfg.paths.database)
    first = make_document(cfg, store, "first.png", [[segment(1, 0, (10, 10, 200, 40), "x", 0.2)]])
    second = make_document(cfg, store, "second.png", [form_segments()])
    ReviewService(cfg, store).claim(first.id, "bob")  # bob is on the most informative one
    at = _login("alice")
    at.button(key="queue_next").click().run()
    assert at.session_state["doc_id"] == second.id
    _send(at, "skip")  # the editor asked about unsaved edits first (the browser test covers that)
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
    assert not [t for t in at.text_input if t.key == "export_folder"]  # no server path to type
    exports = cfg.paths.resolve("data") / "exports"
    exports.mkdir(parents=True)
    (exports / "secret.txt").write_text("not for download")
    submit = [b for b in at.button if b.label == "Export"][0]
    submit.click().run()
    assert not at.exception
    folders = [p for p in exports.iterdir() if p.is_dir()]
    assert len(folders) == 1
    out = folders[0]
    assert (out / split / "det" / "Label.txt").is_file() and (out / split / "rec" / "rec_gt.txt").is_file()
    archive = exports / f"{out.name}.zip"
    made_at = archive.stat().st_mtime_ns
    with zipfile.ZipFile(archive) as z:
        assert not any("secret" in n for n in z.namelist()) and f"{out.name}/{split}/det/Label.txt" in z.namelist()
    at.run()
    at.run()
    assert archive.stat().st_mtime_ns == made_at  # zipped once, when exported; not at every run
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
    assert any("No active-learning measurement yet" in i.value for i in at.info)
    results = cfg.paths.root / cfg.review.active_learning_results
    results.mkdir(parents=True, exist_ok=True)
    (results / "active.json").write_text(json.dumps(
        {"date": "2026-11-27T18:00:00+00:00", "line": "labels to reach 95% of full data: uncertainty 29%"}))
    Image.new("RGB", (40, 20), "white").save(results / "active.png")
    at.run()
    assert not at.exception
    assert any("uncertainty 29%" in m.value for m in at.markdown)
    assert len(at.get("image")) == 1


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


def test_review_users_are_managed_from_the_command_line(app_env: PaperloopConfig) -> None:
    from click.testing import CliRunner

    from service.cli import cli

    config = str(app_env.paths.resolve("data") / "config.yaml")
    run = lambda *args, input=None: CliRunner().invoke(cli, ["--config", config, "review", "users", *args],  # noqa: E731
                                                       input=input)
    added = run("add", "alice", input="s3cret pass\ns3cret pass\n")
    assert added.exit_code == 0, added.output
    assert run("add", "bob", "--password-stdin", input="bobs pass\n").exit_code == 0
    assert run("add", "bob", "--password-stdin", input="x\n").exit_code != 0  # exists
    listed = run("list")
    assert listed.exit_code == 0 and "alice" in listed.output and "bob" in listed.output
    assert "s3cret" not in listed.output
    accounts = _accounts(app_env)
    assert accounts.authenticate("alice", "s3cret pass") == "alice"
    assert run("passwd", "alice", "--password-stdin", input="another one\n").exit_code == 0
    assert accounts.authenticate("alice", "another one") == "alice"
    assert run("remove", "bob").exit_code == 0
    assert run("remove", "nobody").exit_code != 0
    assert "removed" in run("list").output
    # with an account, the app may listen beyond loopback (every reviewer has a password)
    assert accounts.has_accounts()


def test_the_label_chart_names_every_label_and_queue_columns_fit() -> None:
    import pandas as pd

    from review_app.views.data import _label_chart
    from review_app.views.queue import QUEUE_COLUMNS, _uncertainty_column

    labels = ["header", "question", "answer", "other", "(none)"]
    table = pd.DataFrame([{"Label": label, "train": 5 + i, "holdout": i, "test": 0} for i, label in enumerate(labels)])
    spec = _label_chart(table).to_dict()
    assert spec["encoding"]["y"]["axis"]["labelOverlap"] is False and spec["encoding"]["y"]["sort"] == labels
    assert spec["height"] >= 16 * len(labels) * 2  # a row per label and split, never thinned out
    columns = [*QUEUE_COLUMNS.values(), _uncertainty_column(PaperloopConfig(), 1.0)]
    assert sum(c["width"] for c in columns) <= 1000  # the main column at 1280 px wide


def test_the_queue_scale_fits_summed_uncertainties() -> None:
    """With ``review.uncertainty_aggregate: sum`` a document's uncertainty is a total, not at most 1."""
    from types import SimpleNamespace

    from review_app.views.queue import _uncertainty_column, _uncertainty_scale

    assert _uncertainty_scale([SimpleNamespace(uncertainty=0.4)]) == 1.0
    assert _uncertainty_scale([SimpleNamespace(uncertainty=0.4), SimpleNamespace(uncertainty=17.2)]) == 18.0
    cfg = PaperloopConfig.model_validate({"review": {"uncertainty_aggregate": "sum"}})
    column = _uncertainty_column(cfg, 18.0)
    assert column["type_config"]["max_value"] == 18.0 and "Total" in column["help"]
