"""Data page: the gold labels per task and per label, what is new since training; exports."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from review_app import common
from service.config import PaperloopConfig
from service.labels import SPLITS
from service.tasks import all_tasks
from service.review import (
    EXPORT_FORMATS, ExportError, ReviewService, create_export, export_archive, exports_root,
)

TASKS = {task.name: task.title for task in all_tasks()}
FORMAT_NAMES = {"det": "Detection Label.txt + images", "rec": "Recognition rec_gt.txt + crop_img/",
                "kie": "KIE Label.txt + XFUND JSON (label)"}


def _reader(path: Path):
    """The zip's bytes, read only when the reviewer clicks the download button."""
    return lambda: path.read_bytes()


def _last_training(version: str | None, at: str | None) -> str:
    """The Per-task table's "Last training" cell."""
    if at is not None:
        return f"learning run {at[:10]} ({version or 'no candidate'})"
    return f"no learning run yet ({version} in the registry)" if version else "no model yet"


def _label_chart(table: pd.DataFrame) -> alt.Chart:
    """Segments per label, one bar per split: every label named (its own row, never thinned out)."""
    long = table.melt("Label", var_name="Split", value_name="Segments")
    long = long[long["Segments"] > 0]
    labels = list(table["Label"])
    splits = sorted(long["Split"].unique()) or ["train"]
    return alt.Chart(long).mark_bar().encode(
        y=alt.Y("Label:N", sort=labels, title=None, axis=alt.Axis(labelOverlap=False, labelLimit=220)),
        yOffset=alt.YOffset("Split:N", sort=splits),
        x=alt.X("Segments:Q"),
        color=alt.Color("Split:N", sort=splits, legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["Label", "Split", "Segments"],
    ).properties(height=max(120, 16 * len(labels) * len(splits) + 10 * len(labels)))


def render(service: ReviewService, cfg: PaperloopConfig, reviewer: str) -> None:
    """The data page."""
    st.markdown("## Gold labels")
    common.show_flash()
    summary = service.gold_summary()
    per_split = summary["per_split"]
    cols = st.columns(len(SPLITS) + 1)
    for i, split in enumerate(SPLITS):
        cols[i].metric(f"{split} documents", per_split.get(split, {}).get("documents", 0))
    cols[-1].metric("reviewed by people", len(service.items("reviewed")))

    st.markdown("#### Per task")
    rows = []
    for task, title in TASKS.items():
        new = summary["new_since_training"][task]
        since = _last_training(new["since_version"], new["since"])
        rows.append({"Task": title, **{split: per_split.get(split, {}).get(task, 0) for split in SPLITS},
                     "New since last training": new["count"], "Last training": since})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

    st.markdown("#### Per label (segments)")
    per_label = summary["per_label"]
    if per_label:
        table = pd.DataFrame([{"Label": label, **{s: counts.get(s, 0) for s in SPLITS}}
                              for label, counts in per_label.items()])
        left, right = st.columns([1, 1.4])
        left.dataframe(table, hide_index=True, width="stretch")
        right.altair_chart(_label_chart(table), width="stretch")
    else:
        st.info("No gold labels yet: they appear here as reviewers save documents.")

    _exports(service, cfg, reviewer)

    with st.expander("Recent changes by reviewers"):
        log = service.audit_log()[:200]
        if log:
            st.dataframe(pd.DataFrame([{"At (UTC)": r["at"][:19].replace("T", " "), "By": r["reviewer"],
                                        "Document": r["document_id"], "Change": r["action"], "Target": r["target"]}
                                       for r in log]), hide_index=True, width="stretch")
        else:
            st.caption("No changes saved yet.")


def _exports(service: ReviewService, cfg: PaperloopConfig, reviewer: str) -> None:
    """Export into a new folder under ``review.exports_dir`` (named here), then download its zip."""
    st.markdown("#### Export in PaddleOCR's formats")
    st.caption(f"Each export goes into a new folder under {common.md(exports_root(cfg))}, with a zip of "
               "exactly the files it wrote.")
    with st.form("export"):
        c = st.columns([1, 1.6, 1])
        splits = c[0].multiselect("Splits", SPLITS, default=["train", "holdout"], key="export_splits")
        formats = c[1].multiselect("Formats", EXPORT_FORMATS, default=list(EXPORT_FORMATS),
                                   format_func=FORMAT_NAMES.get, key="export_formats")
        only_review = c[2].checkbox("Reviewed only", value=True, key="export_only_review",
                                    help="Only what reviewers saved; untick to add the imported data sets too")
        go = st.form_submit_button("Export", type="primary")
    if go:
        with st.spinner("Exporting…"):
            try:
                record = create_export(service, splits=splits, formats=formats, by=reviewer,
                                       sources=["review"] if only_review else None)
            except ExportError as exc:
                st.error(common.md(exc))
                return
        if not record.summary:
            st.warning("Nothing to export for these splits.")
        else:
            st.success(f"Exported to {common.md(record.folder)}")
            st.json(record.summary, expanded=False)
        st.session_state["export_last"] = record.archive.name
    last = st.session_state.get("export_last")
    if last:
        try:
            archive = export_archive(cfg, last)
        except ExportError:
            return
        st.download_button("Download the last export as .zip", icon=":material/download:", data=_reader(archive),
                           file_name=archive.name, mime="application/zip", key="export_download")
