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
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, Iterator

import pytest

from service.config import PaperloopConfig
from service.ocr import OcrEngine
from service.registry import ModelRegistry
from service.store import Store

from conftest import PROJECT_ROOT, render_form_page
from review_browser_kit import (
    CHROMIUM, CHROMIUM_ARGS, EDITOR, editor, log_in, open_document, read_document, review_app,
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
    page.get_by_text("Signed in as").click()  # the focus leaves the editor
    assert page.evaluate("() => document.activeElement.tagName") != "IFRAME"
    page.keyboard.press("Control+S")
    _status(page, "revision 3")
    gold = {s["id"]: s for p in _gold(site, doc)["pages"] for s in p["segments"]}
    assert gold[second[0]]["label"] == "question"
    assert ("text", first[0]) in _audit(site, doc) and ("label", second[0]) in _audit(site, doc)
    # a double click on a box edits its text at once, the old text selected: typing replaces it
    frame.locator(f"g[data-id='{second[0]}'] rect.body").dblclick()
    page.keyboard.type("Retyped after a double click")
    page.keyboard.press("Control+S")
    _status(page, "revision 4")
    assert {s["id"]: s["text"] for p in _gold(site, doc)["pages"] for s in p["segments"]}[second[0]] == \
        "Retyped after a double click"


# -- defect 3: links drawn on the image, weak ones marked, pairs listed as text -------------------


def test_a_link_is_drawn_on_the_image_in_two_clicks_and_pairs_are_listed_as_text(site, page) -> None:
    doc = site["docs"]["links"]
    frame = open_document(page, doc)
    assert frame.locator("path.link.weak").count() >= 1 and frame.locator("text.linkq").count() >= 1
    pairs = frame.locator("#pairs .row")
    before = pairs.count()
    assert before >= 1 and "→" in pairs.first.inner_text()
    # the key must not be linked yet: take a question with no link and any answer
    state = editor(page, "S => ({links: S.links.map(l => l.key), segs: Array.from(S.segs.values())"
                         ".map(s => [s.id, s.label, s.text])})")
    key = next(s for s in state["segs"] if s[0] not in state["links"] and len(s[2]) > 3)
    value = next(s for s in state["segs"] if s[0] != key[0] and s[1] == "answer")
    page.keyboard.press("l")  # link mode (one key per document)
    frame.locator(f"g[data-id='{key[0]}'] rect.body").click()
    frame.locator(f"g[data-id='{value[0]}'] rect.body").click()
    assert pairs.count() == before + 1
    assert key[2][:10] in frame.locator("#pairs").inner_text()
    # the arrow ends at the value's border: its last point is outside the value's box
    end = editor(page, f"S => {{ const p = Array.from(document.querySelectorAll('path.link')).pop(); "
                       f"const n = p.getTotalLength(); const q = p.getPointAtLength(n); const b = S.segs.get('{value[0]}').box;"
                       f" return [q.x, q.y, b]; }}")
    x, y, box = end
    assert not (box[0] + 2 < x < box[2] - 2 and box[1] + 2 < y < box[3] - 2)
    page.keyboard.press("Control+S")
    _status(page, "Saved doc-")
    assert [key[0], value[0]] in [[l["key"], l["value"]] for l in _gold(site, doc)["links"]]


# -- defect 4: uncertainty stands out; Tab walks the uncertain items, most uncertain first --------


def test_tab_walks_the_uncertain_items_most_uncertain_first_and_the_filter_dims_the_rest(site, page) -> None:
    doc = site["docs"]["uncertain"]
    frame = open_document(page, doc)
    items = editor(page, "S => S.__items = (function () { const out = []; for (const s of S.segs.values())"
                         " if (s.low) out.push([s.id, s.unc]); return out; })()")
    assert items, "the form has uncertain boxes"
    order = [r.inner_text().split("\n")[0] for r in frame.locator("#uncertain .row").all()]
    assert len(order) >= len(items)
    page.keyboard.press("Tab")
    first = editor(page, "S => S.sel[0]")
    page.keyboard.press("Tab")
    second = editor(page, "S => S.selLink ? S.selLink.join('>') : S.sel[0]")
    uncertainty = editor(page, "S => { const m = {}; for (const s of S.segs.values()) m[s.id] = s.unc; return m; }")
    ranked = editor(page, "S => Array.from(document.querySelectorAll('#uncertain .row .muted')).map(e => parseFloat(e.textContent))")
    assert ranked == sorted(ranked, reverse=True)  # most uncertain first
    assert uncertainty[first] == max(u for _, u in items if u is not None)
    assert second != first
    page.keyboard.press("Shift+Tab")
    assert editor(page, "S => S.sel[0]") == first
    assert frame.locator("text.rank").count() >= 1  # the order is on the image too
    page.keyboard.press("u")
    assert frame.locator("g.seg.dim").count() > 0 and frame.locator("g.seg.low.dim").count() == 0
    assert "left" in frame.locator("#todo").inner_text()


# -- defect 5: the page fills the width; wheel zoom and pan; zoom kept across documents ----------


def test_the_page_fills_the_width_and_wheel_zoom_is_kept_for_the_next_document(site, page) -> None:
    doc = site["docs"]["zoom"]
    frame = open_document(page, doc)
    main = page.locator('[data-testid="stMain"]').bounding_box()
    image = frame.locator("#svg").bounding_box()
    assert image["width"] >= 0.6 * main["width"], (image, main)
    assert image["y"] < 260  # near the top, not under a tall header
    view = frame.locator("#view").bounding_box()
    page.mouse.move(view["x"] + view["width"] / 2, view["y"] + view["height"] / 3)
    page.mouse.wheel(0, -400)
    page.wait_for_timeout(200)
    zoom = editor(page, "S => S.zoom")
    assert zoom > 1.3
    assert frame.locator("#svg").bounding_box()["width"] > image["width"] * 1.3
    # Alt+drag pans
    left = editor(page, "S => document.getElementById('view').scrollLeft")
    page.keyboard.down("Alt")
    page.mouse.move(view["x"] + 400, view["y"] + 300)
    page.mouse.down()
    page.mouse.move(view["x"] + 250, view["y"] + 300, steps=4)
    page.mouse.up()
    page.keyboard.up("Alt")
    assert editor(page, "S => document.getElementById('view').scrollLeft") > left
    frame.locator("#skip").click()  # no edits: no question
    page.wait_for_function(f"() => document.querySelector(\"{EDITOR}\").contentWindow.__paperloopEditor.docId !== '{doc}'")
    assert abs(editor(page, "S => S.zoom") - zoom) < 1e-6


# -- defect 6: a drawn box is read by the recognizer; Accept warns about empty boxes --------------


def test_a_drawn_box_is_read_by_the_recognizer_and_r_rereads_a_moved_box(site, page) -> None:
    doc = site["docs"]["reread"]
    segments = _segments(site, doc)
    target = max(segments, key=lambda s: len(s[1]))  # a long printed line
    frame = open_document(page, doc)
    # delete the line's box, then draw it again around the text
    frame.locator(f"g[data-id='{target[0]}'] rect.body").click()
    page.keyboard.press("Delete")
    scale = editor(page, "S => document.getElementById('svg').getBoundingClientRect().width / S.pages[0].width")
    svg = frame.locator("#svg").bounding_box()
    x0, y0, x1, y1 = target[2]
    page.mouse.move(svg["x"] + (x0 - 4) * scale, svg["y"] + (y0 - 3) * scale)
    page.mouse.down()
    page.mouse.move(svg["x"] + (x1 + 4) * scale, svg["y"] + (y1 + 3) * scale, steps=6)
    page.mouse.up()
    new_id = editor(page, "S => S.sel[0]")
    assert new_id.startswith("p1-r")
    page.wait_for_function(f"() => document.querySelector(\"{EDITOR}\").contentWindow.__paperloopEditor"
                           f".segs.get('{new_id}').text.length > 0", timeout=60000)
    read = editor(page, f"S => S.segs.get('{new_id}').text")
    squeeze = lambda t: t.replace(" ", "").lower()
    assert SequenceMatcher(None, squeeze(read), squeeze(target[1])).ratio() > 0.8, (read, target[1])
    # move another box off its text, back again with the arrow keys, then R re-reads it
    other = next(s for s in segments if s[0] != target[0] and len(s[1]) > 3)
    frame.locator(f"g[data-id='{other[0]}'] rect.body").click()
    editor(page, f"S => {{ S.segs.get('{other[0]}').text = ''; S.segs.get('{other[0]}').words = []; return 1; }}")
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Shift+ArrowLeft")
    page.keyboard.press("r")
    page.wait_for_function(f"() => document.querySelector(\"{EDITOR}\").contentWindow.__paperloopEditor"
                           f".segs.get('{other[0]}').text.length > 0", timeout=60000)
    # an empty drawn box: Accept asks first; dismissed, nothing is saved
    editor(page, "S => { S.segs.get('" + new_id + "').text = ''; return 1; }")
    page.answer = False
    page.keyboard.press("Control+Enter")
    assert any("no text" in message for _, message in page.dialogs)
    page.wait_for_timeout(500)
    assert _gold(site, doc) is None


# -- defect 7: the Data page; exports of reviewed data by default; the chart names every label ----


def test_the_data_page_exports_reviewed_data_by_default_and_never_rezips(site, page) -> None:
    page.get_by_text("Data", exact=True).click()
    page.get_by_text("Gold labels").first.wait_for()
    assert page.get_by_role("checkbox", name="Reviewed only").is_checked()
    page.get_by_role("button", name="Export", exact=True).click()
    page.get_by_text("Exported to").wait_for()
    exports = site["cfg"].paths.resolve("data") / "exports"
    archive = next(exports.glob("*.zip"))
    made = archive.stat().st_mtime_ns
    started = time.perf_counter()
    page.get_by_text("Models", exact=True).click()
    page.get_by_text("Data", exact=True).click()
    page.get_by_role("button", name="Download the last export as .zip").wait_for()
    assert time.perf_counter() - started < 10
    assert archive.stat().st_mtime_ns == made


# -- entities, pages, leaving: merge and split lines, page navigation, unsaved edits ask first ----


def test_merge_split_pages_and_unsaved_edits_ask_before_leaving(site, page) -> None:
    doc = site["docs"]["multi"]
    frame = open_document(page, doc)
    assert "Page 1 of 2" in frame.locator("#pageinfo").inner_text()
    summary = frame.locator("#summary").inner_text()
    assert "Page 1:" in summary and "Page 2:" in summary
    state = editor(page, "S => Array.from(S.segs.values()).filter(s => s.page === 1).map(s => [s.id, s.text, s.words.length])")
    a, b = state[1], state[2]
    frame.locator(f"g[data-id='{a[0]}'] rect.body").click()
    frame.locator(f"g[data-id='{b[0]}'] rect.body").click(modifiers=["Shift"])
    page.keyboard.press("m")
    merged = editor(page, "S => { const s = S.segs.get(S.sel[0]); return [s.id, s.text, s.words.length]; }")
    assert merged[0].startswith("p1-m") and merged[2] == a[2] + b[2]
    assert set(merged[1].split()) == set(f"{a[1]} {b[1]}".split())
    page.keyboard.press("Control+S")
    _status(page, "Saved doc-")
    assert ("merge", merged[0]) in _audit(site, doc)
    gold = {s["id"]: s for p in _gold(site, doc)["pages"] for s in p["segments"]}
    assert merged[0] in gold and a[0] not in gold and len(gold[merged[0]]["words"]) == merged[2]
    # split it again: X, then click the first word of the second part
    frame.locator(f"g[data-id='{merged[0]}'] rect.body").click()
    page.keyboard.press("x")
    frame.locator(f"rect.word[data-word='{a[2]}']").click()
    parts = editor(page, "S => S.sel.map(id => S.segs.get(id).text)")
    assert len(parts) == 2
    # page 2 with PageDown; the edit state of page 1 stays
    page.keyboard.press("PageDown")
    assert "Page 2 of 2" in frame.locator("#pageinfo").inner_text()
    assert editor(page, "S => Array.from(S.segs.values()).filter(s => s.page === 2).length") > 0
    # unsaved edits: reloading asks, Skip asks (dismissed: the document stays), leaving by the sidebar asks
    assert page.evaluate("() => window.__paperloopDirty === true") and page.evaluate(BEFOREUNLOAD)
    page.answer = False
    page.keyboard.press("Alt+n")
    assert any("unsaved" in message for _, message in page.dialogs)
    page.wait_for_timeout(800)
    assert editor(page, "S => S.docId") == doc and len(editor(page, "S => S.undo")) > 0
    page.get_by_text("Queue", exact=True).first.click()
    assert sum("unsaved" in m for _, m in page.dialogs) >= 2
    assert editor(page, "S => S.docId") == doc
    page.keyboard.press("Control+S")
    _status(page, "revision 2")
    assert ("split", merged[0]) in _audit(site, doc)
