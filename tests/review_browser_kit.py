"""What the review app's browser tests and ``bench/review.py`` share: documents read by the real OCR, the
app in a child process, a logged-in Chromium page, and the page editor's handles.

Documents are forms rendered with the DejaVu / Liberation fonts (or FUNSD pages, for the bench), read
by the base det and rec models; SER labels and RE links are set by a simple rule with chosen
probabilities, so that some are below the review thresholds (the queue needs them; no SER/RE model is
trained here).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import cv2
import yaml

from service.config import PaperloopConfig
from service.document import Document, Link, Page, Segment, Word
from service.ocr import OcrEngine
from service.pipeline import DocumentPipeline
from service.store import Store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery staple"
EDITOR = "iframe[title*='box_editor']"


class _Router:
    """Just enough of a DocumentPipeline for ``DocumentPipeline.route`` (no models loaded)."""

    def __init__(self, cfg: PaperloopConfig) -> None:
        self.cfg = cfg


def _label(text: str, n: int) -> tuple[str, float]:
    """A stand-in SER result: lines ending in ':' are questions, the first line a header, the rest
    answers; every third one uncertain."""
    label = "header" if n == 0 else "question" if text.rstrip().endswith(":") else "answer"
    return label, (0.55 + 0.1 * (n % 3)) if n % 3 == 0 else 0.95


def _links(segments: list[Segment]) -> list[Link]:
    """Each question linked to the answer to its right on the same row; every other link weak."""
    links = []
    for q in (s for s in segments if s.label == "question"):
        row = [a for a in segments if a.label == "answer" and abs(a.bbox[1] - q.bbox[1]) < 20 and a.bbox[0] > q.bbox[2]]
        if row:
            links.append(Link(key=q.id, value=min(row, key=lambda a: a.bbox[0]).id,
                              score=0.45 if len(links) % 2 else 0.93, re_version="rule"))
    return links


def read_document(cfg: PaperloopConfig, store: Store, engine: OcrEngine, name: str, images: list[Path]) -> Document:
    """Store a document whose pages are ``images`` read by the real det and rec models, routed to review."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in images) + name.encode()).hexdigest()
    source = cfg.paths.resolve("inbox") / name
    source.write_bytes(digest.encode())
    job = store.enqueue(source, digest, source.stat().st_size)
    document_id = f"doc-{job.id:06d}"
    pages = []
    for number, image in enumerate(images, start=1):
        relative = Path("pages") / document_id / f"page-{number:03d}.png"
        (cfg.paths.resolve("data") / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, cfg.paths.resolve("data") / relative)
        bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
        segments = []
        for n, line in enumerate(engine.read_page(bgr)):
            label, score = _label(line.text, n)
            segments.append(Segment(
                id=f"p{number}-s{n:04d}", box=[(float(x), float(y)) for x, y in line.points], text=line.text,
                label=label, label_score=score, words=[Word(w.text, w.box) for w in line.words],
                det_score=line.det_score, rec_score=line.rec_score, det_version="base", rec_version="base",
                ser_version="rule"))
        pages.append(Page(number=number, width=bgr.shape[1], height=bgr.shape[0], image=str(relative),
                          segments=segments))
    links = [link for page in pages for link in _links(page.segments)]
    document = Document(id=document_id, source_name=name, sha256=digest, created_at="2026-01-01T00:00:00.000+00:00",
                        model_versions={"det": "base", "rec": "base", "ser": "rule", "re": "rule"}, pages=pages,
                        links=links)
    routing = DocumentPipeline.route(_Router(cfg), document)
    store.save_result(job.id, document, routing.state, routing.reason, cfg.paths.resolve("output") / f"{document_id}.json",
                      cfg.paths.resolve("archive") / name, routing=routing.record)
    return document


def stop(child: subprocess.Popen) -> None:
    """SIGTERM a child process; kill it if it has not exited after 20 s."""
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=20)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    """Whether ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def review_app(cfg: PaperloopConfig, reviewers: tuple[str, ...] = ("alice",)) -> Iterator[str]:
    """``paperloop review`` in a child process with these reviewer accounts; yields its URL."""
    config = cfg.paths.resolve("data") / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPERLOOP_REVIEW_PASSWORD")}
    env.pop("PAPERLOOP_CONFIG", None)
    command = [sys.executable, "-m", "service", "--config", str(config), "review"]
    for name in reviewers:
        subprocess.run([*command, "users", "add", name, "--password-stdin"], input=PASSWORD + "\n", text=True,
                       env=env, check=True, cwd=cfg.paths.root, capture_output=True)
    port = free_port()
    log_path = cfg.paths.resolve("data") / "review-app.log"
    with open(log_path, "wb") as log:
        child = subprocess.Popen([*command, "--port", str(port)], cwd=cfg.paths.root, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + 60
            while child.poll() is None and not answers(url + "_stcore/health") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert child.poll() is None and answers(url + "_stcore/health"), log_path.read_text()
            yield url
        finally:
            stop(child)


def log_in(page: Any, url: str, name: str = "alice") -> None:
    """Log in on the app's page."""
    page.goto(url)
    page.get_by_label("Your name").fill(name)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_text("Review queue").first.wait_for()


def open_document(page: Any, document_id: str) -> Any:
    """Open one document from the Queue page; returns the editor's frame once it shows the document."""
    page.get_by_role("textbox", name="Search").fill(document_id)
    page.get_by_role("textbox", name="Search").press("Enter")
    page.wait_for_timeout(800)
    page.locator(".st-key-queue_open button").click()
    return editor_ready(page, document_id)


def editor_ready(page: Any, document_id: str | None = None) -> Any:
    """The editor's frame, once it holds ``document_id`` (any document when ``None``)."""
    frame = page.frame_locator(EDITOR)
    frame.locator("#svg g.seg").first.wait_for()
    wanted = f"=== '{document_id}'" if document_id else "!== null"
    page.wait_for_function(
        f"() => {{ const f = document.querySelector(\"{EDITOR}\"); return f && f.contentWindow.__paperloopEditor"
        f" && f.contentWindow.__paperloopEditor.docId {wanted}; }}")
    return frame


def editor(page: Any, script: str) -> Any:
    """Evaluate ``script`` (a function of the editor's state ``S``; ``document`` is the editor's) in the
    editor's frame."""
    return page.evaluate(f"() => {{ const W = document.querySelector(\"{EDITOR}\").contentWindow;"
                         f" return (function (document) {{ return ({script})(W.__paperloopEditor); }})(W.document); }}")


def segment_centre(page: Any, frame: Any, segment_id: str) -> tuple[float, float]:
    """Page coordinates (of the browser window) of a segment's box centre."""
    box = frame.locator(f"g[data-id='{segment_id}'] rect.body").bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
