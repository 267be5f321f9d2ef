"""Pictures of maps, as pure functions returning arrays or PNG bytes.

Figures are drawn with matplotlib's object API (``Figure`` + Agg canvas), never pyplot, so
nothing global changes and they can be drawn from any thread. Sizes and fonts are chosen
to stay readable on a projector.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TITLE_SIZE = 20
CAPTION_SIZE = 13
CELL_INCHES = 2.6


@dataclass(frozen=True)
class Cell:
    """One picture in a grid, with the caption drawn above it."""

    image: np.ndarray  # uint8 HxWx3, or float HxW in [0, 1] drawn with the jet colour map
    caption: str = ""


# Colour maps a user may pick for an overlay (OpenCV's, as pytorch-grad-cam draws with them).
COLORMAPS = ("jet", "turbo", "inferno", "viridis", "magma", "hot")


def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.5, colormap: str = "jet",
            threshold: float = 0.0) -> np.ndarray:
    """The map in ``colormap`` colours blended over the RGB uint8 image (pytorch-grad-cam's style).

    ``image_weight`` is the image's share of the blend (1 - the map's opacity). Pixels where the map
    is below ``threshold`` show the image alone, so only the regions the map ranks highest are coloured.
    """
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if colormap not in COLORMAPS:
        raise ValueError(f"colour map {colormap!r}: one of {', '.join(COLORMAPS)}")
    cam = cam.astype(np.float32)
    blended = show_cam_on_image(image.astype(np.float32) / 255, cam, use_rgb=True, image_weight=image_weight,
                                colormap=getattr(cv2, f"COLORMAP_{colormap.upper()}"))
    if threshold > 0:
        below = cam < threshold
        blended[below] = image[below]
    return blended


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


STORED_DTYPE = np.float16  # half the size of float32; 1e-3 precision is plenty for [0, 1]


def as_stored(cams: np.ndarray) -> np.ndarray:
    """Maps rounded to what a ``.npy`` in ``cams/`` holds, as float32.

    Every score is computed from these, so that anyone reloading the stored maps recomputes the
    published numbers exactly (a float32 maximum can tie with a neighbour once rounded).
    """
    return np.clip(cams, 0, 1).astype(STORED_DTYPE).astype(np.float32)


def npy_bytes(cam: np.ndarray) -> bytes:
    """A map as ``.npy`` bytes at the stored precision (``STORED_DTYPE``)."""
    buffer = io.BytesIO()
    np.save(buffer, np.clip(cam, 0, 1).astype(STORED_DTYPE))
    return buffer.getvalue()


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def image_grid(rows: Sequence[Sequence[Cell | None]], title: str = "",
               row_labels: Sequence[str] | None = None) -> bytes:
    """A labelled grid of pictures as PNG bytes; ``None`` leaves a cell empty."""
    n_rows = max(1, len(rows))
    n_cols = max([len(r) for r in rows] + [1])
    label_width = 1.6 if row_labels else 0.0
    top = 0.9 if title else 0.2
    fig = _new_figure(label_width + n_cols * CELL_INCHES, top + n_rows * (CELL_INCHES + 0.45))
    grid = fig.add_gridspec(n_rows, n_cols, left=label_width / (label_width + n_cols * CELL_INCHES) + 0.005,
                            right=0.995, bottom=0.01, top=1 - top / fig.get_figheight(),
                            hspace=0.3, wspace=0.05)
    for i in range(n_rows):
        for j in range(n_cols):
            ax = fig.add_subplot(grid[i, j])
            ax.set_xticks([])
            ax.set_yticks([])
            cell = rows[i][j] if i < len(rows) and j < len(rows[i]) else None
            if cell is None:
                ax.axis("off")
            else:
                if cell.image.ndim == 2:
                    ax.imshow(cell.image, cmap="jet", vmin=0, vmax=1, interpolation="nearest")
                else:
                    ax.imshow(cell.image, interpolation="nearest")
                ax.set_title(cell.caption, fontsize=CAPTION_SIZE, pad=4)
            if j == 0 and row_labels and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=CAPTION_SIZE + 1, rotation=0, ha="right", va="center",
                              labelpad=12)
                ax.axis("on")
                for spine in ax.spines.values():
                    spine.set_visible(cell is not None)
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE, y=1 - 0.15 / fig.get_figheight(), va="top")
    return _save(fig)


def heatmap_png(cam: np.ndarray, title: str) -> bytes:
    """One map (e.g. a stage's mean map) in jet colours with a colour bar."""
    fig = _new_figure(6.4, 5.6)
    ax = fig.add_axes((0.06, 0.05, 0.74, 0.8))
    shown = ax.imshow(cam, cmap="jet", vmin=0, vmax=1, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(shown, cax=fig.add_axes((0.84, 0.05, 0.04, 0.8))).ax.tick_params(labelsize=CAPTION_SIZE)
    fig.suptitle(title, fontsize=16, y=0.97, va="top")
    return _save(fig)


def captioned_row(cells: Sequence[Cell], scale: int = 2) -> np.ndarray:
    """Pictures side by side, each enlarged ``scale`` times under a caption strip (PIL, fast).

    Used where there is one figure per image (hundreds per run): about a hundred times
    cheaper than a matplotlib figure.
    """
    from PIL import Image, ImageDraw, ImageFont

    tiles = [Image.fromarray(c.image).resize((c.image.shape[1] * scale, c.image.shape[0] * scale),
                                             Image.Resampling.NEAREST) for c in cells]
    strip, gap = 14 * scale, 4
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, strip + max(t.height for t in tiles)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=10 * scale)
    left = 0
    for tile, cell in zip(tiles, cells, strict=True):
        canvas.paste(tile, (left, strip))
        draw.text((left + 2, 1), cell.caption, fill="black", font=font)
        left += tile.width + gap
    return np.asarray(canvas)


def side_by_side(image: np.ndarray, pred_overlay: np.ndarray, true_overlay: np.ndarray, *,
                 pred: str, true: str, confidence: float) -> bytes:
    """PNG of a misclassified image with the map for the predicted and for the true class."""
    return png_bytes(captioned_row([Cell(image, f"true {true}"),
                                    Cell(pred_overlay, f"map {pred} (pred {confidence:.2f})"),
                                    Cell(true_overlay, f"map {true} (true)")]))
