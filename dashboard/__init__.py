"""Streamlit dashboard over the outputs folder: data, sweeps, runs, Grad-CAM, compare, predict, present.

Launch with ``python -m dashboard --outputs DIR`` (binds 127.0.0.1:8501 by default).
The dashboard only reads inside the outputs folder; the Present page writes its decks to
``OUTPUTS/exports/``, and review marks go to each run's ``reviews.json`` (dashboard/reviews.py).
It never imports Ray, and imports PyTorch only on the Predict page.
"""
