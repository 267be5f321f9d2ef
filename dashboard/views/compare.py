"""Compare two runs: metric deltas, both confusion matrices, and the same images' maps from each."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import figures, loaders, ui
from dashboard.escape import code, html_text, md
from engine.metrics import HEADLINE_METRICS

st.title("Compare runs")
runs = sorted((r for r in ui.found()["runs"] if r.evaluated), key=lambda r: (not r.explained, r.label))
if len(runs) == 1:
    # One evaluated run (e.g. a sweep whose other trials ASHA stopped): say so rather than "nothing yet".
    others = [r for r in ui.found()["runs"] if not r.evaluated]
    st.info(f"Only one evaluated run ({code(runs[0].label)}): comparing needs two folders with metrics.json.",
            icon=":material/info:")
    if others:
        st.markdown(f"Evaluate another run to compare it, e.g. {code(f'python -m engine evaluate {others[0].path}')}. "
                    "Not evaluated: " + ", ".join(code(o.label) for o in others) + ".")
    st.stop()
if len(runs) < 2:
    ui.empty_state("pair of evaluated runs (two or more folders with metrics.json)")
    st.stop()

root = ui.root()
top = st.columns([3, 3, 1])
with top[0]:
    a = ui.pick_run(runs, key="cmp_a", label="Run A", index=0)
with top[1]:
    b = ui.pick_run(runs, key="cmp_b", label="Run B", index=1)
split = ui.url_widget(top[2].radio, "Split", "cmp_split", "test", ["test", "val"])
if a.label == b.label:
    st.info("Pick two different runs.")

ma = mb = None
try:
    ma = loaders.metrics(root, a.path)["splits"].get(split)
    mb = loaders.metrics(root, b.path)["splits"].get(split)
except loaders.LoadError as exc:
    st.warning(md(exc), icon=":material/warning:")
if ma is None or mb is None:
    st.warning(f"Both runs need the {split} split evaluated.", icon=":material/warning:")
    st.stop()

with ui.section("Metric deltas"):
    rows = []
    for h in HEADLINE_METRICS:
        va, vb = h.value(ma), h.value(mb)
        rows.append({"metric": h.label + (" (lower is better)" if h.lower_is_better else ""),
                     "A": va, "A 95% CI": ui.ci_text(h.interval(ma)) if h.ci else "",
                     "B": vb, "B 95% CI": ui.ci_text(h.interval(mb)) if h.ci else "",
                     "Δ (B − A)": None if va is None or vb is None else vb - va})
    for cls in loaders.CLASSES:
        va = (ma.get("per_class") or {}).get(cls, {}).get("f1")
        vb = (mb.get("per_class") or {}).get(cls, {}).get("f1")
        rows.append({"metric": f"F1 {cls}", "A": va, "B": vb, "A 95% CI": "", "B 95% CI": "",
                     "Δ (B − A)": None if va is None or vb is None else vb - va})
    table = pd.DataFrame(rows)
    st.dataframe(table.style.format({"A": "{:.4f}", "B": "{:.4f}", "Δ (B − A)": "{:+.4f}"}, na_rep="n/a")
                 .map(lambda v: f"color: {'#1a7f37' if v > 0 else '#cf222e' if v < 0 else 'inherit'}"
                      if isinstance(v, float) else "", subset=["Δ (B − A)"]),
                 hide_index=True, width="stretch")
    st.caption("Overlapping 95% intervals mean the difference may be chance; both runs are scored on the same "
               "images only when they share a prepared data set.")

# A clicked cell, ("A" or "B", true, predicted), filters the maps below to that cell of that run; NO_CELL: none.
NO_CELL = ("", "", "")
ui.in_url("cmp_cell", NO_CELL, [NO_CELL, *((n, t, p) for n in "AB" for t in loaders.CLASSES for p in loaders.CLASSES)])
cell = st.session_state["cmp_cell"] if st.session_state["cmp_cell"] != NO_CELL else None
with ui.section("Confusion matrices"):
    mode = ui.url_widget(st.radio, "Matrix", "cmp_mode", "counts", ["counts", "row-normalised"], horizontal=True)
    cols = st.columns(2)
    for col, run, m, name in ((cols[0], a, ma, "A"), (cols[1], b, mb, "B")):
        with col:
            fig = figures.confusion_matrix(m["confusion_matrix"], normalized=m.get("confusion_matrix_normalized"),
                                           mode="normalized" if mode != "counts" else "counts",
                                           title=f"{name}: {html_text(run.label)}", height=420,
                                           selected=cell[1:] if cell and cell[0] == name else None)
            event = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key=f"cmp_cm_{name}_{split}",
                                    config={"displayModeBar": False})
            clicked = ui.clicked_cell(event, loaders.CLASSES)
            if clicked and (name, *clicked) != st.session_state.get("cmp_cell_clicked"):
                st.session_state["cmp_cell_clicked"] = st.session_state["cmp_cell"] = (name, *clicked)
                st.rerun()
    st.caption("Click a cell of either matrix to see both runs' maps for its images below.")

st.subheader("The same images, maps from each run")
with ui.section("Maps"):
    if not (a.explained and b.explained):
        st.info("Both runs need Grad-CAM maps (`python -m engine explain RUN`) to compare them image by image.")
    else:
        ia, ib = ui.cams_index(a), ui.cams_index(b)  # each warns when it cannot be read or skips rows
        readable = ia is not None and ib is not None
        methods = sorted(set(ia["method"]) & set(ib["method"])) if readable else []
        layers = sorted(set(ia["layer"]) & set(ib["layer"])) if readable else []
        if not readable:
            st.caption("Both runs' Grad-CAM maps must be readable to compare them image by image.")
        elif not methods or not layers:
            st.info("The two runs share no Grad-CAM method and layer.")
        else:
            f = st.columns([2, 2, 2, 2])
            method = ui.url_widget(f[0].selectbox, "Method", "cmp_method", methods[0], methods)
            first = ui.first_explained(ia, "layer")
            layer = ui.url_widget(f[1].selectbox, "Layer", "cmp_layer", first if first in layers else layers[0], layers)
            if cell:
                f[2].markdown(f"**Cell of run {cell[0]}**  \ntrue {cell[1]} → predicted {cell[2]}")
                if f[2].button("Show all cells", key="cmp_clear_cell"):
                    st.session_state["cmp_cell"] = NO_CELL
                    st.rerun()
                stage, only = cell[1], False
            else:
                stage = ui.url_widget(f[2].selectbox, "Stage", "cmp_stage", "all", ["all", *loaders.CLASSES])
                only = ui.url_widget(f[3].checkbox, "Only where the runs disagree", "cmp_disagree", True)

            def pick(index: pd.DataFrame) -> pd.DataFrame:
                return index[(index["method"] == method) & (index["layer"] == layer) & (index["target"] == "pred")]

            both = loaders.pair_images(pick(ia), pick(ib))
            common = both.index
            if stage != "all":
                both = both[both["true_a"] == stage]
            if cell:
                both = both[both[f"pred_{cell[0].lower()}"] == cell[2]]
            if only:
                both = both[both["pred_a"] != both["pred_b"]]
            splits = sorted(set(both["split_a"])) if "split_a" in both else []
            where = f" (maps of the {', '.join(splits)} split)" if splits else ""
            st.caption(f"{len(common)} images have maps in both runs (matched by content, else by their path in the "
                       f"class folder); {len(both)} match{md(where)}"
                       f"{', the 12 most confident of A shown' if len(both) > 12 else ''}.")
            both = both.sort_values("confidence_a", ascending=False, key=lambda c: c.astype(float))
            grid = st.columns(3)
            for k, (_sha, row) in enumerate(both.head(12).iterrows()):
                with grid[k % 3], st.container(border=True, key=f"cmp_pair_{k}"):
                    name = md(str(row["path_a"]).rsplit("/", 1)[-1])
                    st.markdown(f"<span class='pair-image' title='{html_text(row['path_a'])}'>"
                                f"<b>{name}</b></span> · true **{md(row['true_a'])}** · "
                                f"A: {md(row['pred_a'])} ({float(row['confidence_a']):.2f}) · "
                                f"B: {md(row['pred_b'])} ({float(row['confidence_b']):.2f})", unsafe_allow_html=True)
                    cols = st.columns(3)
                    with cols[0]:
                        ui.image(loaders.cam_path(root, a.path, row["image_a"]), caption="input")
                    with cols[1]:
                        ui.image(loaders.cam_path(root, a.path, row["overlay_a"]),
                                 caption=f"A: map for {md(row['pred_a'])}")
                    with cols[2]:
                        ui.image(loaders.cam_path(root, b.path, row["overlay_b"]),
                                 caption=f"B: map for {md(row['pred_b'])}")
