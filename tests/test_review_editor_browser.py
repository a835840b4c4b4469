"""The page editor in a real browser (issue 13): each of the issue's defects 1-7, and the new interactions.

One review app serves the module; each test opens its own document (forms rendered at test time and
read by the base models, see ``review_browser_kit``) in a fresh browser context. Headless Chromium is
Debian's ``chromium``, driven by Playwright.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from service.config import PaperloopConfig
from service.ocr import OcrEngine
from service.registry import ModelRegistry
from service.store import Store

from conftest import PROJECT_ROOT, render_form_page
from review_browser_kit import (
    CHROMIUM, CHROMIUM_ARGS, EDITOR, editor, editor_ready, log_in, open_document, read_document, review_app,
    segment_centre,
)

ARTIFACTS = PROJECT_ROOT / "tests" / "artifacts"
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="Debian's chromium is not installed")]
BEFOREUNLOAD = """() => { const event = new Event("beforeunload", {cancelable: true});
    window.dispatchEvent(event); return event.defaultPrevented; }"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[dict[str, Any]]:
    """The app over six documents: five one-page forms and one two-page form."""
    root = tmp_path_factory.mktemp("review-editor")
    cfg = PaperloopConfig.model_validate({"paths": {"root": str(root), "models": str(models_dir)},
                                          "review": {"audit_percent": 100}})
    for folder in ("inbox", "archive", "quarantine", "output", "data"):
        cfg.paths.resolve(folder).mkdir(parents=True, exist_ok=True)
    images = [render_form_page(root / f"form-{i}.png", seed=i) for i in range(7)]
    engine = OcrEngine(ModelRegistry(models_dir), cfg.ocr)
    store = Store(cfg.paths.database)
    docs = {name: read_document(cfg, store, engine, f"{name}.png", [images[i]]).id
            for i, name in enumerate(("typing", "links", "uncertain", "zoom", "reread"))}
    docs["multi"] = read_document(cfg, store, engine, "multi.pdf", images[5:7]).id
    store.close()
    with review_app(cfg) as url:
        yield {"cfg": cfg, "url": url, "docs": docs}


@pytest.fixture
def page(site: dict[str, Any]) -> Iterator[Any]:
    """A logged-in page in a fresh browser (viewport 1600 x 1000); dialogs are recorded and accepted
    unless a test says otherwise; a screenshot is kept when a test fails."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                       args=CHROMIUM_ARGS, viewport={"width": 1600, "height": 1000})
        tab = browser.pages[0] if browser.pages else browser.new_page()
        tab.set_default_timeout(30000)
        tab.dialogs, tab.answer = [], True
        tab.on("dialog", lambda d: (tab.dialogs.append((d.type, d.message)),
                                    d.accept() if tab.answer else d.dismiss()))
        log_in(tab, site["url"])
        try:
            yield tab
        except Exception:
            tab.screenshot(path=str(ARTIFACTS / "review-editor-failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def _gold(site: dict[str, Any], document_id: str) -> dict[str, Any] | None:
    row = sqlite3.connect(site["cfg"].paths.database).execute(
        "SELECT document FROM gold_documents WHERE id = ?", [document_id]).fetchone()
    return json.loads(row[0]) if row else None


def _audit(site: dict[str, Any], document_id: str) -> list[tuple[str, str]]:
    return [tuple(r) for r in sqlite3.connect(site["cfg"].paths.database).execute(
        "SELECT action, target FROM review_audit WHERE document_id = ? ORDER BY id", [document_id])]


def _segments(site: dict[str, Any], document_id: str) -> list[tuple[str, str, list[float]]]:
    """(id, text, box as x0, y0, x1, y1) of the stored prediction's segments, in reading order."""
    rows = sqlite3.connect(site["cfg"].paths.database).execute(
        "SELECT id, text, box FROM segments WHERE document_id = ? ORDER BY page, position", [document_id]).fetchall()
    out = []
    for sid, text, box in rows:
        points = json.loads(box)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        out.append((sid, text, [min(xs), min(ys), max(xs), max(ys)]))
    return out


def _status(page: Any, text: str) -> None:
    page.frame_locator(EDITOR).locator("#status", has_text=text).wait_for()


# -- defect 1 and 2: nothing typed is lost; shortcuts work wherever the focus is -----------------


def test_ctrl_s_saves_the_text_being_typed_and_shortcuts_work_after_a_click_on_the_image(site, page) -> None:
    doc = site["docs"]["typing"]
    first, second = _segments(site, doc)[1:3]
    frame = open_document(page, doc)
    frame.locator(f"g[data-id='{first[0]}'] rect.body").click()
    page.keyboard.press("Enter")  # Enter edits the text of the selected box
    page.keyboard.press("Control+A")
    page.keyboard.type("Typed, never confirmed")
    page.keyboard.press("Control+S")  # no Enter, focus still in the text field
    _status(page, "Saved doc-")
    assert {s["id"]: s["text"] for p in _gold(site, doc)["pages"] for s in p["segments"]}[first[0]] == \
        "Typed, never confirmed"
    # a click on the image keeps the focus in the editor: the label hotkey and Ctrl+S still work
    frame.locator(f"g[data-id='{second[0]}'] rect.body").click()
    page.keyboard.press("4")  # the fourth label of the schema: other
    page.keyboard.press("Control+S")
    _status(page, "revision 2")
    # and with the focus on the app's own page, outside the editor
    frame.locator(f"g[data-id='{second[0]}'] rect.body").click()
    page.keyboard.press("2")  # question
    page.locator("h2, b").first.click()
    page.keyboard.press("Control+S")
    _status(page, "revision 3")
    gold = {s["id"]: s for p in _gold(site, doc)["pages"] for s in p["segments"]}
    assert gold[second[0]]["label"] == "question"
    assert ("text", first[0]) in _audit(site, doc) and ("label", second[0]) in _audit(site, doc)
