"""The dashboard's one entry file: ``streamlit run dashboard/app.py -- --outputs DIR``.

Registers the pages with ``st.navigation`` and shows the outputs folder in the sidebar.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `streamlit run` puts only dashboard/ on the path
    sys.path.insert(0, str(REPO))

import streamlit as st  # noqa: E402

from dashboard import loaders, ui  # noqa: E402

st.set_page_config(page_title="ALL stages · DenseNet dashboard", page_icon=":material/biotech:", layout="wide")

pages = [
    st.Page("views/data.py", title="Data", icon=":material/database:", url_path="data", default=True),
    st.Page("views/sweeps.py", title="Sweeps", icon=":material/tune:", url_path="sweeps"),
    st.Page("views/run.py", title="Run", icon=":material/analytics:", url_path="run"),
    st.Page("views/gallery.py", title="Grad-CAM gallery", icon=":material/photo_library:", url_path="gallery"),
    st.Page("views/features.py", title="Feature map", icon=":material/scatter_plot:", url_path="features"),
    st.Page("views/evidence.py", title="Evidence", icon=":material/fact_check:", url_path="evidence"),
    st.Page("views/compare.py", title="Compare runs", icon=":material/compare:", url_path="compare"),
    st.Page("views/predict.py", title="Predict", icon=":material/upload_file:", url_path="predict"),
    st.Page("views/present.py", title="Present", icon=":material/slideshow:", url_path="present"),
]
navigation = st.navigation(pages)

with st.sidebar:
    root = ui.root()
    st.caption("Outputs folder")
    st.code(str(root), language=None)
    if not root.is_dir():
        st.warning("This folder does not exist yet.")
    else:
        summary = loaders.outputs_summary(ui.found())
        st.caption(" · ".join(f"{v} {k}" for k, v in summary.items()))
    if st.button("Reload files", icon=":material/refresh:", help="Files are re-read when they change; this also "
                 "rescans the folder for new runs and sweeps now."):
        loaders._scan.clear()

navigation.run()
