"""Log in: a reviewer account and its password (any name, without a password, on loopback only)."""

from __future__ import annotations

import time

import streamlit as st

from review_app import common
from service.review import LockedOut, LoginError, ReviewerAccounts


def _address() -> str | None:
    """The browser's address as Streamlit sees it (``None`` where it cannot tell)."""
    try:
        address = st.context.ip_address
    except Exception:  # noqa: BLE001 - no browser behind this run (AppTest)
        return None
    return address if isinstance(address, str) else None


def render(accounts: ReviewerAccounts) -> None:
    """The login form; on success starts a session (see :func:`review_app.common.start_session`)."""
    required = accounts.password_required
    _, middle, _ = st.columns([1, 1.2, 1])
    with middle:
        st.markdown("## :material/fact_check: Paperloop review")
        st.caption("Fix low-confidence extractions; every fix becomes a training label.")
        common.show_flash()
        with st.form("login", border=True):
            name = st.text_input("Your name", key="login_name", placeholder="e.g. alice")
            password = ""
            if required:
                password = st.text_input("Password", type="password", key="login_password")
            submitted = st.form_submit_button("Log in", type="primary", width="stretch")
        if not required:
            st.caption("No password is configured: this app only listens on this machine.")
        elif not accounts.has_accounts():
            st.info("No reviewer account yet: create one with `paperloop review users add NAME`.")
        if submitted:
            _submit(accounts, name, password)


def _submit(accounts: ReviewerAccounts, name: str, password: str) -> None:
    if not name.strip():
        st.error("Please enter your name: every saved change is logged under it.")
        return
    try:
        reviewer = accounts.authenticate(name, password, _address())
    except LockedOut as exc:
        st.error(f"This account is locked after repeated failed logins: {exc}.")
        return
    except LoginError:
        time.sleep(0.5)  # slows down guessing; the lockout stops it
        st.error("Wrong name or password.")
        return
    common.start_session(accounts, reviewer)
    st.rerun()
