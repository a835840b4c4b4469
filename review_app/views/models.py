"""Models page: versions per task with their metrics, the one in service, Hmean across versions, and
the learning job's runs."""

from __future__ import annotations

import json

import altair as alt
import pandas as pd
import streamlit as st

from service.config import PaperloopConfig
from service.registry import TASKS, ModelRegistry
from service.review import ReviewService, active_learning_result, hmean_history, learning_history, model_versions


def render(service: ReviewService, cfg: PaperloopConfig, reviewer: str) -> None:
    """The models page."""
    st.markdown("## Models")
    registry = ModelRegistry(cfg.paths.resolve("models"))
    rows = model_versions(registry)
    if not rows:
        st.info(f"No model in the registry at {registry.root}; run `paperloop models install-base`.")
        return
    history = pd.DataFrame(hmean_history(registry))
    st.markdown("#### Evaluation Hmean across versions")
    if history.empty:
        st.info("No version has an evaluation Hmean yet; the training runs record it in each version's card.")
    else:
        chart = alt.Chart(history).mark_line(point=alt.OverlayMarkDef(size=70)).encode(
            x=alt.X("created_at:T", title="version created"), y=alt.Y("hmean:Q", title="Hmean",
                                                                     scale=alt.Scale(zero=False)),
            color=alt.Color("series:N", title="task · metric"),
            tooltip=["task", "version", "metric", alt.Tooltip("hmean:Q", format=".4f"), "created_at"],
        ).properties(height=300)
        st.altair_chart(chart, width="stretch")
    for task in TASKS:
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:
            continue
        current = next((r["version"] for r in task_rows if r["in_service"]), None)
        st.markdown(f"#### {task} · in service: `{current or 'none'}`")
        st.dataframe(pd.DataFrame([{
            "": "★" if r["in_service"] else "", "Version": r["version"], "Created (UTC)": r["created_at"][:19],
            "Parent": r["parent"] or "", "Model": r["model_name"], "Source": r["source"],
            "Data": json.dumps(r["data_counts"]) if r["data_counts"] else "",
            "Metrics": json.dumps(r["metrics"]) if r["metrics"] else "",
        } for r in task_rows]), hide_index=True, width="stretch")
    _learning_runs(service)
    _active_learning(cfg)


def _learning_runs(service: ReviewService) -> None:
    st.markdown("#### Learning runs")
    runs = learning_history(service.store)
    if not runs:
        st.info("The learning job has not run yet (`paperloop train --now` runs it by hand).")
        return
    st.dataframe(pd.DataFrame([{
        "Started (UTC)": r["started_at"][:19], "Task": r["task"], "Decision": r["status"], "Why": r["reason"],
        "Candidate": r["candidate"] or "", "In service before": r["in_service"] or "",
        "New gold documents": r["new_documents"],
    } for r in runs]), hide_index=True, width="stretch")


def _active_learning(cfg: PaperloopConfig) -> None:
    st.markdown("#### Which documents to review first (active learning)")
    folder = cfg.review.active_learning_results
    result = active_learning_result(folder if folder.is_absolute() else (cfg.paths.root / folder).resolve())
    if result is None:
        st.info("No active-learning measurement yet: `bench/active.py` writes one.")
        return
    st.markdown(f"Measured {result.date}: {result.line}")
    if result.curve is not None:
        st.image(str(result.curve), caption="learning curves per strategy (bench/active.py)")
