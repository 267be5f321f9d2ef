"""Evidence: could colour alone name the stage, do the maps point at the leukocytes, are they faithful to
the model, and does the model need the cells (or the stain) at all? One plain verdict per method and
layer, then the numbers behind it per stage."""

from __future__ import annotations

import streamlit as st

from dashboard import evidence, figures, loaders, ui
from dashboard.escape import code, md
from engine.runs import BASELINES

st.title("Evidence")
st.caption("Research software: these checks say how far the maps can be trusted; they do not replace expert review.")
runs = [r for r in ui.found()["runs"] if r.evaluated or r.explained]
if not runs:
    ui.empty_state("evaluated or explained runs (python -m engine evaluate / explain RUN)")
    st.stop()

root = ui.root()
ordered = sorted(runs, key=lambda r: (not r.explained, not r.evaluated, r.label))
run = ui.pick_run(ordered, key="evidence_run")
ui.run_problems(run)
found = loaders.evidence(root, run.path)
for problem in found["problems"]:
    if problem != found["problem_of"].get("baselines"):  # that one is the warning where the baselines would be
        st.caption(f"⚠ {md(problem)}")
localised, context, faith, sanity, shortcut = (found[k] for k in ("localisation", "context", "faithfulness", "sanity",
                                                                   "baselines"))
# The split the network's headline accuracy is usually read on; context.json is measured on it too.
SPLIT = "test"

st.header("Verdicts")
with ui.section("Verdicts"):
    rows = evidence.verdict_table(localised, faith, sanity)
    if rows.empty:
        st.info("No localisation results: explain a run whose data was prepared with leukocyte masks "
                "(a `Segmented/` folder beside `Original/`, or `prepare --masks DIR`).")
    else:
        st.dataframe(rows, hide_index=True, width="stretch",
                     column_config={"concentration": st.column_config.NumberColumn(format="%.2f"),
                                    "pointing": st.column_config.NumberColumn(format="%.2f")})
    if shortcut is not None and evidence.baseline_entries(shortcut, SPLIT):
        st.markdown(f"**Colour alone.** {md(evidence.baseline_sentence(shortcut, SPLIT))}")
    if context is not None:
        st.markdown(f"**Cells or context.** {evidence.context_sentence(context)}")

st.header("Could colour alone name the stage?")
with ui.section(f"Shortcut baselines ({BASELINES})"):
    if shortcut is None:
        problem = found["problem_of"].get("baselines")
        st.warning(f"{md(problem)}: the colour-only baselines cannot be shown." if problem
                   else f"No {code(BASELINES)} for this run: evaluate it again with leukocyte masks "
                      f"({code(f'python -m engine evaluate {run.path}')}) to see what a model that sees only the "
                      "colour scores beside the network.", icon=":material/warning:")
    elif not evidence.baseline_entries(shortcut, SPLIT):
        st.caption(f"{code(BASELINES)} holds no {md(SPLIT)} split.")
    else:
        st.markdown("\n".join(f"- {md(line)}" for line in evidence.baseline_lines(shortcut, SPLIT)))
        st.caption(md(evidence.baseline_sentence(shortcut, SPLIT)))
        st.plotly_chart(evidence.baseline_bars(shortcut, SPLIT), key="ev_baselines")
        st.dataframe(evidence.baseline_frame(shortcut, SPLIT).drop(columns=["how it was made"]), hide_index=True,
                     width="stretch", column_config={
                         "accuracy": st.column_config.NumberColumn(format="%.3f"),
                         "balanced accuracy": st.column_config.NumberColumn(format="%.3f")})
        with st.expander("How the baselines were made"):
            for _, row in evidence.baseline_frame(shortcut, SPLIT).iterrows():
                st.markdown(f"- **{md(row['model'])}**: {md(row['how it was made'])}")
            st.markdown("A baseline shows what the colour *can* tell on this data, not what the network uses: "
                        "the stain probes below (another stage's stain, greyscale) ask the network itself.")

st.header("Do the maps point at the leukocytes?")
with ui.section("Localisation (cams/localisation.json)"):
    if localised is None:
        st.caption("`cams/localisation.json` not found.")
    else:
        pairs = [(r["method"], r["layer"]) for r in localised.get("ranking", [])]
        labels = [f"{m} at {layer}" for m, layer in pairs]
        choice = ui.url_widget(st.selectbox, "Method and layer (best localising first)", "evidence_pair",
                               labels[0] if labels else "", labels)
        method, layer = pairs[labels.index(choice)]
        result = evidence.find_result(localised, method, layer)
        baselines = localised.get("baselines") or {}
        st.caption(f"{md(localised.get('images', '?'))} {md(localised.get('split', ''))} images with a leukocyte "
                   f"mask ({md(localised.get('images_without_mask', 0))} without) · maps for the predicted stage · "
                   f"pointing tolerance {md(localised.get('pointing_tolerance_px', '?'))} px at "
                   f"{md(localised.get('image_size', '?'))} px · baselines: {md(baselines.get('centre', ''))}; "
                   f"{md(baselines.get('shuffled', ''))}")
        st.dataframe(evidence.stage_verdicts(result), hide_index=True, width="stretch")
        left, right = st.columns(2)
        with left:
            st.plotly_chart(evidence.localisation_bars(result, "concentration", "Concentration on the leukocytes"),
                            key="ev_conc")
        with right:
            st.plotly_chart(evidence.localisation_bars(result, "pointing", "Pointing game"), key="ev_point")

st.header("Are the maps faithful to the model?")
left, right = st.columns([3, 2])
with left, ui.section("Faithfulness (cams/faithfulness_summary.json)"):
    if faith is None or figures.faithfulness_frame(faith).empty:
        st.caption("`cams/faithfulness_summary.json` not found or empty.")
    else:
        st.plotly_chart(figures.faithfulness_bars(faith, faith.get("rank_by")), key="ev_faith")
with right, ui.section("Sanity check (cams/sanity.json)"):
    if sanity:
        st.markdown("**Model-randomisation sanity check** (Adebayo et al. 2018)")
        st.dataframe(evidence.sanity_frame(sanity), hide_index=True, width="stretch")
    else:
        st.caption("`cams/sanity.json` not found or empty.")

st.header("Does the model need the cells, or the stain?")
with ui.section("Cells or context (context.json)"):
    if context is None:
        st.caption("`context.json` not found: evaluate a run whose data was prepared with leukocyte masks.")
    else:
        st.markdown(evidence.context_sentence(context))
        st.plotly_chart(evidence.context_bars(context), key="ev_context")
        donor = evidence.donor_bars(context, "With another stage's stain: how often the answer is the donor's stage")
        if donor is not None:
            st.plotly_chart(donor, key="ev_donor")
        with st.expander("How the images were changed"):
            for variant, how in context.get("how", {}).items():
                st.markdown(f"- **{md(evidence.VARIANTS.get(variant, variant))}**: {md(how)}")
