"""The review app in a real browser: clicks and keystrokes per correction, and how long each takes.

FUNSD test forms are read by the base det and rec models (``models/``) and stored as documents routed
to review (SER labels and RE links by a stand-in rule, as in the browser tests). ``paperloop review``
runs in a child process and headless Chromium (Debian's ``chromium``, through Playwright) reviews
every form with the same script: fix a text, change a label, move a box, draw a box (the recognizer
in service reads it), add a link, merge two lines, save, accept & next.

Counted per correction: mouse clicks and drags, and keys other than the typed text. Timed: each edit
in the browser (``ms``: the editor's handler; ``frame``: until the next frame is drawn), re-reading a
drawn box (browser to server and back), and save (browser to server and back: ``Ctrl+S`` until the
editor shows the saved revision; the server's part separately). Writes ``bench/results/review.md`` and
``.json`` and prints ``review: text CLICKS/MS, label CLICKS/MS, box CLICKS/MS, link CLICKS/MS, save MS``.

    .venv/bin/python bench/review.py [--forms 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench.common import machine_info, utc_date, versions, write_results  # noqa: E402
from review_browser_kit import (  # noqa: E402
    CHROMIUM, CHROMIUM_ARGS, EDITOR, editor, editor_ready, log_in, read_document, review_app,
)
from service.config import PaperloopConfig  # noqa: E402
from service.funsd import split_pairs  # noqa: E402
from service.ocr import OcrEngine  # noqa: E402
from service.registry import ModelRegistry  # noqa: E402
from service.store import Store  # noqa: E402


class Counter:
    """Clicks and keys per kind of correction, as the script makes them."""

    def __init__(self) -> None:
        self.actions: dict[str, list[int]] = defaultdict(list)

    def add(self, kind: str, clicks: int, keys: int) -> None:
        self.actions[kind].append(clicks + keys)


def _prepare(root: Path, forms: int) -> tuple[PaperloopConfig, list[str]]:
    """A Paperloop root with ``forms`` FUNSD test forms read by the base models, waiting for review."""
    cfg = PaperloopConfig.model_validate({"paths": {"root": str(root), "models": str(ROOT / "models")},
                                          "review": {"audit_percent": 100}})
    for folder in ("inbox", "archive", "quarantine", "output", "data"):
        cfg.paths.resolve(folder).mkdir(parents=True, exist_ok=True)
    engine = OcrEngine(ModelRegistry(ROOT / "models"), cfg.ocr)
    store = Store(cfg.paths.database)
    ids = [read_document(cfg, store, engine, image.name, [image]).id for image, _ in split_pairs("testing")[:forms]]
    store.close()
    return cfg, ids


def _segments(page: Any) -> list[dict[str, Any]]:
    return editor(page, "S => Array.from(S.segs.values()).filter(s => s.page === S.page)"
                        ".map(s => ({id: s.id, text: s.text, label: s.label, box: s.box, words: s.words.length}))")


def _centre(page: Any, segment_id: str) -> tuple[float, float]:
    box = page.frame_locator(EDITOR).locator(f"g[data-id='{segment_id}'] rect.body").bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def _to_screen(page: Any, x: float, y: float) -> tuple[float, float]:
    svg = page.frame_locator(EDITOR).locator("#svg").bounding_box()
    scale = editor(page, "S => document.getElementById('svg').getBoundingClientRect().width / S.pages[0].width")
    return svg["x"] + x * scale, svg["y"] + y * scale


def _review_one(page: Any, count: Counter, reread_ms: list[float]) -> None:
    """The scripted review of the open form (every correction of the issue's list, once)."""
    segs = sorted(_segments(page), key=lambda s: (s["box"][1], s["box"][0]))
    texts = [s for s in segs if len(s["text"]) > 3]
    frame = page.frame_locator(EDITOR)
    # text: double-click the box (its text is selected for editing), type
    target = texts[0]
    page.mouse.dblclick(*_centre(page, target["id"]))
    page.keyboard.type(target["text"].upper() + " (checked)")  # in the edit state as it is typed
    count.add("text", 1, 0)
    # label: click the box, press the label's number
    page.mouse.click(*_centre(page, texts[1]["id"]))
    page.keyboard.press("3")
    count.add("label", 1, 1)
    # box: drag a box by 6 px
    x, y = _centre(page, texts[2]["id"])
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 6, y + 3, steps=3)
    page.mouse.up()
    count.add("box", 1, 0)
    # draw a box around a line (its old box deleted first, not counted), the recognizer reads it
    line = max(texts[3:], key=lambda s: len(s["text"]))
    page.mouse.click(*_centre(page, line["id"]))
    page.keyboard.press("Delete")
    x0, y0, x1, y1 = line["box"]
    page.mouse.move(*_to_screen(page, x0 - 3, y0 - 2))
    page.mouse.down()
    page.mouse.move(*_to_screen(page, x1 + 3, y1 + 2), steps=4)
    page.mouse.up()
    count.add("draw + re-read", 1, 0)
    new_id = editor(page, "S => S.sel[0]")
    started = time.perf_counter()
    page.wait_for_function(f"() => document.querySelector(\"{EDITOR}\").contentWindow.__paperloopEditor"
                           f".segs.get('{new_id}').text.length > 0", timeout=120000)
    reread_ms.append((time.perf_counter() - started) * 1000)
    # link: link mode (L, once per form), then click the key and the value
    page.keyboard.press("l")
    rest = [s for s in texts[3:] if s is not line]
    key, value = rest[0], rest[1]
    page.mouse.click(*_centre(page, key["id"]))
    page.mouse.click(*_centre(page, value["id"]))
    page.keyboard.press("Escape")
    count.add("link", 2, 0)
    # merge two lines: click, Shift+click, M
    a, b = rest[2], rest[3]
    page.mouse.click(*_centre(page, a["id"]))
    page.keyboard.down("Shift")
    page.mouse.click(*_centre(page, b["id"]))
    page.keyboard.up("Shift")
    page.keyboard.press("m")
    count.add("merge", 2, 1)
    # save, then accept & next
    page.keyboard.press("Control+s")
    frame.locator("#status", has_text="Saved doc-").wait_for(timeout=60000)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def run(forms: int) -> dict[str, Any]:
    """Review ``forms`` FUNSD forms in the browser; the counts and timings."""
    from playwright.sync_api import sync_playwright

    count, reread_ms, timings = Counter(), [], []
    with tempfile.TemporaryDirectory() as tmp:
        cfg, ids = _prepare(Path(tmp), forms)
        with review_app(cfg) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60000)
            page.on("dialog", lambda d: d.accept())
            log_in(page, url)
            page.get_by_role("button", name="Start with the next document").click()
            for n in range(len(ids)):
                editor_ready(page)
                document_id = editor(page, "S => S.docId")
                _review_one(page, count, reread_ms)
                timings.extend(editor(page, "S => S.timings.splice(0)"))
                if n < len(ids) - 1:
                    page.keyboard.press("Control+Enter")
                    page.wait_for_function(f"() => document.querySelector(\"{EDITOR}\").contentWindow"
                                           f".__paperloopEditor.docId !== '{document_id}'", timeout=60000)
                    timings.extend(editor(page, "S => S.timings.splice(0)"))
            browser.close()
    by_action: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in timings:
        by_action[t["action"]].append(t)
    latency = {a: {"n": len(v), "median_ms": _median([t["ms"] for t in v]),
                   "max_ms": round(max(t["ms"] for t in v), 1),
                   "median_frame_ms": _median([t["frame_ms"] for t in v if t.get("frame_ms") is not None])}
               for a, v in sorted(by_action.items())}
    latency["draw + re-read (browser)"] = {"n": len(reread_ms), "median_ms": _median(reread_ms),
                                           "max_ms": round(max(reread_ms), 1), "median_frame_ms": None}
    actions = {kind: {"n": len(v), "median_actions": statistics.median(v)} for kind, v in count.actions.items()}
    return {"forms": len(ids), "actions": actions, "latency": latency}


