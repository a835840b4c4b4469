"""Document page: the page image with editable boxes, the segments, the links; save / accept."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from review_app import common
from review_app.box_editor import box_editor
from service.config import PaperloopConfig
from service.document import Document
from service.review import (
    ClaimError, ReviewError, ReviewService, add_link, apply_box_event, apply_table_edits, delete_segment,
    label_colours,
    page_of, remove_link, resolve_image, segment_confidence, segment_is_low, update_segment,
)

NO_LABEL = "(none)"


def _state():
    return st.session_state


def _touch(selected: str | None = "keep") -> None:
    """The draft changed: mark it unsaved and rebuild the widgets that show it."""
    state = _state()
    state["dirty"] = True
    state["nonce"] = state.get("nonce", 0) + 1
    if selected != "keep":
        state["sel"] = selected


def _labels(cfg: PaperloopConfig, draft: Document) -> list[str]:
    extra = sorted({s.label for s in draft.segments if s.label and s.label not in cfg.kie.labels})
    return [*cfg.kie.labels, *extra]


# -- callbacks (run before the page is drawn again) ---------------------------------------------


def _on_select(key: str) -> None:
    _state()["sel"] = _state()[key]


def _on_text(key: str, segment_id: str) -> None:
    if update_segment(_state()["draft"], segment_id, text=_state()[key]):
        _touch()


def _on_label(key: str, segment_id: str) -> None:
    value = _state()[key]
    if update_segment(_state()["draft"], segment_id, label=None if value == NO_LABEL else value):
        _touch()


def _on_delete(segment_id: str) -> None:
    delete_segment(_state()["draft"], segment_id)
    _touch(selected=None)


def _on_table(key: str, ids: list[str]) -> None:
    if apply_table_edits(_state()["draft"], ids, _state()[key], no_label=NO_LABEL):
        _touch()


def _on_add_link(key_widget: str, value_widget: str) -> None:
    key, value = _state()[key_widget], _state()[value_widget]
    if not key or not value or key == value:
        common.flash("Pick two different segments for a link.", "warning")
        return
    if add_link(_state()["draft"], key, value):
        _touch()
    else:
        common.flash("That link is already there.", "info")


def _on_remove_link(key: str, value: str) -> None:
    if remove_link(_state()["draft"], key, value):
        _touch()


def _on_page(delta: int, count: int) -> None:
    state = _state()
    state["page_no"] = min(max(1, state.get("page_no", 1) + delta), count)
    state["sel"] = None


def _save(service: ReviewService, reviewer: str, accept: bool) -> None:
    state = _state()
    try:
        result = service.save(state["doc_id"], state["draft"], reviewer, state["draft_rev"], accept=accept)
    except (ClaimError, ReviewError) as exc:
        common.flash(f"Not saved: {exc}", "error")
        return
    state["draft_rev"], state["dirty"] = result.revision, False
    real = [c for c in result.changes if c.action != "accept"]
    what = f"{len(real)} change(s)" if real else "accepted as correct"
    message = f"Saved {state['doc_id']} as gold ({what}, split {result.split}, revision {result.revision})."
    if accept:
        common.close_document(service, reviewer, release=False)
        common.open_next(service, reviewer, skip=[result.document_id])
        if _state().get("doc_id"):
            message += f" Next: {_state()['doc_id']}."
    common.flash(message)


def _may_discard(action: str) -> bool:
    """False (and a warning) the first time unsaved changes would be lost; True after a second press."""
    state = _state()
    if state.get("dirty") and not state.get("confirm_discard"):
        state["confirm_discard"] = True
        common.flash(f"This document has unsaved changes. Press {action} again to discard them, or Save.", "warning")
        return False
    state.pop("confirm_discard", None)
    return True


def _skip(service: ReviewService, reviewer: str) -> None:
    if not _may_discard("Skip"):
        return
    state = _state()
    current = state.get("doc_id")
    if current:
        state.setdefault("skipped", []).append(current)
    common.close_document(service, reviewer)
    common.open_next(service, reviewer, skip=[current] if current else [])


def _back(service: ReviewService, reviewer: str) -> None:
    if not _may_discard("Back"):
        return
    common.close_document(service, reviewer)
    _state()["nav"] = "Queue"


# -- the page -----------------------------------------------------------------------------------


def render(service: ReviewService, cfg: PaperloopConfig, reviewer: str) -> None:
    """The document page."""
    state = _state()
    common.show_flash()
    document_id = state.get("doc_id")
    if not document_id or state.get("draft") is None:
        st.markdown("## Document")
        st.info("No document is open. Start with the next one in the queue, or pick one on the Queue page.")
        st.button("Open the next document", icon=":material/play_arrow:", type="primary", key="doc_open_next",
                  on_click=common.open_next, args=(service, reviewer))
        return
    try:
        service.claim(document_id, reviewer)  # renews the claim while the reviewer works
    except ClaimError as exc:
        st.error(f"{common.md(exc)}. Your edits cannot be saved; go back to the queue.")
        st.button("Back to the queue", icon=":material/arrow_back:", on_click=_back, args=(service, reviewer),
                  key="doc_back_claimed")
        return
    draft: Document = state["draft"]
    try:
        item = service.item(document_id)
    except KeyError:
        item = None
    pages = [p.number for p in draft.pages] or [1]
    page_no = state.get("page_no", pages[0])
    if page_no not in pages:
        page_no = state["page_no"] = pages[0]
    nonce = state.get("nonce", 0)

    flag = " · <b style='color:#b45309'>unsaved changes</b>" if state.get("dirty") else ""
    uncertainty = f" · uncertainty {item.uncertainty:.2f}" if item else ""
    status = f" · reviewed by {common.md(item.reviewed_by)}" if item and item.reviewed_by else ""
    st.markdown(f"## {common.md(draft.source_name)}")
    st.markdown(f'<span class="pl-muted">{common.md(document_id)} · {len(draft.pages)} page(s) · revision '
                f'{state["draft_rev"]}{uncertainty}{status}</span>{flag}', unsafe_allow_html=True)
    if item:
        st.markdown(common.reason_pills(item.reasons), unsafe_allow_html=True)
    bar = st.columns([1.1, 1.75, 1.05, 1, 2.6])
    bar[0].button("Save", key="doc_save", icon=":material/save:", on_click=_save, args=(service, reviewer, False),
                  width="stretch", shortcut="Ctrl+S",
                  help="Save the corrections as gold labels and keep working (Ctrl+S)")
    bar[1].button("Accept & next", key="doc_accept", icon=":material/check_circle:", type="primary",
                  on_click=_save, args=(service, reviewer, True), width="stretch", shortcut="Ctrl+Enter",
                  help="Save the document as it is now (correct) and open the next one (Ctrl+Enter)")
    bar[2].button("Skip", key="doc_skip", icon=":material/skip_next:", on_click=_skip, args=(service, reviewer),
                  width="stretch", shortcut="Alt+N",
                  help="Leave this document to someone else and open the next (Alt+N)")
    bar[3].button("Queue", key="doc_back", icon=":material/arrow_back:", on_click=_back, args=(service, reviewer),
                  width="stretch", help="Back to the queue (the document is released)")

    page = page_of(draft, page_no) if draft.pages else None
    labels = _labels(cfg, draft)
    colours = label_colours(labels)
    left, right = st.columns([1.4, 1], gap="medium")

    with left:
        if len(pages) > 1:
            nav = st.columns([1, 2, 1])
            nav[0].button("Previous page", key="doc_prev", icon=":material/chevron_left:", on_click=_on_page,
                          args=(-1, len(pages)), disabled=page_no == pages[0], width="stretch")
            nav[1].markdown(f"<div style='text-align:center;padding-top:6px'>Page <b>{page_no}</b> of "
                            f"{len(pages)}</div>", unsafe_allow_html=True)
            nav[2].button("Next page", key="doc_next_page", icon=":material/chevron_right:", icon_position="right",
                          on_click=_on_page, args=(1, len(pages)), disabled=page_no == pages[-1], width="stretch")
        _image_editor(service, cfg, draft, page, colours, nonce)
        st.markdown(common.legend_html(labels), unsafe_allow_html=True)

    with right:
        if page is not None:
            _selected_panel(cfg, draft, page, labels, nonce)
            _segments_table(cfg, page, labels, nonce)
        _links_panel(draft, page_no, nonce)
        with st.expander("History of this document"):
            log = service.audit_log(document_id)
            if log:
                st.dataframe(pd.DataFrame([{
                    "At (UTC)": r["at"][:19].replace("T", " "), "By": r["reviewer"], "Change": r["action"],
                    "Target": r["target"], "Before": _short(r["before"]), "After": _short(r["after"]),
                } for r in log]), hide_index=True, width="stretch")
            else:
                st.caption("No saved changes yet.")


def _short(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        value = value.get("text", value.get("label", value))
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "…"


def _image_editor(service: ReviewService, cfg: PaperloopConfig, draft: Document, page, colours, nonce: int) -> None:
    state = _state()
    if page is None:
        st.warning("This document has no pages.")
        return
    image_path = resolve_image(page, service.data_dir)
    if image_path is None:
        st.warning(f"The page image {common.md(page.image or '(none)')} is missing; boxes can still be edited "
                   "in the table.")
        return
    boxes = []
    for n, segment in enumerate(page.segments, start=1):
        x0, y0, x1, y1 = segment.bbox
        confidence = segment_confidence(segment)
        boxes.append({"id": segment.id, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "n": n, "text": segment.text,
                      "label": segment.label, "color": colours.get(segment.label or "", "#9e9e9e"),
                      "low": segment_is_low(segment, cfg), "conf": confidence})
    on_page = {s.id for s in page.segments}
    links = [(link.key, link.value) for link in draft.links if link.key in on_page and link.value in on_page]
    url = common.image_data_url(str(image_path), Path(image_path).stat().st_mtime)
    event = box_editor(url, page.width, page.height, boxes, links, state.get("sel"), nonce,
                       key=f"boxes-{draft.id}-{page.number}")
    seen = state.setdefault("seen_events", set())
    if event and event.get("uid") and event["uid"] not in seen:
        seen.add(event["uid"])
        changed, selected = apply_box_event(draft, page.number, event)
        state["sel"] = selected
        if changed:
            _touch()
        st.rerun()


def _selected_panel(cfg: PaperloopConfig, draft: Document, page, labels: list[str], nonce: int) -> None:
    state = _state()
    ids = [s.id for s in page.segments]
    number = {sid: n for n, sid in enumerate(ids, start=1)}
    selected = state.get("sel") if state.get("sel") in ids else None
    with st.container(border=True):
        options = [None, *ids]
        key = f"doc_sel_{nonce}_{selected}"
        st.selectbox("Selected box", options, index=options.index(selected), key=key, on_change=_on_select,
                     args=(key,), format_func=lambda sid: "— click a box on the page, or pick one here —"
                     if sid is None else f"#{number[sid]} · {draft.segment(sid).text[:50] or '(no text)'}")
        if selected is None:
            st.caption("Tip: drag on empty space in the image to add a box for text the model missed.")
            return
        segment = draft.segment(selected)
        text_key, label_key = f"doc_text_{selected}_{nonce}", f"doc_label_{selected}_{nonce}"
        st.text_input("Text", value=segment.text, key=text_key, on_change=_on_text, args=(text_key, selected))
        c = st.columns([2, 1])
        label_options = [NO_LABEL, *labels]
        c[0].selectbox("Label", label_options, index=label_options.index(segment.label or NO_LABEL), key=label_key,
                       on_change=_on_label, args=(label_key, selected))
        with c[1]:
            st.write("")
            st.button("Delete box", key=f"doc_del_{selected}_{nonce}", icon=":material/delete:",
                      on_click=_on_delete, args=(selected,), width="stretch")
        scores = [f"recognition {segment.rec_score:.2f}" if segment.rec_score is not None else None,
                  f"label {segment.label_score:.2f}" if segment.label_score is not None else None]
        shown = " · ".join(s for s in scores if s)
        low = " · ⚠️ below threshold" if segment_is_low(segment, cfg) else ""
        st.caption(f"{common.md(selected)}{' · ' + shown if shown else ''}{low}")


def _segments_table(cfg: PaperloopConfig, page, labels: list[str], nonce: int) -> None:
    ids = [s.id for s in page.segments]
    rows = []
    for n, segment in enumerate(page.segments, start=1):
        confidence = segment_confidence(segment)
        rows.append({"#": n, "⚠": "⚠️" if segment_is_low(segment, cfg) else "", "text": segment.text,
                     "label": segment.label or NO_LABEL, "conf": confidence, "delete": False})
    st.markdown(f"**Segments on this page** ({len(rows)})")
    key = f"doc_table_{page.number}_{nonce}"
    st.data_editor(
        pd.DataFrame(rows, columns=["#", "⚠", "text", "label", "conf", "delete"]), key=key, hide_index=True,
        width="stretch", height=min(420, 38 + 35 * max(1, len(rows))), num_rows="fixed",
        on_change=_on_table, args=(key, ids), disabled=["#", "⚠", "conf"],
        column_config={
            "#": st.column_config.NumberColumn("#", width=36),
            "⚠": st.column_config.TextColumn("", width=32, help="Below a review threshold"),
            "text": st.column_config.TextColumn("Text", width="medium"),
            "label": st.column_config.SelectboxColumn("Label", options=[NO_LABEL, *labels], required=True,
                                                      width=100),
            "conf": st.column_config.ProgressColumn("Conf.", min_value=0.0, max_value=1.0, format="%.2f", width=90),
            "delete": st.column_config.CheckboxColumn("Del.", help="Delete this box", width=44),
        })


def _links_panel(draft: Document, page_no: int, nonce: int) -> None:
    by_id = {s.id: s for s in draft.segments}
    page_of_segment = {s.id: p.number for p in draft.pages for s in p.segments}
    position = {s.id: n for p in draft.pages for n, s in enumerate(p.segments, start=1)}

    def name(sid: str | None) -> str:
        if sid is None:
            return "—"
        segment = by_id[sid]
        return f"p{page_of_segment[sid]} #{position[sid]} · {segment.text[:40] or '(no text)'}"

    st.markdown(f"**Key → value links** ({len(draft.links)})")
    with st.container(border=True):
        if not draft.links:
            st.caption("No links yet.")
        for i, link in enumerate(draft.links):
            if link.key not in by_id or link.value not in by_id:
                continue
            c = st.columns([6, 1])
            score = f" *({link.score:.2f})*" if link.score is not None else ""
            c[0].markdown(f"{common.md(name(link.key))} → {common.md(name(link.value))}{score}")
            c[1].button("", key=f"doc_unlink_{i}_{nonce}", icon=":material/link_off:", on_click=_on_remove_link,
                        args=(link.key, link.value), help="Remove this link")
        ids = sorted(by_id, key=lambda sid: (page_of_segment[sid] != page_no, page_of_segment[sid], position[sid]))
        c = st.columns([2.6, 2.6, 1.8])
        selected = _state().get("sel")
        key_widget, value_widget = f"doc_link_key_{nonce}_{selected}", f"doc_link_value_{nonce}"
        options = [None, *ids]
        c[0].selectbox("Key", options, index=options.index(selected) if selected in options else 0,
                       key=key_widget, format_func=name)
        c[1].selectbox("Value", options, key=value_widget, format_func=name)
        with c[2]:
            st.write("")
            st.button("Add link", key=f"doc_add_link_{nonce}", icon=":material/add_link:", on_click=_on_add_link,
                      args=(key_widget, value_widget), width="stretch")
