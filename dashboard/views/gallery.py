"""Grad-CAM gallery: per stage, filtered by correctness, confidence, method and layer; the input and
its map side by side (predicted- and true-class maps for errors); the stage's mean map; faithfulness."""

from __future__ import annotations

import streamlit as st

from dashboard import figures, loaders, reviews, ui
from dashboard.escape import md
from engine.runs import CAMS_STAGES, STAGE_MEAN_MAP, STAGE_PANEL, TARGETS

st.title("Grad-CAM gallery")
runs = [r for r in ui.found()["runs"] if r.explained]
if not runs:
    ui.empty_state("Grad-CAM maps (run `python -m engine explain RUN` on an evaluated run)")
    st.stop()

root = ui.root()
run = ui.pick_run(runs, key="gallery_run")
ui.run_problems(run)
index = ui.cams_index(run)
if index is None:
    st.stop()
try:
    meta = loaders.cams_meta(root, run.path)
except loaders.LoadError as exc:
    st.caption(f"⚠ {md(exc)}")
    meta = {}
if isinstance(meta, dict) and meta:
    st.caption(f"{md(meta.get('images', '?'))} {md(meta.get('split', ''))} images · checkpoint epoch "
               f"{md(meta.get('checkpoint_epoch', '?'))} · {md(meta.get('image_size', '?'))} px · created "
               f"{md(meta.get('created_at', '?'))}")

methods = sorted(index["method"].unique())
layers = sorted(index["layer"].unique())
WHICH = ["all", "correct", "misclassified"]
ORDERS = ["misclassified first", "concentration: lowest first", "concentration: highest first",
          "missed the cells first"]
f = st.columns([2, 2, 2, 3, 2])
method = ui.url_widget(f[0].selectbox, "Method", "g_method", ui.first_explained(index, "method"), methods)
layer = ui.url_widget(f[1].selectbox, "Layer", "g_layer", ui.first_explained(index, "layer"), layers)
which = ui.url_widget(f[2].radio, "Images", "g_which", "all", WHICH)
conf = ui.url_widget(f[3].slider, "Confidence", "g_conf", (0.0, 1.0), bounds=(0.0, 1.0), step=0.05)
limit = ui.url_widget(f[4].number_input, "Per page", "g_limit", 12, bounds=(6, 60), step=6)
s = st.columns([4, 1])
stage = ui.url_widget(s[0].radio, "Stage (true class)", "g_stage", loaders.CLASSES[0], loaders.CLASSES, horizontal=True)
marked = ui.url_widget(s[1].selectbox, "Marked", "g_marked", "all", list(ui.REVIEW_FILTERS),
                       format_func=ui.REVIEW_FILTERS.get,
                       help="Review marks set with each image's Review button (kept in the run's reviews.json).")
marks = ui.review_marks(run)
located = loaders.localisation_table(root, run.path)
if located is not None:
    located = located[(located["method"] == method) & (located["layer"] == layer)].set_index("sha256")
    o = st.columns([2, 3, 5])
    outline = ui.url_widget(o[0].toggle, "Leukocyte outline", "g_outline", True,
                            help="The leukocyte mask's outline (from the data set's segmented copy) on each map.")
    order = ui.url_widget(o[1].selectbox, "Order", "g_order", ORDERS[0], ORDERS)
    o[2].caption("Concentration: share of the map's mass on the leukocytes over their share of the image "
                 "(1 = no better than a uniform map). Pointing: the map's maximum falls on a leukocyte.")
else:
    outline, order = False, ORDERS[0]
style = ui.overlay_controls("g_overlay")

rows = index[(index["method"] == method) & (index["layer"] == layer) & (index["true"] == stage)]
rows = rows[rows["confidence"].astype(float).between(*conf)]
if which != "all":
    rows = rows[rows["correct"] == (1 if which == "correct" else 0)]
images = rows.drop_duplicates("sha256").sort_values(["correct", "confidence"], ascending=[True, False])
if located is not None:
    images = images.join(located[["concentration", "pointing", "mask"]], on="sha256")
    if order.startswith("concentration"):
        images = images.sort_values("concentration", ascending=order.endswith("lowest first"), na_position="last")
    elif order == "missed the cells first":
        images = images.sort_values(["pointing", "concentration"], na_position="last")
if marked != "all":
    images = images[images["sha256"].map(lambda sha: reviews.matches((marks or {}).get(sha), marked)).astype(bool)]