def _line(result: dict[str, Any]) -> str:
    a, lat = result["actions"], result["latency"]

    def part(kind: str, timing: str) -> str:
        return f"{kind} {a[kind]['median_actions']:g}/{lat[timing]['median_ms']:.0f}"

    return (f"review: {part('text', 'text')}, {part('label', 'label')}, {part('box', 'box')}, "
            f"{part('link', 'link')}, save {lat['save round trip']['median_ms']:.0f}")


def _page(report: dict[str, Any]) -> str:
    r = report["result"]
    rows = "\n".join(f"| {kind} | {v['n']} | {v['median_actions']:g} |" for kind, v in r["actions"].items())
    lat = "\n".join(f"| {a} | {v['n']} | {v['median_ms']} | {v['max_ms']} | {v['median_frame_ms'] or ''} |"
                    for a, v in r["latency"].items())
    machine = report["machine"]
    return f"""# Review app: clicks and latency per correction

{report['line']}

Measured {report['date']} on {machine['cpu_model']} ({machine['usable_cores']} usable cores, {machine['ram_gib']} GiB,
load {machine['load_average_1_5_15']}), headless Chromium 1600 x 1000, {r['forms']} FUNSD test forms read by the
base det/rec models; app and browser on the same machine. Versions: {report['versions']}.

Script per form: fix a text, change a label, move a box, draw a box (read by the recognizer in service),
add a link, merge two lines, save (Ctrl+S), accept & next (Ctrl+Enter).

## Clicks and keys per correction (typed text not counted)

| correction | n | clicks + keys (median) |
|---|---|---|
{rows}

The link count is with link mode on: pressing L once per form turns it on (not counted above); with a
key already selected, L and a click on the value make a link too. A text fix is a double click on the box
(its text is selected for editing; a click then Enter does the same) and the typing, which is in the edit
state key by key (a click elsewhere, Tab or Ctrl+S goes on from there).

## Latency (ms)

`ms`: the editor's handler, in the browser (no server); `frame`: until the next frame is drawn.
`save round trip` / `accept round trip`: from the key to the editor showing the saved revision (or the
next document); `save server` / `accept server`: the server's part of it (apply the diff, save gold and
audit rows; accept also claims and loads the next document). `reread`: a drawn box read by the
recognizer in service, browser to server and back.

| action | n | median | max | frame (median) |
|---|---|---|---|---|
{lat}
"""


def _ui_versions() -> dict[str, str]:
    """Versions of what the review runs on: Streamlit, Playwright and Chromium."""
    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    return {"streamlit": metadata.version("streamlit"), "playwright": metadata.version("playwright"),
            "chromium": chromium}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--forms", type=int, default=5)
    args = parser.parse_args()
    result = run(args.forms)
    report = {"date": utc_date(), "machine": machine_info(), "versions": {**versions(), **_ui_versions()},
              "result": result}
    report["line"] = _line(result)
    write_results(ROOT / "bench" / "results", "review", report, _page(report))
    print(report["line"])


if __name__ == "__main__":
    main()
