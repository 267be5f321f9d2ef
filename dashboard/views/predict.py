"""Predict: upload a smear image, get the stage probabilities and its Grad-CAM map from a chosen run."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import figures, loaders, ui
from dashboard.escape import code, md
from engine.runs import BEST_CHECKPOINT, CHECKPOINTS, OOD

# As the launcher's --server.maxUploadSize; a bare `streamlit run` would otherwise accept 200 MB.
MAX_UPLOAD_BYTES = 25 * 2**20

st.title("Predict")
BEST = f"{CHECKPOINTS}/{BEST_CHECKPOINT}"
trained = [r for r in ui.found()["runs"] if r.has_checkpoint]
if not trained:
    ui.empty_state(f"trained runs (folders with {BEST})")
    st.stop()

finished = (loaders.RUN_COMPLETE, loaders.RUN_STOPPED)
ordered = sorted(trained, key=lambda r: (r.status not in finished, not r.evaluated, r.label))
top = st.columns([3, 2])
with top[0]:
    run = ui.pick_run(ordered, key="predict_run", help=f"Any run with {BEST}.")
ui.run_problems(run)
with top[1]:
    target = ui.url_widget(st.selectbox, "Map for", "predict_target", "predicted stage",
                           ["predicted stage", *loaders.CLASSES])

upload = st.file_uploader("Blood smear image (JPEG, PNG, BMP or TIFF)", key="upload",
                          type=["jpg", "jpeg", "png", "bmp", "tif", "tiff"])
if upload is None:
    st.caption("The image is resized (short side) and centre-cropped to the run's input size, as in training. "
               "Research use only: not a diagnostic device.")
    st.stop()


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def model_of(path: str, version: tuple | None, ood_version: tuple | None):  # (mtime, size) stamps key the cache
    from engine.predict import Predictor  # torch is imported here, on this page only

    return Predictor(Path(path), "best", "cpu")


data = upload.getvalue()
try:
    predictor = model_of(run.path, loaders.stamp(f"{run.path}/{BEST}"), loaders.stamp(f"{run.path}/{OOD}"))
    cfg = predictor.cfg
except (OSError, RuntimeError, KeyError, ValueError) as exc:
    st.error(f"The model of {code(run.label)} cannot be loaded: {md(exc)}", icon=":material/block:")
    st.stop()
try:
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"file too large ({len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB)")
    image = predictor.preprocess(data)
except ValueError as exc:
    st.error(f"{code(upload.name)} cannot be used: {md(exc)}.", icon=":material/block:")
    st.stop()

with st.spinner("Classifying and computing Grad-CAM…"):
    result = predictor.analyse(image, None if target == "predicted stage" else loaders.CLASSES.index(target))
distance, threshold = result.ood_distance, result.ood_threshold
if result.out_of_distribution:
    st.warning(f"**Unlike the training images.** {code(upload.name)} is farther from every stage in the model's "
               f"feature space ({distance:.1f}) than {result.ood_quantile:.0%} of the validation images "
               f"({threshold:.1f}): another stain, magnification or cell type, or not a smear. Do not trust the "
               "prediction below.", icon=":material/warning:")
st.success(f"Predicted stage: **{md(result.pred)}** ({result.probabilities[result.pred]:.1%})",
           icon=":material/biotech:")
if distance is None:
    st.caption("No out-of-distribution check for this run: `python -m engine evaluate RUN` adds one "
               f"({OOD}).")
elif distance <= threshold:
    st.caption(f"Like the training images: feature distance {distance:.1f}, below the threshold of "
               f"{threshold:.1f} that {result.ood_quantile:.0%} of the validation images stay under.")
left, mid, right = st.columns([2, 2, 3])
with left:
    st.image(image, caption=f"input as the model sees it ({cfg.image_size} px)", width="stretch")
with mid:
    st.image(result.overlay, caption=f"{md(result.method)} at {md(result.layer)} for {md(result.target)}",
             width="stretch")
with right:
    st.plotly_chart(figures.probabilities_bar(result.probabilities), key="proba")

with ui.section("Similar training images"):
    st.subheader("Similar training images")
    ui.similar_cases(run.path, lambda: loaders.similar_cases(ui.root(), run.path, vector=result.features, k=6))
