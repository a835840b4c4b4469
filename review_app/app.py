"""Paperloop review app (Streamlit): ``paperloop review`` starts it.

The logic lives in :mod:`service.review`; the views in ``review_app/views`` only show it and pass
the reviewer's actions on. The config comes from ``PAPERLOOP_CONFIG`` (set by ``paperloop review``
from its ``--config``), the embedded defaults otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from review_app import common
from review_app.views import data, document, login, models, queue
from service.config import load_config
from service.review import auth_policy

st.set_page_config(page_title="Paperloop review", page_icon="📝", layout="wide",
                   initial_sidebar_state="expanded")
common.inject_css()

config_path = os.environ.get("PAPERLOOP_CONFIG")
cfg = load_config(Path(config_path) if config_path else None)
service = common.review_service(cfg)
policy = common.cached_policy(cfg, lambda: auth_policy(cfg))
accounts = common.accounts(cfg, policy)

reviewer = common.current_reviewer(service, accounts)
if not reviewer:
    login.render(accounts)
    st.stop()

document.on_event(service, cfg, reviewer)
views = {"Queue": queue.render, "Document": document.render, "Data": data.render, "Models": models.render}
with st.sidebar:
    st.markdown("### :material/fact_check: Paperloop review")
    st.caption(f"Signed in as **{common.md(reviewer)}**")
    st.radio("Go to", list(views), key="nav", label_visibility="collapsed")
    waiting = service.queue(sync=True)
    mine = [i for i in waiting if i.claimed_by == reviewer]
    st.metric("Waiting for review", len(waiting))
    if mine:
        st.caption("Claimed by you: " + common.md(", ".join(i.document_id for i in mine)))
    st.divider()
    st.caption("**Shortcuts** (document page, wherever the focus is)  \n"
               "Ctrl+S save · Ctrl+Enter accept & next · Alt+N skip  \n"
               "Tab next uncertain · Enter edit text · 1-9 label · R re-read · L link · M merge · X split")
    if st.button("Log out", key="logout", icon=":material/logout:"):
        common.log_out(service, accounts)
        st.rerun()

views[st.session_state.get("nav", "Queue")](service, cfg, reviewer)
