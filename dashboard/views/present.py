"""Present: pick findings (a run, stages, images, methods) and export a meeting deck (PPTX + offline HTML)."""

from __future__ import annotations

import streamlit as st

from dashboard import loaders, report, ui
from dashboard.escape import code, md, plain

st.title("Present")
runs = sorted((r for r in ui.found()["runs"] if r.evaluated), key=lambda r: (not r.explained, r.label))
if not runs:
    ui.empty_state("evaluated runs to present")
    st.stop()

root = ui.root()
st.caption("Decks are written to `exports/` in the outputs folder and offered for download. Slides use large "
           "fonts for projectors; the HTML report embeds every image and Plotly itself, so it opens offline. "
           "The slides tell one story: what the headline accuracy means (its split, unseen smears, the colour "
           "baseline), what the model reads, where its maps point, which model to use and the model card's key "
           "lines; then an appendix (the HTML report ends with the whole model card).")
top = st.columns([3, 1, 2])
with top[0]:
    run = ui.pick_run(runs, key="present_run")
split = ui.url_widget(top[1].radio, "Split", "present_split", "test", ["test", "val"])
title = top[2].text_input("Title", "ALL stage classifier: findings", key="present_title")

index = ui.cams_index(run)
if not run.explained:
    st.info("This run has no Grad-CAM maps: the deck will hold metrics and the confusion matrix only.")

c = st.columns([3, 3, 2, 2])
stages = c[0].multiselect("Stages", list(loaders.CLASSES), default=list(loaders.CLASSES), key="present_stages")
all_methods = sorted(index["method"].unique()) if index is not None else []
methods = c[1].multiselect("Grad-CAM methods", all_methods, default=all_methods[:2], key="present_methods")
per_stage = c[2].number_input("Images per stage", 1, 8, 4, key="present_n")
normalized = c[3].toggle("Row-normalised matrix", True, key="present_norm")
faith = c[3].toggle("Faithfulness slide", True, key="present_faith", disabled=index is None)
with_evidence = c[3].toggle("Evidence slides", True, key="present_evidence",
                            help="Cells or context with the stain probes, localisation on the leukocytes and one "
                            "evidence slide per stage (the colour-only baselines are beside the metrics either way)")
marks = ui.review_marks(run)
with_reviewed = c[3].toggle("Reviewed images", False, key="present_reviewed", disabled=not marks,
                            help=f"The {len(marks or {})} image(s) marked with Review in the gallery or the Run "
                            f"page's cell view, with their labels and notes (at most {report.MAX_REVIEWED})")

chosen: dict[str, list[str]] = {}
if index is not None and stages:
    layers = sorted(index["layer"].unique())
    layer = ui.first_explained(index, "layer")
    with st.expander("Choose the images of each stage (default: the most confident errors, then correct ones)"):
        for stage in stages:
            cand = report.stage_candidates(index, stage, layer)
            # Multiselect options are plain text: no Markdown to escape, only unprintable characters.
            labels = {r.sha256: plain(f"{'✗' if r.correct == 0 else '✓'} {r.path.rsplit('/', 1)[-1]} → {r.pred} "
                                      f"({r.confidence:.2f})") for r in cand.itertuples()}
            auto = report.auto_pick(cand, int(per_stage))
            chosen[stage] = st.multiselect(stage, list(labels), default=auto, format_func=labels.get,
                                           key=f"present_img_{stage}", max_selections=8)

if st.button("Build deck", type="primary", icon=":material/slideshow:", key="present_build"):
    findings = report.Findings(run=run.path, split=split, stages=stages, methods=methods, images=chosen,
                               per_stage=int(per_stage), title=title, normalized=normalized, faithfulness=faith,
                               evidence=with_evidence, reviewed=with_reviewed)
    try:
        with st.spinner("Rendering figures and writing the deck…"):
            deck = report.build(root, findings)
            paths = report.save(root, deck, run.label.replace("/", "-"))
        st.session_state["present_result"] = {"pptx": str(paths["pptx"]), "html": str(paths["html"]),
                                              "slides": deck.slides, "warnings": deck.warnings}
    except (loaders.LoadError, OSError, ValueError) as exc:
        st.error(f"The deck could not be built: {md(exc)}", icon=":material/block:")

result = st.session_state.get("present_result")
if result:
    st.success(f"Deck written: {code(result['pptx'])} and {code(result['html'])} ({len(result['slides'])} slides)",
               icon=":material/check_circle:")
    for warning in result["warnings"]:
        st.caption(f"⚠ {md(warning)}")
    st.markdown("**Slides:** " + " · ".join(f"{i}. {md(t)}" for i, t in enumerate(result["slides"], 1)))
    d = st.columns(2)
    for col, kind, mime in ((d[0], "pptx", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
                            (d[1], "html", "text/html")):
        path = root / loaders.EXPORTS / result[kind].rsplit("/", 1)[-1]
        if path.is_file():
            col.download_button(f"Download {kind.upper()}", path.read_bytes(), file_name=path.name, mime=mime,
                                key=f"dl_{kind}", icon=":material/download:")
