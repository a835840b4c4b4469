"""Document page: the page editor (the whole edit state lives in the browser) and the history.

The editor (:mod:`review_app.box_editor`) edits boxes, text, labels, links and entities without a
server round trip; this view only answers its events: save (one diff), accept & next, re-read a box
with the recognizer in service, skip, back to the queue.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from review_app import common
from review_app.box_editor import EDITOR_KEY, page_editor
from service.config import PaperloopConfig
from service.document import Document
from service.review import ClaimError, ReviewError, ReviewService, label_colours, page_of, resolve_image
from service.review.editor import EditorDiffError, apply_editor_diff, editor_document
from service.review.reread import read_page_image, reread_box


def _state():
    return st.session_state


def _labels(cfg: PaperloopConfig, draft: Document) -> list[str]:
    """The schema's labels in order (hotkeys 1-9 follow it), then any other label the document has."""
    extra = sorted({s.label for s in draft.segments if s.label and s.label not in cfg.kie.labels})
    return [*cfg.kie.labels, *extra]


def _status(message: str, kind: str = "", action: str = "", started: float | None = None) -> None:
    """The message the editor shows next (with how long the server took, for the editor's timings)."""
    state = _state()
    seq = state.get("editor_status", {}).get("seq", 0) + 1
    ms = round((time.perf_counter() - started) * 1000, 1) if started is not None else None
    state["editor_status"] = {"seq": seq, "message": message, "kind": kind, "action": f"{action} server", "ms": ms}


# -- the editor's events (run before the page is drawn again) -----------------------------------


def on_event(service: ReviewService, cfg: PaperloopConfig, reviewer: str) -> None:
    """Answer the editor's latest event, once (the editor's callback; the app calls it again before the
    sidebar, a no-op unless an event arrived without its callback)."""
    state = _state()
    event: dict[str, Any] | None = state.get(EDITOR_KEY)
    seen = state.setdefault("seen_events", set())
    if not event or event.get("uid") in seen:
        return
    seen.add(event["uid"])
    if event.get("doc") != state.get("doc_id") or state.get("draft") is None:
        return  # made on a document that is no longer open
    action = event.get("action")
    if action in ("save", "accept"):
        _save(service, cfg, reviewer, event.get("diff") or {}, accept=action == "accept")
    elif action == "reread":
        _reread(service, cfg, event)
    elif action == "skip":
        _skip(service, reviewer)
    elif action == "queue":
        common.close_document(service, reviewer)
        state["nav"] = "Queue"


def _save(service: ReviewService, cfg: PaperloopConfig, reviewer: str, diff: dict[str, Any], accept: bool) -> None:
    """Apply the editor's diff to the working copy and save it as gold (then open the next document)."""
    state, started = _state(), time.perf_counter()
    action = "accept" if accept else "save"
    edited = Document.from_dict(state["draft"].to_dict())
    try:
        apply_editor_diff(edited, diff, _labels(cfg, edited))
        result = service.save(state["doc_id"], edited, reviewer, state["draft_rev"], accept=accept)
    except (ClaimError, ReviewError, EditorDiffError) as exc:
        _status(f"Not saved: {exc}. Your edits are still here.", "error", action, started)
        return
    state["draft"], state["draft_rev"] = edited, result.revision
    state["editor_loads"] = state.get("editor_loads", 0) + 1
    real = [c for c in result.changes if c.action != "accept"]
    what = f"{len(real)} change(s)" if real else "accepted as correct"
    message = f"Saved {result.document_id} as gold ({what}, split {result.split}, revision {result.revision})."
    if accept:
        common.close_document(service, reviewer, release=False)
        if common.open_next(service, reviewer, skip=[result.document_id]):
            message += f" Next: {state['doc_id']}."
        else:
            common.flash(message + " The queue is empty: nothing left to review.", "info")
    _status(message, "ok", action, started)


def _reread(service: ReviewService, cfg: PaperloopConfig, event: dict[str, Any]) -> None:
    """Read the event's box with the rec model in service; the result goes to the editor."""
    state, started = _state(), time.perf_counter()
    answer: dict[str, Any] = {"request": event.get("request"), "id": event.get("id")}
    try:
        page = page_of(state["draft"], int(event["page"]))
        path = resolve_image(page, service.data_dir)
        if path is None:
            raise FileNotFoundError(f"the page image {page.image} is missing")
        engine = common.ocr_engine(cfg)
        engine.refresh()
        answer.update(reread_box(engine, read_page_image(Path(path)), event["box"]).to_dict())
    except (KeyError, ValueError, FileNotFoundError) as exc:
        answer["error"] = str(exc)
    answer["server_ms"] = round((time.perf_counter() - started) * 1000, 1)
    state["editor_reread"] = answer


