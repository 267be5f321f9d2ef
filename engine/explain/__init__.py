"""Grad-CAM explanations of a trained run: ``python -m engine explain RUN``.

The package is a thin layer over pytorch-grad-cam, one module per concern:

    methods.py       the CAM methods by CLI name, batched map computation, throughput
    faithfulness.py  ROAD and confidence-change scores per image, intervals, ranking
    sanity.py        the model-randomisation test (Adebayo et al. 2018)
    figures.py       overlays, stage panels, multi-layer and side-by-side views (pure)
    stages.py        per-stage summaries of the maps (pure)
    pipeline.py      ``explain_run`` and ``compare_runs``: fill ``RUN/cams/``

The command line is ``engine/commands/explain.py``.

Nothing is imported here, so ``import engine.explain`` costs nothing.
"""
