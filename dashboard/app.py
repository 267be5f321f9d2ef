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
from dashboard.pages import DEFAULT, PAGES  # noqa: E402

st.set_page_config(page_title="ALL stages · DenseNet dashboard", page_icon=":material/biotech:", layout="wide")

pages = [st.Page(p.file, title=p.title, icon=p.icon, url_path=p.slug, default=p == DEFAULT) for p in PAGES]
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
