"""Queue page: documents waiting for review, why, how uncertain, how old; filters; claiming."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from review_app import common
from service.config import PaperloopConfig
from service.review import QUEUE_ORDERS, REVIEWED, ReviewService, human_age

KINDS = {"rec": "recognition", "ser": "label", "re": "link", "field": "field threshold", "no_text": "no text",
         "audit": "audit sample", "pipeline": "pipeline", "manual": "opened by hand"}
# Widths that fit the wide layout at 1280 px and up: nothing is cut off but the reason, which wraps to
# its tooltip.
QUEUE_COLUMNS = {
    "Document": st.column_config.TextColumn("Document", width=105),
    "File": st.column_config.TextColumn("File", width=190),
    "Pages": st.column_config.NumberColumn("Pages", width=55),
    "Why": st.column_config.TextColumn("Why", width=330),
    "Age": st.column_config.TextColumn("Age", width=60),
    "Claimed by": st.column_config.TextColumn("Claimed by", width=95),
}
ORDER_NAMES = {"informative": "Most informative first", "oldest": "Oldest first", "newest": "Newest first"}


def _uncertainty_scale(items: list) -> float:
    """The top of the uncertainty scale: 1 for a mean per item, the largest total for
    ``review.uncertainty_aggregate: sum`` (rounded up to a whole number)."""
    return float(max(1, math.ceil(max((i.uncertainty for i in items), default=1.0))))


def _uncertainty_column(cfg: PaperloopConfig, top: float) -> st.column_config.ProgressColumn:
    total = cfg.review.uncertainty_aggregate == "sum"
    return st.column_config.ProgressColumn(
        "Uncertainty", min_value=0.0, max_value=top, format="%.2f", width=105,
        help="Total uncertainty of the document's scores" if total else "Mean segment uncertainty")


def _open_next(service: ReviewService, reviewer: str) -> None:
    common.open_next(service, reviewer)


def _open(service: ReviewService, reviewer: str, document_id: str | None) -> None:
    if document_id:
        common.open_document(service, reviewer, document_id)


def render(service: ReviewService, cfg: PaperloopConfig, reviewer: str) -> None:
    """The queue page."""
    st.markdown("## Review queue")
    common.show_flash()
    everything = service.queue()
    claimed = [i for i in everything if i.claimed_by]
    audits = [i for i in everything if i.audit]
    reviewed = service.items(REVIEWED)
    top = st.columns([1, 1, 1, 1, 1.6])
    top[0].metric("Waiting", len(everything))
    top[1].metric("Being reviewed", len(claimed))
    top[2].metric("Audit samples", len(audits))
    top[3].metric("Reviewed", len(reviewed))
    with top[4]:
        st.write("")
        st.button("Start with the next document", icon=":material/play_arrow:", type="primary", key="queue_next",
                  width="stretch", on_click=_open_next, args=(service, reviewer), disabled=not everything,
                  help="Claims the most informative document no one else is working on")

    with st.container(border=True):
        f = st.columns([1.3, 1.6, 1, 1.2, 0.9])
        order = f[0].selectbox("Order", QUEUE_ORDERS, format_func=ORDER_NAMES.get, key="queue_order")
        kinds = f[1].multiselect("Why", list(KINDS), format_func=KINDS.get, key="queue_kinds",
                                 placeholder="any reason")
        top_u = _uncertainty_scale(everything)
        min_u = f[2].slider("Min. uncertainty", 0.0, top_u, 0.0, top_u / 20, key="queue_min_u")
        search = f[3].text_input("Search", key="queue_search", placeholder="id or file name")
        hide_claimed = f[4].checkbox("Hide claimed by others", value=True, key="queue_hide_claimed")
    items = service.queue(order=order, kinds=kinds or None, min_uncertainty=min_u, search=search, sync=False)
    if hide_claimed:
        items = [i for i in items if not i.claimed_by or i.claimed_by == reviewer]

    if not items:
        st.info("No document matches." if everything else "Nothing waiting for review. New documents appear "
                "here when the pipeline routes them to review.")
    else:
        table = pd.DataFrame([{
            "Document": i.document_id, "File": i.source_name, "Pages": i.page_count,
            "Why": ("[audit] " if i.audit else "") + i.reason, "Uncertainty": i.uncertainty,
            "Age": human_age(i.age_seconds()), "Claimed by": i.claimed_by or "",
        } for i in items])
        picked = st.dataframe(
            table, hide_index=True, width="stretch", key="queue_table", on_select="rerun",
            selection_mode="single-row",
            column_config={**QUEUE_COLUMNS, "Uncertainty": _uncertainty_column(cfg, top_u)})
        rows = list(getattr(getattr(picked, "selection", None), "rows", []) or [])
        ids = [i.document_id for i in items]
        c = st.columns([2, 1, 3])
        names = {i.document_id: i.source_name for i in items}
        chosen = c[0].selectbox("Document", ids, index=rows[0] if rows else 0, key=f"queue_pick_{rows[:1]}",
                                format_func=lambda d: f"{d} · {names[d]}", label_visibility="collapsed")
        c[1].button("Open", key="queue_open", on_click=_open, args=(service, reviewer, chosen), width="stretch")
        c[2].caption("Select a row (or pick it here) and open it; opening claims it for you.")

    with st.expander(f"Recently reviewed ({len(reviewed)})"):
        recent = sorted(reviewed, key=lambda i: i.reviewed_at or "", reverse=True)[:50]
        if recent:
            st.dataframe(pd.DataFrame([{"Document": i.document_id, "File": i.source_name, "By": i.reviewed_by,
                                        "At (UTC)": (i.reviewed_at or "")[:19].replace("T", " "),
                                        "Split": i.split, "Revision": i.revision} for i in recent]),
                         hide_index=True, width="stretch")
            again = st.selectbox("Open again", [i.document_id for i in recent], key="queue_again")
            st.button("Open to correct again", key="queue_again_open", on_click=_open,
                      args=(service, reviewer, again))
        else:
            st.caption("Nothing reviewed yet.")
