"""Text read from the outputs folder, made inert for where it is shown.

A run folder is data, not code: a path in ``predictions.csv``, a class in ``metrics.json`` or a
label in ``cams/index.csv`` may hold HTML, Markdown or control characters. Every value that
comes from a file passes one of these on its way to the screen or an export:

- :func:`md` for Streamlit Markdown (``st.markdown`` with or without ``unsafe_allow_html``,
  captions, warnings, labels): no tag, link, image, heading or directive can form.
- :func:`code` for an inline code span in Markdown (paths, run labels).
- :func:`html_text` for HTML element text and attribute values (the HTML report, ``<span>``
  titles in page Markdown) and for Plotly labels, which Plotly reads as a subset of HTML.
- :func:`plain` for PPTX text; :func:`mpl` for matplotlib text (no mathtext).

No Streamlit here, so the helpers are tested directly.
"""

from __future__ import annotations

import html
import re
import string
from typing import Any

# C0 and C1 control characters other than tab and newline, and lone surrogates (from JSON "\ud800"):
# XML (PPTX) refuses them and UTF-8 cannot encode the surrogates.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
# CommonMark lets a backslash escape every ASCII punctuation character; <, > and & become entities
# instead, so that the text stays inert even where Streamlit renders raw HTML.
_MARKDOWN = {ord(c): "\\" + c for c in string.punctuation}
_MARKDOWN.update({ord("<"): "&lt;", ord(">"): "&gt;", ord("&"): "&amp;", ord("\n"): " ", ord("\t"): " "})


def plain(value: Any) -> str:
    """``str(value)`` without control characters and lone surrogates."""
    return _UNPRINTABLE.sub("", str(value))


def md(value: Any) -> str:
    """Literal text inside Streamlit Markdown; on one line, so it cannot start a block."""
    return plain(value).translate(_MARKDOWN)


def code(value: Any) -> str:
    """An inline code span showing ``value`` literally, whatever backticks it holds."""
    text = plain(value).replace("\n", " ").replace("\t", " ") or " "
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def html_text(value: Any) -> str:
    """Text for an HTML element or a quoted attribute value (also a Plotly label)."""
    return html.escape(plain(value), quote=True)


def mpl(value: Any) -> str:
    """Text for matplotlib: a ``$`` must not start mathtext (a malformed formula fails the whole figure)."""
    return plain(value).replace("$", r"\$")