def _skip(service: ReviewService, reviewer: str) -> None:
    """Leave this document to someone else and open the next (the editor asked about unsaved edits)."""
    state = _state()
    current = state.get("doc_id")
    if current:
        state.setdefault("skipped", []).append(current)
    common.close_document(service, reviewer)
    common.open_next(service, reviewer, skip=[current] if current else [])


def _back(service: ReviewService, reviewer: str) -> None:
    common.close_document(service, reviewer)
    _state()["nav"] = "Queue"


# -- the page -----------------------------------------------------------------------------------


def render(service: ReviewService, cfg: PaperloopConfig, reviewer: str) -> None:
    """The document page."""
    state = _state()
    document_id = state.get("doc_id")
    if not document_id or state.get("draft") is None:
        common.show_flash()
        st.markdown("## Document")
        st.info("No document is open. Start with the next one in the queue, or pick one on the Queue page.")
        st.button("Open the next document", icon=":material/play_arrow:", type="primary", key="doc_open_next",
                  on_click=common.open_next, args=(service, reviewer))
        return
    common.show_flash()
    try:
        service.claim(document_id, reviewer)  # renews the claim while the reviewer works
    except ClaimError as exc:
        st.error(f"{common.md(exc)}. Your edits cannot be saved; go back to the queue.")
        st.button("Back to the queue", icon=":material/arrow_back:", on_click=_back, args=(service, reviewer),
                  key="doc_back_claimed")
        return
    draft: Document = state["draft"]
    _header(service, draft, document_id)
    if not draft.pages:
        st.warning("This document has no pages.")
        return
    labels = _labels(cfg, draft)
    load_key = f"{document_id}@{state['draft_rev']}#{state.get('editor_loads', 0)}"
    page_editor(_editor_doc(cfg, draft, load_key), _images(service, draft), labels, label_colours(labels), load_key,
                state.get("editor_status"), state.get("editor_reread"), on_event, (service, cfg, reviewer))
    with st.expander("History of this document"):
        _history(service, document_id)


def _header(service: ReviewService, draft: Document, document_id: str) -> None:
    """One line: file, id, pages, revision, uncertainty, who reviewed it, and why it is here."""
    try:
        item = service.item(document_id)
    except KeyError:
        item = None
    uncertainty = f" · uncertainty {item.uncertainty:.2f}" if item else ""
    status = f" · reviewed by {common.md(item.reviewed_by)}" if item and item.reviewed_by else ""
    pills = common.reason_pills(item.reasons) if item else ""
    st.markdown(f'**{common.md(draft.source_name)}** &nbsp; <span class="pl-muted">{common.md(document_id)} · '
                f'{len(draft.pages)} page(s) · revision {_state()["draft_rev"]}{uncertainty}{status}</span> &nbsp; {pills}',
                unsafe_allow_html=True)


def _editor_doc(cfg: PaperloopConfig, draft: Document, load_key: str) -> dict[str, Any]:
    """The editor's starting point, built once per load (not on every rerun)."""
    cached = _state().get("editor_doc")
    if not cached or cached[0] != load_key:
        cached = (load_key, editor_document(draft, cfg))
        _state()["editor_doc"] = cached
    return cached[1]


def _images(service: ReviewService, draft: Document) -> dict[str, str]:
    """Every page's image as a data URL (the editor turns pages without asking the server)."""
    images = {}
    for page in draft.pages:
        path = resolve_image(page, service.data_dir)
        if path is not None:
            images[str(page.number)] = common.image_data_url(str(path), Path(path).stat().st_mtime)
    return images


def _history(service: ReviewService, document_id: str) -> None:
    log = service.audit_log(document_id)
    if not log:
        st.caption("No saved changes yet.")
        return
    st.dataframe(pd.DataFrame([{
        "At (UTC)": r["at"][:19].replace("T", " "), "By": r["reviewer"], "Change": r["action"],
        "Target": r["target"], "Before": _short(r["before"]), "After": _short(r["after"]),
    } for r in log]), hide_index=True, width="stretch")


def _short(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        value = value.get("text", value.get("label", value))
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "…"
