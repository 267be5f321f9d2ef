"""Data: images per stage and split, sample images, and the data report (duplicates, rejected files)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import figures, loaders, ui
from dashboard.escape import code, md

st.title("Data")
prepared = ui.found()["prepared"]
if not prepared:
    ui.empty_state("prepared data set (a folder with manifest.csv)")
    st.stop()

labels = [p["label"] for p in prepared]
ui.in_url("prepared", labels[0], labels)
chosen = st.selectbox("Prepared data folder", labels, key="prepared") if len(labels) > 1 else labels[0]
folder = next(p["path"] for p in prepared if p["label"] == chosen)
root = ui.root()

with ui.section("Data report"):
    report = loaders.data_report(root, folder)
    st.caption(f"Source: {code(report.get('data_dir', '?'))} · prepared folder {code(chosen)}")
    cols = st.columns(5)
    cols[0].metric("Images used", md(report.get("images", "?")))
    cols[1].metric("Files found", md(report.get("files_found", "?")))
    cols[2].metric("Rejected", len(report.get("rejected") or []))
    cols[3].metric("Duplicate groups", len(report.get("duplicate_groups") or []))
    cols[4].metric("Near-duplicate pairs", len(report.get("near_duplicates") or []))

    counts = loaders.counts_frame(report)
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(figures.counts_bar(counts), key="counts_chart")
    with right:
        table = counts.pivot(index="stage", columns="split", values="images").reindex(loaders.CLASSES)
        table = table[[s for s in loaders.SPLITS if s in table]]
        table["total"] = table.sum(axis=1)
        table.loc["total"] = table.sum(axis=0)
        st.dataframe(table, width="stretch")

st.subheader("Sample images per stage")
with ui.section("Samples"):
    samples = loaders.samples(root, folder)
    if not any(samples.values()):
        st.caption("No samples/ folder in this prepared data set.")
    for stage in loaders.CLASSES:
        files = samples.get(stage, [])[:8]
        st.markdown(f"**{stage}** · {len(samples.get(stage, []))} samples")
        if files:
            cols = st.columns(8)
            for col, path in zip(cols, files, strict=False):
                with col:
                    ui.image(path)

st.subheader("Data report")
with ui.section("Data report details"):
    report = loaders.data_report(root, folder)
    dup = report.get("duplicate_groups") or []
    near = report.get("near_duplicates") or []
    rejected = report.get("rejected") or []
    conflicts = report.get("label_conflicts") or []
    tabs = st.tabs([f"Duplicate groups ({len(dup)})", f"Near-duplicates ({len(near)})",
                    f"Rejected files ({len(rejected)})", f"Label conflicts ({len(conflicts)})", "Converted modes"])
    with tabs[0]:
        st.caption("Byte-identical files: each group is kept in one split so no copy leaks between splits.")
        st.dataframe(pd.DataFrame([{"sha256": g.get("sha256", "")[:16], "copies": len(g.get("paths", [])),
                                    "split": g.get("split"), "paths": ", ".join(g.get("paths", []))} for g in dup],
                                  columns=["sha256", "copies", "split", "paths"]), width="stretch", hide_index=True)
    with tabs[1]:
        st.caption(f"Perceptual-hash Hamming distance ≤ {md(report.get('near_duplicate_max_bits', 4))} bits "
                   "(visually near-identical images).")
        st.dataframe(pd.DataFrame(near, columns=["a", "b", "distance"]), width="stretch", hide_index=True)
    with tabs[2]:
        st.caption("Files that could not be used, and why.")
        st.dataframe(pd.DataFrame(rejected, columns=["path", "class", "reason"]), width="stretch", hide_index=True)
    with tabs[3]:
        st.dataframe(pd.DataFrame([{"sha256": c.get("sha256", "")[:16], "classes": ", ".join(c.get("classes", [])),
                                    "paths": ", ".join(c.get("paths", []))} for c in conflicts],
                                  columns=["sha256", "classes", "paths"]), width="stretch", hide_index=True)
    with tabs[4]:
        modes = report.get("modes_converted") or {}
        st.dataframe(pd.DataFrame([{"original mode": k, "images converted to RGB": v} for k, v in modes.items()],
                                  columns=["original mode", "images converted to RGB"]), hide_index=True)
