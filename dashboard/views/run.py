"""Run: the model card (download), metrics with 95% intervals beside what colour-only models score,
per-class table, clickable confusion matrix with the cell's images and Grad-CAM maps, cells-or-context
and stain probes, ROC curves, reliability diagram and learning curves."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import evidence, figures, loaders, ui
from dashboard.escape import code, html_text, md
from engine import modelcard
from engine.runs import BASELINES, MODEL_CARD, OOD

st.title("Run")
runs = ui.found()["runs"]
if not runs:
    ui.empty_state("runs (folders with config.json)")
    st.stop()

root = ui.root()
ordered = sorted(runs, key=lambda r: (not r.evaluated, not r.explained, r.label))
top = st.columns([3, 1, 1])
with top[0]:
    run = ui.pick_run(ordered, key="run", help="Evaluated runs first; runs with Grad-CAM maps first among them.")
data = loaders.load_run(root, run.path)
metrics = data["metrics"]
splits = list(metrics["splits"]) if metrics else []
MODES = ["counts", "row-normalised"]
with top[1]:
    split = ui.url_widget(st.radio, "Split", "run_split", "test" if "test" in splits or not splits else splits[0],
                          splits or ["test"], horizontal=True, disabled=not splits, format_func=md)
with top[2]:
    mode = ui.url_widget(st.radio, "Matrix", "cm_mode", MODES[0], MODES, horizontal=True)

ui.run_problems(run)
cfg = data["config"] or {}
st.caption(ui.config_summary(cfg) + (f" · checkpoint epoch {md(metrics.get('checkpoint_epoch'))}" if metrics else ""))

if run.status != loaders.RUN_CORRUPT:
    with ui.section("Model card"), st.container(key="run_card"):
        card, stored = loaders.model_card(root, run.path)
        found, unreadable = loaders.card_files(root, run.path)
        current = modelcard.compose(found, unreadable, Path(run.path).name)
        left, right = st.columns([1, 3])
        left.download_button("Model card", card.encode("utf-8"), file_name=f"{run.label.replace('/', '-')}-"
                             f"{MODEL_CARD}", mime="text/markdown", key="run_card_download",
                             icon=":material/download:", help="Intended use, data and split, metrics with "
                             "intervals, the colour baselines, the probes, localisation and known limitations, "
                             "in Markdown")
        if not stored:
            right.caption(f"No {code(MODEL_CARD)} in this run yet: this card is rendered from its files; "
                          f"{code(f'python -m engine card {run.path}')} writes it (so do evaluate and explain).")
        elif card != current:
            right.caption(f"The run's {code(MODEL_CARD)} differs from what its files say now (written before they "
                          f"changed, or by an older engine): {code(f'python -m engine card {run.path}')} rewrites "
                          "it. The card below is the current one.")
        else:
            right.caption(f"The run's {code(MODEL_CARD)}, written from its files by the engine.")
        with st.expander("Read the model card"):
            # Rendered from the files by the engine's function, which escapes every text it takes from them.
            st.markdown(current)

if metrics is None:
    st.warning(f"{code(run.label)} is not evaluated: run {code(f'python -m engine evaluate {run.path}')} "
               "to get metrics.json and predictions.csv.", icon=":material/warning:")
for problem in data["problems"]:
    st.caption(f"⚠ {md(problem)}")

if metrics is not None and split in metrics["splits"]:
    m = metrics["splits"][split]
    classes = [str(c) for c in metrics.get("classes") or loaders.CLASSES]
    # Start on the largest error cell (the most interesting one), else the largest cell.
    cm = m["confusion_matrix"]
    cells = [(cm[i][j], i != j, i, j) for i in range(len(classes)) for j in range(len(classes))]
    _, _, i, j = max(cells, key=lambda c: (c[1] and c[0] > 0, c[0]))
    ui.in_url("cell_true", classes[i], classes)
    ui.in_url("cell_pred", classes[j], classes)
    run_evidence = loaders.evidence(root, run.path)
    with ui.section("Metrics"):
        ui.metric_cards(m)
        # What a model that sees only a few colour numbers scores: in this data set the stain names the
        # stage, so the network's accuracy is read beside it, never alone.
        shortcut = run_evidence["baselines"]
        if shortcut is not None and evidence.baseline_entries(shortcut, split):
            with st.container(key="run_baselines"):
                st.markdown("**Beside colour-only models** (same images, Wilson 95% intervals):\n\n"
                            + "\n".join(f"- {md(line)}" for line in evidence.baseline_lines(shortcut, split)))
                st.caption(md(evidence.baseline_sentence(shortcut, split)))
        elif "baselines" in run_evidence["problem_of"]:
            st.warning(f"{md(run_evidence['problem_of']['baselines'])}: the colour-only baselines cannot be shown "
                       "beside this accuracy.", icon=":material/warning:")
        elif shortcut is None:
            st.warning(f"No {code(BASELINES)} for this run: what a model that sees only the colour would score "
                       f"is unknown, and in this data set the stain can name the stage. Evaluate it again "
                       f"({code(f'python -m engine evaluate {run.path}')}) with leukocyte masks to get it.",
                       icon=":material/warning:")
        ood = metrics.get("ood") or {}
        if split in (ood.get("flagged_fraction") or {}):
            st.caption(f"Out-of-distribution check (`{OOD}`): {ood['flagged_fraction'][split]:.1%} of the {md(split)} "
                       f"images score beyond its threshold ({ood['threshold']:.1f}, the {ood['quantile']:.0%} "
                       "quantile of validation images); the Predict page warns for uploads beyond it.")
    left, right = st.columns([5, 4])
    with left, ui.section("Confusion matrix"):
        st.subheader("Confusion matrix")
        fig = figures.confusion_matrix(m["confusion_matrix"], classes,
                                       normalized=m.get("confusion_matrix_normalized"),
                                       mode="normalized" if mode != "counts" else "counts",
                                       selected=(st.session_state.get("cell_true"), st.session_state.get("cell_pred")))
        event = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key=f"cm_{run.label}_{split}",
                                config={"displayModeBar": False})
        clicked = ui.clicked_cell(event, classes)
        if clicked and clicked != st.session_state.get("cell_clicked"):
            st.session_state["cell_clicked"] = clicked
            st.session_state["cell_true"], st.session_state["cell_pred"] = clicked
            st.rerun()
        st.caption("Click a cell to see its images (or pick it below).")
    with right, ui.section("Per-class metrics"):
        st.subheader("Per stage")
        st.dataframe(ui.per_class_table(m), hide_index=True, width="stretch",
                     column_config={c: st.column_config.NumberColumn(format="%.3f")
                                    for c in ("precision", "recall (sensitivity)", "specificity", "F1", "ROC-AUC")})
        macro = m.get("macro") or {}
        st.caption(f"macro precision {ui.fmt(macro.get('precision'))} · macro recall {ui.fmt(macro.get('recall'))} · "
                   f"weighted F1 {ui.fmt(m.get('weighted_f1'))} · "
                   f"Brier {ui.fmt((m.get('calibration') or {}).get('brier'))}")

    with ui.section("Images of the selected cell"):
        pick = st.columns([1, 1, 2, 2])
        true = pick[0].selectbox("True stage", classes, key="cell_true")
        pred = pick[1].selectbox("Predicted stage", classes, key="cell_pred")
        index = ui.cams_index(run)
        methods = sorted(index["method"].unique()) if index is not None else []
        layers = sorted(index["layer"].unique()) if index is not None else []
        method = ui.url_widget(pick[2].selectbox, "Grad-CAM method", "cell_method",
                               ui.first_explained(index, "method") if methods else "(none)", methods or ["(none)"])
        layer = ui.url_widget(pick[3].selectbox, "Layer", "cell_layer",
                              ui.first_explained(index, "layer") if layers else "(none)", layers or ["(none)"])
        pred_rows = data["predictions"]
        if pred_rows is None:
            st.warning("predictions.csv is missing: cannot list the cell's images.", icon=":material/warning:")
        else:
            cell = pred_rows[(pred_rows["split"] == split) & (pred_rows["true"] == true) & (pred_rows["pred"] == pred)]
            cell = cell.sort_values("confidence", ascending=False)
            limit = 24
            with st.container(key="cell_gallery"):
                verdict = "correct" if true == pred else "misclassified"
                st.markdown(f"#### true **{md(true)}** → predicted **{md(pred)}** ({verdict}): "
                            f"<span class='cell-count'>{len(cell)} images</span>", unsafe_allow_html=True)
                if index is None:
                    st.info(f"No Grad-CAM maps for this run: run {code(f'python -m engine explain {run.path}')}.")
                maps = {}
                if index is not None:
                    sel = index[(index["method"] == method) & (index["layer"] == layer) & (index["split"] == split)]
                    for _, r in sel.iterrows():
                        maps.setdefault(r["sha256"], {})[r["target"]] = r
                    if sel.empty and len(cell):
                        st.caption(f"Grad-CAM maps exist for the {md(', '.join(sorted(index['split'].unique())))} "
                                   "split(s) only.")
                marks = ui.review_marks(run)
                style = ui.overlay_controls("cell_overlay") if maps else None
                columns = st.columns(3)
                for i, (_, row) in enumerate(cell.head(limit).iterrows()):
                    with columns[i % 3], st.container(border=True):
                        found = maps.get(row["sha256"], {})
                        caption = f"{md(row['path'].rsplit('/', 1)[-1])} · conf {float(row['confidence']):.2f}"
                        st.markdown(f"<span class='cell-image' title='{html_text(row['path'])}'>{caption}</span>",
                                    unsafe_allow_html=True)
                        if found:
                            ui.maps_row(run.path, found, true, pred, style)
                        else:
                            ui.image(None, caption="no map for this image")
                        # The position keeps keys unique where copies of one image (same sha256) share a cell.
                        ui.review_card(run.path, row["sha256"], row["path"], marks, key=f"rv_c_{i}_{row['sha256'][:8]}")
                if len(cell) > limit:
                    st.caption(f"Showing the {limit} most confident of {len(cell)} images.")

    with ui.section("Context reliance"):
        context = run_evidence["context"]
        if context is not None and context.get("split") == split:
            st.subheader("Cells or context")
            st.markdown(evidence.context_sentence(context))
            st.plotly_chart(evidence.context_bars(context), key="run_context")
            donor = evidence.donor_bars(context, "With another stage's stain: how often the answer is the "
                                                 "donor's stage")
            if donor is not None:
                st.plotly_chart(donor, key="run_donor")
            st.caption("The Evidence page puts this beside where the maps point.")

    st.subheader("Curves")
    left, right = st.columns(2)
    with left, ui.section("ROC curves"):
        if data["predictions"] is not None:
            part = data["predictions"][data["predictions"]["split"] == split]
            st.plotly_chart(figures.roc_curves(part, title=f"ROC, one stage vs rest ({html_text(split)})"), key="roc")
    with right, ui.section("Reliability diagram"):
        if m.get("calibration"):
            st.plotly_chart(figures.reliability(m["calibration"], title=f"Reliability ({html_text(split)})"),
                            key="reliability")

with ui.section("Learning curves"):
    if data["history"] is not None and len(data["history"]):
        st.plotly_chart(figures.history_panels(data["history"]), key="history")
    elif not metrics:
        st.caption("No epoch finished yet.")
