"""Meeting decks from chosen findings: a PPTX (python-pptx, matplotlib images) and a self-contained
HTML report (images base64-embedded, Plotly JS inlined: it works offline).

``Findings`` names what to show; ``build(root, findings)`` gathers it from the run folder and
returns both documents; ``save`` writes them to ``OUTPUTS/exports/``. Text from the run folder
(review notes included) goes into the HTML through ``html_text``, into the PPTX through ``plain``
and into matplotlib figures through ``mpl`` (dashboard.escape).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from . import loaders
from .paths import inside
from .report_gather import (
    CARD_TITLE,
    CONTEXT_TITLE,
    LOCALISATION_TITLE,
    MAX_REVIEWED,
    NOTICE,
    SMEAR_TITLE,
    STAIN_TITLE,
    Deck,
    Findings,
    auto_pick,
    gather,
    stage_candidates,
)
from .report_html import html_deck
from .report_pptx import pptx_deck

__all__ = ["CARD_TITLE", "CONTEXT_TITLE", "LOCALISATION_TITLE", "MAX_REVIEWED", "NOTICE", "SMEAR_TITLE", "STAIN_TITLE",
           "Deck", "Findings", "auto_pick", "build", "save", "stage_candidates"]


def build(root: Path | str, findings: Findings) -> Deck:
    root = Path(root).resolve()
    data = gather(root, findings)
    pptx, slides = pptx_deck(data, findings)
    return Deck(pptx=pptx, html=html_deck(data, findings), slides=slides, warnings=data["warnings"])


def save(root: Path | str, deck: Deck, name: str) -> dict[str, Path]:
    """Write the deck to OUTPUTS/exports/<stamp>-<name>.{pptx,html}; the only files the dashboard writes."""
    root = Path(root).resolve()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:60] or "deck"
    folder = inside(root, loaders.EXPORTS)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"
    paths = {"pptx": folder / f"{stem}.pptx", "html": folder / f"{stem}.html"}
    paths["pptx"].write_bytes(deck.pptx)
    paths["html"].write_text(deck.html, encoding="utf-8")
    return paths
