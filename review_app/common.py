"""Shared pieces of the review app: the cached service, session helpers, styling."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any, Callable

import streamlit as st
from PIL import Image

from service.config import OcrConfig, PaperloopConfig
from service.ocr import OcrEngine
from service.registry import ModelRegistry
from service.review import AuthPolicy, ClaimError, ReviewerAccounts, ReviewService, label_colours
from service.store import Store

SESSION_PARAM = "session"  # the query parameter that keeps a login across reloads
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>&~$:\"'=/^@%;?])")

CSS = """
<style>
  .block-container { padding-top: 2.2rem; padding-bottom: 2rem; }
  .pl-chip { display: inline-flex; align-items: center; gap: 6px; margin: 2px 12px 2px 0; font-size: 0.88rem; }
  .pl-swatch { width: 14px; height: 14px; border-radius: 3px; display: inline-block; border: 2px solid; }
  .pl-low { width: 14px; height: 14px; display: inline-block; border: 2px dashed #e53935; border-radius: 3px; }
  .pl-pill { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 0.8rem; margin: 0 6px 4px 0;
             background: #eef2ff; color: #1e3a8a; border: 1px solid #c7d2fe; }
  .pl-pill.audit { background: #fff7ed; color: #9a3412; border-color: #fed7aa; }
  .pl-pill.rec, .pl-pill.no_text { background: #fef2f2; color: #991b1b; border-color: #fecaca; }
  .pl-pill.ser, .pl-pill.field { background: #f5f3ff; color: #5b21b6; border-color: #ddd6fe; }
  .pl-pill.re { background: #ecfeff; color: #155e75; border-color: #a5f3fc; }
  .pl-muted { color: #6b7280; font-size: 0.88rem; }
</style>
"""


def inject_css() -> None:
    """The app's small stylesheet."""
    st.markdown(CSS, unsafe_allow_html=True)


@st.cache_resource(show_spinner=False)
def _ocr_engine(models_dir: str, ocr_json: str) -> OcrEngine:
    return OcrEngine(ModelRegistry(Path(models_dir)), OcrConfig.model_validate_json(ocr_json))


def ocr_engine(cfg: PaperloopConfig) -> OcrEngine:
    """The process-wide OCR engine for re-reading boxes (built on first use; ``refresh()`` picks up a
    promoted rec version)."""
    return _ocr_engine(str(cfg.paths.resolve("models")), cfg.ocr.model_dump_json())


@st.cache_resource(show_spinner=False)
def _store(database: str) -> Store:
    return Store(Path(database))


def review_service(cfg: PaperloopConfig) -> ReviewService:
    """The review service over the process-wide store of this database."""
    return ReviewService(cfg, _store(str(cfg.paths.database)))


_POLICIES: dict[str, AuthPolicy] = {}


def cached_policy(cfg: PaperloopConfig, make: Callable[[], AuthPolicy]) -> AuthPolicy:
    """The login policy, made once per process and database (hashing a password takes a moment)."""
    key = str(cfg.paths.database)
    if key not in _POLICIES:
        _POLICIES[key] = make()
    return _POLICIES[key]


def md(text: object) -> str:
    """Text from a file or a user, safe inside ``st.markdown`` (with or without ``unsafe_allow_html``):
    every ASCII punctuation character is backslash-escaped, so neither Markdown nor HTML is made of it."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def accounts(cfg: PaperloopConfig, policy: AuthPolicy) -> ReviewerAccounts:
    """Reviewer accounts, logins and sessions of this database (the shared password is legacy)."""
    return ReviewerAccounts(_store(str(cfg.paths.database)), cfg.review, shared_hash=policy.shared_hash,
                            legacy=policy.reviewer_hashes)


def start_session(accounts_: ReviewerAccounts, name: str) -> None:
    """After a login: a new session, its token in the URL so that a reload keeps it."""
    token = accounts_.open_session(name)
    st.session_state["reviewer"], st.session_state["session_token"] = name, token
    st.query_params[SESSION_PARAM] = token
    st.session_state.setdefault("nav", "Queue")


def current_reviewer(service: ReviewService, accounts_: ReviewerAccounts) -> str | None:
    """The reviewer of this browser session's live login session (restored from the URL after a
    reload), or ``None``; an expired session logs out with a message."""
    state = st.session_state
    token = state.get("session_token") or st.query_params.get(SESSION_PARAM)
    name = accounts_.resume(token)
    if name is None:
        if token:
            was_in = bool(state.get("reviewer"))
            log_out(service, accounts_)
            if was_in:
                flash("Your session expired: please log in again.", "warning")
        return None
    state["reviewer"], state["session_token"] = name, token
    if st.query_params.get(SESSION_PARAM) != token:
        st.query_params[SESSION_PARAM] = token
    return name


def flash(message: str, kind: str = "success") -> None:
    """A message shown once, at the next run."""
    st.session_state["flash"] = (kind, message)


def show_flash() -> None:
    """Show (and forget) the pending message."""
    pending = st.session_state.pop("flash", None)
    if pending:
        kind, message = pending
        getattr(st, kind)(md(message))


def open_document(service: ReviewService, reviewer: str, document_id: str) -> bool:
    """Claim a document and load its working copy into the session; whether that worked."""
    try:
        service.claim(document_id, reviewer)
    except ClaimError as exc:
        flash(str(exc), "error")
        return False
    document, revision = service.working_copy(document_id)
    state = st.session_state
    state["doc_id"], state["draft"], state["draft_rev"] = document_id, document, revision
    state.pop("editor_reread", None)
    state["nav"] = "Document"
    return True


def close_document(service: ReviewService, reviewer: str, release: bool = True) -> None:
    """Forget the open document (and give up its claim)."""
    state = st.session_state
    if release and state.get("doc_id"):
        service.release(state["doc_id"], reviewer)
    for key in ("doc_id", "draft", "draft_rev", "editor_doc", "editor_reread"):
        state.pop(key, None)


def open_next(service: ReviewService, reviewer: str, skip: list[str] | None = None) -> bool:
    """Claim and open the next document in queue order; whether there was one."""
    skipped = st.session_state.setdefault("skipped", [])
    document_id = service.next_for(reviewer, skip=[*skipped, *(skip or [])])
    if document_id is None:
        flash("The queue is empty: nothing left to review.", "info")
        st.session_state["nav"] = "Queue"
        return False
    return open_document(service, reviewer, document_id)


def log_out(service: ReviewService, accounts_: ReviewerAccounts) -> None:
    """End the session: open document released, session deleted, token out of the URL."""
    reviewer = st.session_state.get("reviewer")
    if reviewer:
        close_document(service, reviewer)
    accounts_.close_session(st.session_state.get("session_token") or st.query_params.get(SESSION_PARAM))
    if SESSION_PARAM in st.query_params:
        del st.query_params[SESSION_PARAM]
    for key in list(st.session_state.keys()):
        del st.session_state[key]


@st.cache_data(show_spinner=False, max_entries=64)
def image_data_url(path: str, mtime: float, max_width: int = 1600) -> str:
    """A page image as a JPEG data URL, at most ``max_width`` wide (boxes keep page coordinates)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.width > max_width:
            image = image.resize((max_width, round(image.height * max_width / image.width)))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def legend_html(labels: list[str]) -> str:
    """Colour chips for the labels, the low-confidence outline and links."""
    colours = label_colours(labels)
    chips = [f'<span class="pl-chip"><span class="pl-swatch" style="background:{c}33;border-color:{c}"></span>'
             f'{md(label)}</span>' for label, c in colours.items()]
    chips.append('<span class="pl-chip"><span class="pl-swatch" style="background:#9e9e9e22;'
                 'border-color:#9e9e9e"></span>no label</span>')
    chips.append('<span class="pl-chip"><span class="pl-low"></span>low confidence</span>')
    chips.append('<span class="pl-chip"><svg width="26" height="10"><line x1="1" y1="5" x2="18" y2="5" '
                 'stroke="#37474f" stroke-width="2" stroke-dasharray="4 2"/><path d="M18 1 L25 5 L18 9 z" '
                 'fill="#37474f"/></svg>key → value link</span>')
    return "<div>" + "".join(chips) + "</div>"


def reason_pills(reasons: list[dict[str, Any]]) -> str:
    """The reasons as coloured pills."""
    return "".join(f'<span class="pl-pill {html.escape(r.get("kind", ""), quote=True)}">{md(r.get("detail", ""))}</span>'
                   for r in reasons)
