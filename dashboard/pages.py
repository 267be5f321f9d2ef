"""The dashboard's pages: one table, read by the entry file (st.navigation), the links between pages, the
benchmark, the load test and the tests. A new page is one entry here plus its file in dashboard/views/.

Nothing here imports streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Page:
    slug: str  # its URL path (the first page is the default one, served at the root too)
    file: str  # relative to dashboard/, as st.Page and AppTest.switch_page take it
    title: str  # in the navigation and the browser tab
    icon: str


PAGES = (
    Page("data", "views/data.py", "Data", ":material/database:"),
    Page("sweeps", "views/sweeps.py", "Sweeps", ":material/tune:"),
    Page("run", "views/run.py", "Run", ":material/analytics:"),
    Page("gallery", "views/gallery.py", "Grad-CAM gallery", ":material/photo_library:"),
    Page("features", "views/features.py", "Feature map", ":material/scatter_plot:"),
    Page("evidence", "views/evidence.py", "Evidence", ":material/fact_check:"),
    Page("compare", "views/compare.py", "Compare runs", ":material/compare:"),
    Page("predict", "views/predict.py", "Predict", ":material/upload_file:"),
    Page("present", "views/present.py", "Present", ":material/slideshow:"),
)
DEFAULT = PAGES[0]
SLUGS = tuple(p.slug for p in PAGES)
_BY_SLUG = {p.slug: p for p in PAGES}


def page(slug: str) -> Page:
    """The page with URL path ``slug`` (KeyError for none)."""
    return _BY_SLUG[slug]