by_target = {(r["sha256"], r["target"]): r for _, r in rows.iterrows()}

left, right = st.columns([3, 1])
with left:
    # Byte-identical copies (same sha256) are shown once.
    files = rows.loc[rows["sha256"].isin(images["sha256"]), "path"].nunique()
    st.subheader(f"{stage}: {len(images)} image(s)" + (f" ({files} files, copies shown once)"
                                                       if files != len(images) else ""))
    if images.empty:
        st.info("No image matches these filters.")
    columns = st.columns(2)
    for i, (_, row) in enumerate(images.head(int(limit)).iterrows()):
        with columns[i % 2], st.container(border=True):
            wrong = row["true"] != row["pred"]
            mark = "✗ misclassified as" if wrong else "✓ predicted"
            st.markdown(f"**{md(row['path'].rsplit('/', 1)[-1])}** · {mark} **{md(row['pred'])}** "
                        f"({float(row['confidence']):.2f})")
            if located is not None and row.get("concentration") == row.get("concentration"):
                hit = "✓ on a leukocyte" if row["pointing"] == 1 else "✗ off the leukocytes"
                st.caption(f"concentration {row['concentration']:.2f} · map maximum {hit}")
            found = {t: by_target[(row["sha256"], t)] for t in TARGETS if (row["sha256"], t) in by_target}
            mask = row.get("mask") if outline and isinstance(row.get("mask"), str) else None
            ui.maps_row(run.path, found, row["true"], row["pred"], style, mask)
            ui.review_card(run.path, row["sha256"], row["path"], marks, key=f"rv_g_{row['sha256']}")
    if len(images) > limit:
        st.caption(f"Showing {int(limit)} of {len(images)}; {order}.")
with right:
    st.subheader("Stage mean map")
    mean_map = loaders.stage_file(root, run.path, stage, STAGE_MEAN_MAP)
    if mean_map:
        # explain averages the maps of the first method and layer it was given (the ones it scores).
        ui.image(mean_map, caption=f"mean {md(ui.first_explained(index, 'method'))} map at "
                                   f"{md(ui.first_explained(index, 'layer'))} over the correct {stage} images "
                                   "(as stored: the method, layer and overlay controls do not apply)")
    else:
        st.caption(f"No {CAMS_STAGES}/<stage>/{STAGE_MEAN_MAP}.")
    panel = loaders.stage_file(root, run.path, stage, STAGE_PANEL)
    if panel:
        ui.image(panel, caption=f"panel, {stage}")

with ui.section("Similar training images"):
    st.subheader("Similar training images")
    named = images.head(int(limit))
    labels = {r["sha256"]: f"{r['path'].rsplit('/', 1)[-1]} (predicted {r['pred']}, {float(r['confidence']):.2f})"
              for _, r in named.iterrows()}
    pick = st.columns([3, 1])
    chosen = pick[0].selectbox("Image", list(labels) or ["(none)"], format_func=lambda k: labels.get(k, k),
                               key="g_similar", help="One of the images on this page.")
    k = pick[1].number_input("Neighbours", 1, 24, 6, key="g_similar_k")
    ui.similar_cases(run.path, lambda: loaders.similar_cases(root, run.path, sha256=chosen, k=int(k))
                     if labels else [])

st.subheader("Faithfulness (ROAD)")
with ui.section("Faithfulness"):
    summary = loaders.faithfulness(root, run.path)
    frame = figures.faithfulness_frame(summary)
    if frame.empty:
        st.caption("faithfulness_summary.json lists no method.")
    else:
        metrics = summary.get("metrics") or sorted(frame["metric"].unique())
        metric = st.selectbox("Metric", metrics, key="g_faith_metric")
        left, right = st.columns([3, 2])
        with left:
            st.plotly_chart(figures.faithfulness_bars(summary, metric), key="faith_bars")
        with right:
            ranking = summary.get("ranking") or {}
            st.markdown("**Ranking per stage** (best first)")
            st.dataframe([{"stage": s, "ranking": " > ".join(order)} for s, order in ranking.items()],
                         hide_index=True, width="stretch")
            table = frame[(frame["metric"] == metric) & (frame["stage"] == stage)]
            table = table[["method", "layer", "mean", "n", "rank"]]
            st.markdown(f"**{stage}: {md(metric)}**")
            st.dataframe(table.sort_values("rank"), hide_index=True, width="stretch",
                         column_config={"mean": st.column_config.NumberColumn(format="%.4f")})
