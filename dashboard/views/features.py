"""Feature map: the images in the model's feature space (PCA, then t-SNE: embedding.csv), coloured by stage,
correctness, confidence, the out-of-distribution flag or where the maps point; a box or lasso selection shows
those images with their Grad-CAM maps."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import figures, loaders, ui
from dashboard.escape import code, html_text, md
from engine.runs import EMBEDDING, FEATURES, SPLITS

st.title("Feature map")
evaluated = [r for r in ui.found()["runs"] if r.evaluated]
if not evaluated:
    ui.empty_state("evaluated runs (run `python -m engine evaluate RUN`)")
    st.stop()

root = ui.root()
top = st.columns([3, 2, 2])
with top[0]:
    run = ui.pick_run(sorted(evaluated, key=lambda r: (not r.explained, r.label)), key="fm_run",
                      help="Evaluated runs; runs with Grad-CAM maps first.")
ui.run_problems(run)
problems: list[str] = []
try:
    points = loaders.embedding(root, run.path, problems)
except loaders.MissingFile:
    st.info(f"{code(run.label)} has no {code(EMBEDDING)}: it was evaluated before the feature map existed. "
            f"Run {code(f'python -m engine evaluate {run.path}')} again to add it.", icon=":material/info:")
    st.stop()
except loaders.LoadError as exc:
    st.warning(f"The feature map of {code(run.label)} cannot be read: {md(exc)}", icon=":material/warning:")
    st.stop()
for problem in problems:
    st.caption(f"⚠ {md(problem)}")

splits = [s for s in SPLITS if s in set(points["split"])]
with top[1]:
    shown = ui.url_widget(st.multiselect, "Splits", "fm_splits", ["test"] if "test" in splits else splits[:1], splits,
                          help="One map of all the images: positions are comparable across splits.")
located = loaders.localisation_table(root, run.path)
colours = ["true", "pred", "correct", "confidence", "out_of_distribution"]
if located is not None and not located.empty:
    colours += ["concentration", "pointing"]
with top[2]:
    colour = ui.url_widget(st.selectbox, "Colour by", "fm_colour", colours[0], colours,
                           format_func=figures.FEATURE_MAP_COLOURS.get)
index = ui.cams_index(run)
methods = sorted(index["method"].unique()) if index is not None else []
layers = sorted(index["layer"].unique()) if index is not None else []
pick = st.columns([2, 2, 4])
method = ui.url_widget(pick[0].selectbox, "Grad-CAM method", "fm_method",
                       ui.first_explained(index, "method") if methods else "(none)", methods or ["(none)"])
layer = ui.url_widget(pick[1].selectbox, "Layer", "fm_layer",
                      ui.first_explained(index, "layer") if layers else "(none)", layers or ["(none)"])
pick[2].caption("The maps shown for selected images, and the localisation scores the map is coloured by "
                "(cams/localisation.csv: test images with a leukocyte mask).")
scores = None if located is None else located[(located["method"] == method) & (located["layer"] == layer)]

part = points[points["split"].isin(shown)]
with ui.section("Feature map"):
    fig = figures.feature_map(figures.feature_map_frame(part, scores), colour)
    event = st.plotly_chart(fig, on_select="rerun", selection_mode=("box", "lasso"), key=f"fm_map_{run.label}",
                            config={"displaylogo": False})
    st.caption(f"{len(part)} images. Pooled DenseNet features ({code(FEATURES)}) reduced by PCA, then t-SNE "
               "(seeded: the same map on every visit). Neighbourhoods mean something, distances between clusters "
               "and their sizes do not. Draw a box or a lasso around points to see their images.")

# A selection on the chart; AppTest and other pages can set the same through session state.
picked = figures.selected_keys(event) or [str(k) for k in st.session_state.get("fm_picked") or []]
chosen = points[points["sha256"].isin(picked)].drop_duplicates("sha256")
with ui.section("Selected images"):
    st.subheader(f"Selected: {len(chosen)} image(s)")
    if chosen.empty:
        st.caption("Nothing selected yet.")
        st.stop()
    table = pd.crosstab(chosen["true"], chosen["pred"]).rename_axis(index="true \\ predicted", columns=None)
    st.dataframe(table, width="content")
    maps: dict[str, dict] = {}
    if index is not None:
        sel = index[(index["method"] == method) & (index["layer"] == layer)]
        for _, r in sel[sel["sha256"].isin(chosen["sha256"])].iterrows():
            maps.setdefault(r["sha256"], {})[r["target"]] = r
    limit = 24
    order = chosen.assign(correct=chosen["true"] == chosen["pred"]).sort_values(["correct", "confidence"],
                                                                              ascending=[True, False])
    unmapped = [s for s in order["sha256"].head(limit) if s not in maps]
    pictures = loaders.training_images(root, run.path, unmapped) if unmapped else {}
    style = ui.overlay_controls("fm_overlay") if maps else None
    columns = st.columns(3)
    for i, (_, row) in enumerate(order.head(limit).iterrows()):
        with columns[i % 3], st.container(border=True):
            flag = " · ⚠ out of distribution" if row["out_of_distribution"] == 1 else ""
            st.markdown(f"<span class='fm-image' title='{html_text(row['path'])}'>{md(row['path'].rsplit('/', 1)[-1])}"
                        f"</span> · {md(row['split'])} · true **{md(row['true'])}** → **{md(row['pred'])}** "
                        f"({float(row['confidence']):.2f}){flag}", unsafe_allow_html=True)
            found = maps.get(row["sha256"], {})
            if found:
                ui.maps_row(run.path, found, row["true"], row["pred"], style)
            elif row["sha256"] in pictures:
                st.image(pictures[row["sha256"]], caption="input (no map)", width="stretch")
            else:
                ui.image(None, caption="no map for this image")
    if len(chosen) > limit:
        st.caption(f"Showing {limit} of {len(chosen)}: misclassified first, then the most confident.")
