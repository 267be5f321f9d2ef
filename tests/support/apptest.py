"""The dashboard's pages through Streamlit's AppTest, and what they show (shared by the dashboard tests).

``app`` opens a page as it renders (exceptions left for the test to check), ``checked_app`` one that must
render without an exception, ``sweeps_app`` the Sweeps page (more time: it may hold 200 trials). The
readers collect a page's text (``texts``: everything; ``sweep_texts``: Markdown, captions, info boxes and
subheaders; ``boxes``: success, warning and info boxes; ``visible``: the chosen kinds, unescaped), its
Plotly charts (``charts``, ``chart``) and a chart's arrays (``values``).
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "dashboard" / "app.py")


def app(root: Path, monkeypatch: pytest.MonkeyPatch, page: str = "data"):
    """The dashboard on ``root`` (ALL_OUTPUTS), switched to ``page`` (a file of dashboard/views/)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ALL_OUTPUTS", str(root))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    if page != "data":
        at.switch_page(f"views/{page}.py").run()
    return at


def checked_app(root: Path, monkeypatch: pytest.MonkeyPatch, page: str):
    """``page`` of the dashboard on ``root``, asserted to render without an exception."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ALL_OUTPUTS", str(root))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def sweeps_app(root: Path, monkeypatch: pytest.MonkeyPatch):
    """The Sweeps page of the dashboard on ``root``, asserted to render without an exception."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ALL_OUTPUTS", str(root))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("views/sweeps.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def texts(at) -> str:
    parts = [m.value for m in at.markdown] + [t.value for t in at.title] + [h.value for h in at.header]
    parts += [s.value for s in at.subheader]
    parts += [c.value for c in at.caption] + [w.value for w in at.warning] + [i.value for i in at.info]
    parts += [s.value for s in at.success] + [e.value for e in at.error]
    return "\n".join(str(p) for p in parts)


def sweep_texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [s.value for s in at.subheader]
    return "\n".join(str(p) for p in parts)


def charts(at) -> dict[str, dict]:
    """Plotly charts on the page by their widget key's suffix (what the view passes as key=)."""
    out = {}
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        key = chart.proto.id.rsplit("-", 1)[-1] if chart.proto.id else ""
        out[key] = spec
    return out


def chart(at, prefix: str) -> dict | None:
    return next((spec for key, spec in charts(at).items() if prefix in key), None)


def values(array) -> list[float]:
    """A Plotly spec's array: a list, or a typed array ({"dtype", "bdata"} in base64)."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def boxes(at) -> str:
    """The success, warning and info boxes' text, without the backslashes that keep file values literal."""
    return "\n".join(str(x.value) for x in [*at.success, *at.warning, *at.info]).replace("\\", "")


def unescaped(value: object) -> str:
    """Text as the page shows it: Markdown backslash escapes and entities resolved."""
    return html.unescape(re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", str(value)))


def visible(at, *kinds: str) -> str:
    return " ".join(unescaped(e.value) for kind in kinds for e in getattr(at, kind))
