"""Log in: a reviewer name, and the password when one is configured."""

from __future__ import annotations

import time

import streamlit as st

from service.review import AuthPolicy, clean_reviewer_name


def render(policy: AuthPolicy) -> None:
    """The login form; sets ``st.session_state.reviewer`` on success."""
    _, middle, _ = st.columns([1, 1.2, 1])
    with middle:
        st.markdown("## :material/fact_check: Paperloop review")
        st.caption("Fix low-confidence extractions; every fix becomes a training label.")
        with st.form("login", border=True):
            name = st.text_input("Your name", key="login_name", placeholder="e.g. alice")
            password = ""
            if policy.password_required:
                password = st.text_input("Password", type="password", key="login_password")
            submitted = st.form_submit_button("Log in", type="primary", width="stretch")
        if not policy.password_required:
            st.caption("No password is configured: this app only listens on this machine.")
        if submitted:
            name = clean_reviewer_name(name)
            if not name:
                st.error("Please enter your name: every saved change is logged under it.")
            elif policy.check(name, password):
                st.session_state["reviewer"] = name
                st.session_state.setdefault("nav", "Queue")
                st.rerun()
            else:
                time.sleep(0.5)  # slows down guessing
                st.error("Wrong name or password.")
