"""Predict: upload a smear image, get the stage probabilities and its Grad-CAM map from a chosen run."""

from __future__ import annotations

import streamlit as st

from dashboard import figures, ui

st.title("Predict")
runs = [r for r in ui.found()["runs"] if r.has_checkpoint]
if not runs:
    ui.empty_state("trained runs (folders with checkpoints/best.pt)")
    st.stop()

ordered = sorted(runs, key=lambda r: (r.status not in ("complete", "stopped"), not r.evaluated, r.label))
top = st.columns([3, 2])
with top[0]:
    run = ui.pick_run(ordered, key="predict_run", help="Any run with checkpoints/best.pt.")
ui.run_problems(run)
with top[1]:
    target = st.selectbox("Map for", ["predicted stage", "benign", "early", "pre", "pro"], key="predict_target")

upload = st.file_uploader("Blood smear image (JPEG, PNG, BMP or TIFF)", key="upload",
                          type=["jpg", "jpeg", "png", "bmp", "tif", "tiff"])
if upload is None:
    st.caption("The image is resized (short side) and centre-cropped to the run's input size, as in training. "
               "Research use only: not a diagnostic device.")
    st.stop()


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def model_of(path: str, version: tuple | None):  # version (mtime, size) is part of the key
    from dashboard import inference  # torch is imported here, on this page only

    return inference.load_model(path)


data = upload.getvalue()
try:
    from dashboard import inference
    from dashboard.loaders import stamp

    cfg, model = model_of(run.path, stamp(f"{run.path}/checkpoints/best.pt"))
except (OSError, RuntimeError, KeyError, ValueError) as exc:
    st.error(f"The model of `{run.label}` cannot be loaded: {exc}", icon=":material/block:")
    st.stop()
try:
    image = inference.preprocess(data, cfg.image_size)
except ValueError as exc:
    st.error(f"`{upload.name}` cannot be used: {exc}.", icon=":material/block:")
    st.stop()

with st.spinner("Classifying and computing Grad-CAM…"):
    result = inference.predict(model, image, None if target == "predicted stage" else ["benign", "early", "pre",
                                                                                     "pro"].index(target))
st.success(f"Predicted stage: **{result['pred']}** ({result['probabilities'][result['pred']]:.1%})",
           icon=":material/biotech:")
left, mid, right = st.columns([2, 2, 3])
with left:
    st.image(image, caption=f"input as the model sees it ({cfg.image_size} px)", width="stretch")
with mid:
    st.image(result["overlay"], caption=f"Grad-CAM (norm5) for {result['target']}", width="stretch")
with right:
    st.plotly_chart(figures.probabilities_bar(result["probabilities"]), key="proba")
