"""End to end in a real browser: the service reads a FUNSD page, a reviewer fixes it in the review app.

Headless Chromium is Debian's ``chromium`` package, driven by Playwright through
``executable_path`` (no browser download). The review app runs as ``paperloop review`` in a child
process on a free loopback port, with a reviewer account made by ``paperloop review users add``. A
screenshot of the document page is saved under ``tests/artifacts/``.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from service.config import PaperloopConfig
from service.daemon import Daemon
from service.jobs import JobRunner
from service.ocr import OcrEngine
from service.pipeline import DocumentPipeline
from service.store import NEEDS_REVIEW, Store

from conftest import PROJECT_ROOT, wait_for
from review_browser_kit import answers, free_port, stop

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = PROJECT_ROOT / "tests" / "artifacts"
PASSWORD = "correct horse battery staple"
EVIL = "<img src=x onerror=alert(1)><b>x</b>"  # OCR text that must be shown as text, never as markup

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="Debian's chromium is not installed")]


@pytest.fixture
def processed(cfg: PaperloopConfig, ocr_engine: OcrEngine, funsd_page_path: Path) -> Iterator[PaperloopConfig]:
    """The service on a temporary folder, with one FUNSD page dropped in and read (then stopped)."""
    cfg.review.audit_percent = 100  # in the queue whatever the OCR scores are
    store = Store(cfg.paths.database)
    daemon = Daemon(cfg, store, JobRunner(cfg, store, DocumentPipeline(cfg, ocr_engine)))
    thread = threading.Thread(target=daemon.run, kwargs={"install_signal_handlers": False}, daemon=True)
    thread.start()
    try:
        shutil.copy(funsd_page_path, cfg.paths.resolve("inbox") / "form.png")
        wait_for(lambda: store.db.execute("SELECT COUNT(*) FROM documents").fetchone()[0] == 1, 120,
                  "the page was processed")
    finally:
        daemon.stop_event.set()
        thread.join(timeout=60)
    assert store.db.execute("SELECT state FROM documents").fetchone()[0] == NEEDS_REVIEW
    store.close()
    yield cfg


@pytest.fixture
def review_app(processed: PaperloopConfig) -> Iterator[str]:
    """``paperloop review`` in a child process; yields its URL."""
    cfg = processed
    config = cfg.paths.resolve("data") / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPERLOOP_REVIEW_PASSWORD")}
    env.pop("PAPERLOOP_CONFIG", None)
    subprocess.run([sys.executable, "-m", "service", "--config", str(config), "review", "users", "add", "alice",
                    "--password-stdin"], input=PASSWORD + "\n", text=True, env=env, check=True, cwd=cfg.paths.root)
    log = open(cfg.paths.resolve("data") / "review-app.log", "wb")
    child = subprocess.Popen([sys.executable, "-m", "service", "--config", str(config), "review", "--port", str(port)],
                             cwd=cfg.paths.root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(lambda: child.poll() is not None or answers(url + "_stcore/health"), 60, "the review app started")
        assert child.poll() is None, (cfg.paths.resolve("data") / "review-app.log").read_text()
        yield url
    finally:
        stop(child)
        log.close()


BEFOREUNLOAD = """() => {
    const event = new Event("beforeunload", {cancelable: true});
    window.dispatchEvent(event);
    return event.defaultPrevented;
}"""


def test_reviewer_fixes_a_document_in_the_browser(processed: PaperloopConfig, review_app: str) -> None:
    cfg = processed
    database = cfg.paths.database
    first, second = (r for r in sqlite3.connect(database).execute(
        "SELECT id, text FROM segments WHERE page = 1 ORDER BY position LIMIT 2").fetchall())
    with sqlite3.connect(database) as db:  # the OCR read markup
        db.execute("UPDATE segments SET text = ? WHERE id = ?", [EVIL, second[0]])
    second = (second[0], EVIL)
    dialogs: list[str] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1400})
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(int(os.environ.get("PAPERLOOP_UI_TIMEOUT_MS", "30000")))
            page.on("dialog", lambda dialog: (dialogs.append(dialog.type), dialog.dismiss()))
            page.goto(review_app)
            page.get_by_label("Your name").fill("alice")
            page.get_by_role("textbox", name="Password").fill("not it")
            page.get_by_role("button", name="Log in").click()
            page.get_by_text("Wrong name or password").wait_for()
            page.get_by_role("textbox", name="Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.get_by_text("Review queue").first.wait_for()
            # a reload keeps the session (its token is in the URL; only its hash is stored)
            page.wait_for_url("**session=*")
            page.reload()
            page.get_by_text("Review queue").first.wait_for()
            assert page.get_by_role("button", name="Log in").count() == 0
            page.get_by_role("button", name="Start with the next document").click()
            page.frame_locator("iframe[title*='box_editor']").locator("#svg g.seg").first.wait_for()

            # select the first box on the page image; correct its text (Enter edits) and label (hotkey 2)
            editor = page.frame_locator("iframe[title*='box_editor']")
            editor.locator(f"g[data-id='{first[0]}'] rect.body").click()
            text = editor.get_by_label("Segment text")
            playwright_api.expect(text).to_have_value(first[1])
            page.keyboard.press("Enter")
            page.keyboard.press("Control+A")
            page.keyboard.type("Corrected by alice")
            page.keyboard.press("Enter")
            editor.get_by_text("unsaved changes").wait_for()
            # leaving the tab now would lose edits: the browser asks first
            page.wait_for_function("() => window.__paperloopDirty === true")
            assert page.evaluate(BEFOREUNLOAD)
            page.keyboard.press("2")  # the schema's second label: question

            # draw a box for text the model missed: drag on empty space in the image
            svg = editor.locator("#svg")
            box = svg.bounding_box()
            start = (box["x"] + box["width"] * 0.05, box["y"] + box["height"] * 0.965)
            page.mouse.move(*start)
            page.mouse.down()
            page.mouse.move(start[0] + 60, start[1] + 12, steps=5)
            page.mouse.move(start[0] + 120, start[1] + 20, steps=5)
            page.mouse.up()
            editor.locator("g[data-id='p1-r0000']").wait_for()

            # select the first box again and resize it: drag its bottom-right handle
            editor.locator(f"g[data-id='{first[0]}'] rect.body").click()
            playwright_api.expect(text).to_have_value("Corrected by alice")
            handle = editor.locator("rect.handle[data-handle='se']").bounding_box()
            page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
            page.mouse.down()
            page.mouse.move(handle["x"] + 30, handle["y"] + 8, steps=5)
            page.mouse.up()

            # link the first box (key) to the second (value): L, then click the key and the value
            page.keyboard.press("l")
            editor.locator(f"g[data-id='{first[0]}'] rect.body").click()
            editor.locator(f"g[data-id='{second[0]}'] rect.body").click(force=True)
            editor.locator("#pairs .row", has_text=EVIL[:20]).wait_for()  # shown as text
            assert page.locator("img[src='x']").count() == 0 and editor.locator("img[src='x']").count() == 0
            time.sleep(1.0)  # let the image settle before the screenshot
            page.screenshot(path=str(ARTIFACTS / "review-document-page.png"), full_page=True)
            page.keyboard.press("Control+S")
            editor.locator("#status", has_text="Saved doc-").wait_for()
            page.wait_for_function("() => window.__paperloopDirty === false")
            assert not page.evaluate(BEFOREUNLOAD)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "review-failure.png"), full_page=True)
            raise
        finally:
            browser.close()

    assert "alert" not in dialogs
    db = sqlite3.connect(database)
    gold = json.loads(db.execute("SELECT document FROM gold_documents").fetchone()[0])
    segments = {s["id"]: s for p in gold["pages"] for s in p["segments"]}
    assert segments[first[0]]["text"] == "Corrected by alice" and segments[first[0]]["label"] == "question"
    assert "p1-r0000" in segments
    assert [(link["key"], link["value"]) for link in gold["links"]] == [(first[0], second[0])]
    rows = db.execute("SELECT reviewer, action, target, before, after, model_versions FROM review_audit").fetchall()
    actions = {(r[1], r[2]) for r in rows}
    assert {("text", first[0]), ("label", first[0]), ("add_segment", "p1-r0000"),
            ("box", first[0]), ("add_link", f"{first[0]}->{second[0]}")} <= actions
    assert {r[0] for r in rows} == {"alice"}  # the account that logged in
    text_row = next(r for r in rows if r[1] == "text")
    assert text_row[0] == "alice" and json.loads(text_row[3]) == first[1]
    assert json.loads(text_row[5]) == {"det": "base", "rec": "base"}
