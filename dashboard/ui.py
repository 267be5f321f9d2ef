"""Small Streamlit helpers shared by the pages: the outputs folder, run pickers, warnings, images."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from engine import runs
from engine.metrics import HEADLINE_METRICS
from tuning import layout

from . import loaders, overlay, paths, reviews
from .escape import code, md
from .loaders import LoadError, RunInfo
from .paths import OutsideOutputs, inside, outputs_dir

log = logging.getLogger(__name__)

# Trials' statuses (tuning.layout) and runs' (loaders.RUN_STATUSES) share complete, running and stopped.
STATUS_ICONS = {layout.TRIAL_COMPLETE: "✓", layout.TRIAL_RUNNING: "▶", layout.TRIAL_PENDING: "…",
                layout.TRIAL_STOPPED: "■", layout.TRIAL_ERROR: "✗", loaders.RUN_INTERRUPTED: "!",
                loaders.RUN_CORRUPT: "✗"}

HOW_TO = """
**Nothing to show yet.** The dashboard reads `{root}`. Produce results with:

```bash
make prepare DATA_DIR=data/raw   # python -m engine prepare --data-dir data/raw --out {root}/prepared
make train                        # python -m engine train --data {root}/prepared --out {root}/runs
make evaluate RUN={root}/runs/ID  # python -m engine evaluate RUN   (metrics.json, predictions.csv)
make explain  RUN={root}/runs/ID  # python -m engine explain RUN    (Grad-CAM maps in RUN/cams)
make tune                         # python -m tuning sweep --data {root}/prepared --out {root}/sweeps
```

or start the dashboard on another folder: `python -m dashboard --outputs DIR`.
"""


def root() -> Path:
    """The outputs folder of this session (set once by app.py from the command line or $ALL_OUTPUTS)."""
    if "outputs" not in st.session_state:
        st.session_state["outputs"] = str(outputs_dir())
    return Path(st.session_state["outputs"])


def found() -> dict[str, list]:
    return loaders.scan(root())


def empty_state(what: str = "results") -> None:
    st.info(f"No {what} in this outputs folder yet.", icon=":material/info:")
    st.markdown(HOW_TO.format(root=root()))


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    """Run a block of a page; a missing or malformed file becomes a warning instead of an error."""
    try:
        yield
    except (LoadError, OutsideOutputs) as exc:
        st.warning(f"{name}: {md(exc)}", icon=":material/warning:")
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, OSError) as exc:
        log.warning("%s failed", name, exc_info=True)
        st.warning(f"{name} could not be shown: the files look partial or corrupt "
                   f"({type(exc).__name__}: {md(exc)})", icon=":material/warning:")


def in_url(key: str, default: Any, options: Sequence[Any] | None = None,
           bounds: tuple[float, float] | None = None) -> None:
    """Keep widget ``key``'s value in the URL's ``?key=``, so that a copied link reopens this view.

    Call it just before the widget, which must then take no default of its own: a session's first run
    starts the widget from the URL (when its value is one of ``options`` and within ``bounds``) or else
    from ``default``; every run writes the value the widget holds back into the URL. Streamlit drops
    the query parameters when the user switches pages, so each page's URL names that page's state only.
    """
    if key not in st.session_state or not _valid(st.session_state[key], default, options, bounds):
        found = _from_url(key, default)
        st.session_state[key] = found if found is not None and _valid(found, default, options, bounds) else default
    value = st.session_state[key]
    text: str | list[str] = ([str(v) for v in value] if isinstance(value, list)
                             else ",".join(map(str, value)) if isinstance(value, tuple)
                             else str(int(value)) if isinstance(value, bool) else str(value))
    if st.query_params.get_all(key) != (text if isinstance(text, list) else [text]):
        st.query_params[key] = text


def url_widget(widget: Callable[..., Any], label: str, key: str, default: Any, options: Sequence[Any] | None = None,
               bounds: tuple[float, float] | None = None, **kwargs: Any) -> Any:
    """``widget`` (``st.selectbox``, a column's ``slider``, ...) with its value kept in the URL (:func:`in_url`).

    The options (or the bounds) are written once, for both: ``options`` become the widget's options, ``bounds``
    its minimum and maximum; a toggle or checkbox takes neither. ``kwargs`` go to the widget. Returns its value.
    """
    in_url(key, default, options, bounds)
    args = (list(options),) if options is not None else tuple(bounds) if bounds is not None else ()
    return widget(label, *args, key=key, **kwargs)


def _from_url(key: str, default: Any) -> Any:
    """``?key=`` decoded as the type of ``default``, or None when absent or not of that type."""
    values = st.query_params.get_all(key)
    if not values:
        return None
    if isinstance(default, list):
        return values
    raw = values[-1]
    try:
        if isinstance(default, bool):
            return {"1": True, "0": False}.get(raw)
        if isinstance(default, tuple):
            kind = type(default[0])
            parts = tuple(kind(x) for x in raw.split(","))
            return parts if len(parts) == len(default) else None
        return type(default)(raw) if isinstance(default, (int, float)) else raw
    except ValueError:
        return None


def _valid(value: Any, default: Any, options: Sequence[Any] | None, bounds: tuple[float, float] | None) -> bool:
    if isinstance(default, list):
        return isinstance(value, list) and (options is None or all(v in options for v in value))
    if options is not None and value not in options:
        return False
    if bounds is not None:
        numbers = value if isinstance(value, tuple) else (value,)
        return all(isinstance(v, (int, float)) and bounds[0] <= v <= bounds[1] for v in numbers)
    return True


def pick_run(runs: Sequence[RunInfo], key: str, label: str = "Run", index: int = 0,
             help: str | None = None) -> RunInfo | None:
    """A selectbox over discovered runs (no path typed by the browser ever reaches the disk).

    The run is kept in the URL (``?<key>=<label>``), and preselected from it when it is one of ``runs``.
    """
    if not runs:
        return None
    labels = [r.label for r in runs]
    by_label = {r.label: r for r in runs}
    chosen = url_widget(st.selectbox, label, key, labels[min(index, len(labels) - 1)], labels,
                        format_func=lambda x: by_label[x].display, help=help)
    return by_label[chosen]


def run_problems(run: RunInfo) -> None:
    split = loaders.split_problem(root(), run.path)
    if split:
        st.warning(f"{md(split)}.", icon=":material/call_split:")
    if run.status == loaders.RUN_CORRUPT:
        st.warning(f"{code(run.label)} is corrupt: {md(run.problem)}", icon=":material/block:")
    elif run.status == loaders.RUN_INTERRUPTED:
        st.warning(f"{code(run.label)} has no {runs.COMPLETE} marker and stopped writing: it was interrupted. "
                   f"Resume it with {code(f'python -m engine train --resume {run.path}')}.",
                   icon=":material/warning:")
    elif run.status == loaders.RUN_RUNNING:
        st.info(f"{code(run.label)} is still training; its files are refreshed as they change.",
                icon=":material/directions_run:")


def cams_index(run: RunInfo):
    """The run's Grad-CAM index, or None; a warning when it cannot be read or some rows were skipped."""
    if not run.explained:
        return None
    problems: list[str] = []
    try:
        index = loaders.cams_index(root(), run.path, problems)
    except LoadError as exc:
        st.warning(f"Grad-CAM maps of {code(run.label)} cannot be read: {md(exc)}", icon=":material/warning:")
        return None
    for problem in problems:
        st.warning(f"Grad-CAM maps of {code(run.label)}: {md(problem)}", icon=":material/warning:")
    return index


def first_explained(index: Any, column: str) -> str:
    """The method or layer `explain` listed first (the one it scored and summarised): index.csv's first row."""
    return str(index[column].iloc[0])


def image(path: Path | str | None, caption: str | None = None, width: int | str = "stretch") -> None:
    """Show an image file from inside the outputs folder, or a placeholder when it is missing or refused."""
    if path is None:
        st.caption(f"(no image) {caption or ''}")
        return
    try:
        safe = inside(root(), path)
        paths.regular_file(root(), safe, overlay.MAX_IMAGE_BYTES)
    except OutsideOutputs:
        st.caption("(image outside the outputs folder: not shown)")
        return
    except FileNotFoundError:
        st.caption(f"(missing image) {caption or ''}")
        return
    except (OSError, paths.RefusedFile) as exc:
        st.caption(f"(image not shown: {md(paths.relative(root(), safe))} {md(exc)}) {caption or ''}")
        return
    # Streamlit re-encodes an RGB PNG as JPEG by default, which smears the maps' colours and thin outlines.
    st.image(str(safe), caption=caption, width=width,
             output_format="PNG" if safe.suffix.lower() == ".png" else "auto")


def overlay_controls(key: str) -> overlay.OverlayStyle:
    """The page's overlay style: whether maps are drawn, their opacity, colour map and threshold."""
    default = overlay.OverlayStyle()
    cols = st.columns([1.2, 2, 1.6, 2])
    show = url_widget(cols[0].toggle, "Overlay", f"{key}_show", default.show, help="Off: the input images alone.")
    opacity = url_widget(cols[1].slider, "Opacity", f"{key}_opacity", default.opacity, bounds=(0.0, 1.0), step=0.05,
                         disabled=not show)
    colormap = url_widget(cols[2].selectbox, "Colour map", f"{key}_cmap", default.colormap, overlay.COLORMAPS,
                          disabled=not show)
    threshold = url_widget(cols[3].slider, "Threshold", f"{key}_threshold", default.threshold, bounds=(0.0, 0.95),
                           step=0.05, disabled=not show,
                           help="Map values below it are not coloured: only what the map ranks highest shows.")
    return overlay.OverlayStyle(show=show, opacity=opacity, colormap=colormap, threshold=threshold)


@st.cache_data(show_spinner=False, max_entries=1024)
def _drawn_png(root_: str, picture: str, cam: str | None, mask: str | None, style: tuple[Any, ...],
               versions: tuple[Any, ...]) -> bytes:
    """``picture`` (a stored overlay; with ``cam``, the input to draw that map over in ``style``), outlined by
    ``mask``. ``versions`` (the files' stamps) makes a rewritten file a new cache entry."""
    from engine.explain.figures import png_bytes

    from .evidence import outline

    drawn = overlay.read_image(root_, picture)
    if cam is not None:
        drawn = overlay.render(drawn, overlay.read_map(root_, cam), overlay.OverlayStyle(*style))
    if mask is not None:
        drawn = outline(drawn, overlay.read_image(root_, mask)[..., 0] >= 128)
    return png_bytes(drawn)


def map_image(run_path: str, entry: Any, style: overlay.OverlayStyle, caption: str, mask: str | None = None) -> None:
    """One Grad-CAM map of a cams/index.csv row (``image``, ``overlay``, ``map``) in ``style``, outlined by the
    leukocyte ``mask`` (relative to cams/) when given. The default style without an outline is the stored PNG."""
    if style.is_stored and mask is None:
        image(loaders.cam_path(root(), run_path, entry["overlay"]), caption=caption)
        return
    picture = entry["overlay"] if style.is_stored else entry["image"]
    cam = None if style.is_stored or not style.show else entry["map"]
    files = [loaders.cam_path(root(), run_path, rel) if rel else None for rel in (picture, cam, mask)]
    if any(f is None for f, rel in zip(files, (picture, cam, mask), strict=True) if rel):
        st.caption(f"(missing map files) {caption}")
        return
    try:
        png = _drawn_png(str(root()), *(str(f) if f else None for f in files), astuple(style),
                         tuple(loaders.stamp(f) for f in files if f))
    except overlay.OverlayError as exc:
        st.caption(f"(map not drawn: {md(exc)}) {caption}")
        return
    st.image(png, caption=caption, width="stretch", output_format="PNG")


def maps_row(run_path: str, found: Any, true: str, pred: str, style: overlay.OverlayStyle,
             mask: str | None = None) -> None:
    """An image and its Grad-CAM maps side by side: the map for the predicted stage, and for the true one when
    they differ. ``found``: the image's cams/index.csv rows by target ("pred", "true")."""
    entry = found.get("pred", found.get("true"))
    shown = [("input", None)]
    if "pred" in found:
        shown.append((f"map for predicted {md(pred)}", found["pred"]))
    if true != pred and "true" in found:
        shown.append((f"map for true {md(true)}", found["true"]))
    for col, (caption, row) in zip(st.columns(len(shown)), shown, strict=False):
        with col:
            if row is None:
                image(loaders.cam_path(root(), run_path, entry["image"]) if entry is not None else None, caption)
            else:
                map_image(run_path, row, style, caption, mask)


def ci_text(ci: Any, digits: int = 3) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        return f"{ci[0]:.{digits}f}–{ci[1]:.{digits}f}"
    return "n/a"


def fmt(value: Any, digits: int = 3) -> str:
    """A number from a file for a caption or card; anything that is not a number shows as n/a."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def fmt_param(value: Any) -> str:
    """A hyper-parameter as a person would write it: 0.00333 rather than 0.0033305729602260046 (Markdown-safe)."""
    return f"{value:.3g}" if isinstance(value, float) else md(value)


# The settings a run's one-line summary always names, then those it names only where they differ from these
# defaults (what the network was shown, how its colours were made unreliable, whether its weights are an
# average, which images it was tested on).
SUMMARY_KEYS = ("model", "preset", "image_size", "epochs", "lr", "batch_size")
SUMMARY_UNLESS = {"view": "field", "background": "keep", "stain_jitter": 0.0, "greyscale_p": 0.0, "stain_mix": 0.0,
                  "ema_decay": 0.0, "split": "image"}


def config_summary(cfg: dict[str, Any]) -> str:
    """``config.json`` in one line: the main settings, then the view, colour augmentation and split where not the
    defaults (a smear split with its fold)."""
    parts = [f"{k}: {fmt_param(cfg[k])}" for k in SUMMARY_KEYS if k in cfg]
    for key, default in SUMMARY_UNLESS.items():
        if key in cfg and cfg[key] != default:
            parts.append(f"{key}: {fmt_param(cfg[key])}")
            if key == "background" and "background_p" in cfg:
                parts[-1] += f" on {fmt_param(cfg['background_p'])}"
            if key == "split" and "fold" in cfg:
                parts[-1] += f" fold {fmt_param(cfg['fold'])}"
    return " · ".join(parts)


def metric_cards(m: dict[str, Any]) -> None:
    """The headline metrics of one split, with 95% bootstrap intervals where the engine computed them."""
    cards = [(h.label, h.value(m), h.interval(m) if h.ci else None) for h in HEADLINE_METRICS]
    columns = st.columns(len(cards))
    for column, (name, value, ci) in zip(columns, cards, strict=False):
        with column:
            st.metric(name, fmt(value))
            st.caption(f"95% CI {ci_text(ci)}" if ci is not None else "\u00a0")
    st.caption(f"n = {md(m.get('n', '?'))} images · intervals: percentile bootstrap over images")


def per_class_table(m: dict[str, Any]):
    import pandas as pd

    rows = []
    for cls, v in (m.get("per_class") or {}).items():
        rows.append({"stage": cls, "precision": v.get("precision"), "recall (sensitivity)": v.get("recall"),
                     "specificity": v.get("specificity"), "F1": v.get("f1"), "ROC-AUC": v.get("roc_auc"),
                     "support": v.get("support")})
    return pd.DataFrame(rows)


def clicked_cell(event: Any, classes: Sequence[str]) -> tuple[str, str] | None:
    """The (true, predicted) cell a click on ``figures.confusion_matrix`` selected, if any."""
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    clicked = None
    for point in points:
        custom = point.get("customdata")
        if isinstance(custom, (list, tuple)) and len(custom) >= 2:
            clicked = (str(custom[0]), str(custom[1]))
    return clicked if clicked and all(c in classes for c in clicked) else None


def similar_cases(run_path: str, lookup: Callable[[], list[dict]]) -> None:
    """The nearest training images ``lookup()`` finds, with their stages, distances and pictures."""
    try:
        found = lookup()
    except loaders.LoadError as exc:
        found = []
        st.caption(f"No similar cases: {md(exc)}. {code('python -m engine evaluate RUN')} stores the features "
                   f"({code(runs.FEATURES)}) they are found in.")
    if not found:
        return
    pictures = loaders.training_images(root(), run_path, [f["sha256"] for f in found])
    votes = pd.Series([f["stage"] for f in found]).value_counts()
    st.caption(f"The {len(found)} training images nearest in the model's feature space (Euclidean distance "
               "between pooled DenseNet features): " + ", ".join(f"{n} {md(s)}" for s, n in votes.items()) + ".")
    cols = st.columns(6)
    for i, f in enumerate(found):
        with cols[i % 6]:
            caption = f"{f['rank']}. {md(f['stage'])} · distance {f['distance']:.2f}"
            if f["sha256"] in pictures:
                st.image(pictures[f["sha256"]], caption=caption, width="stretch")
            else:
                st.caption(f"{caption} (not in the prepared folder's image cache)")
    st.dataframe(pd.DataFrame(found)[["rank", "stage", "distance", "path"]], hide_index=True, width="stretch",
                 column_config={"distance": st.column_config.NumberColumn(format="%.3f")})


# ----------------------------------------------------------------------------- review marks

# The Marked filter's choices (reviews.matches) and the badge colour of each label.
REVIEW_FILTERS = {"all": "all images", "any": "any mark", **reviews.LABELS, "unmarked": "unmarked"}
REVIEW_COLOURS = {"suspected_label_error": "red", "artefact": "orange", "good_example": "green"}


def review_marks(run: RunInfo) -> dict[str, dict[str, Any]] | None:
    """The run's review marks, or None after a warning when its reviews.json is malformed (then nothing
    is offered for marking, so the file is never overwritten). Also reports a change a callback refused."""
    problem = st.session_state.pop("review_problem", None)
    if problem:
        st.warning(f"Review mark not saved: {md(problem)}", icon=":material/warning:")
    try:
        return reviews.load(root(), run.path)
    except reviews.ReviewError as exc:
        st.warning(f"Review marks of {code(run.label)}: {md(exc)}", icon=":material/warning:")
        return None


def _saved(change: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        change(root(), *args, **kwargs)
    except reviews.ReviewError as exc:  # shown by review_marks on the rerun that follows
        st.session_state["review_problem"] = str(exc)


def _labels_changed(run_path: str, sha256: str, path: str, shown: tuple[str, ...], key: str) -> None:
    # Only the labels this tab changed are sent: what another tab did meanwhile to the others stays.
    now = st.session_state.get(key) or []
    for label in reviews.LABELS:
        if (label in now) != (label in shown):
            _saved(reviews.toggle, run_path, sha256, label, label in now, path=path)


def _note_changed(run_path: str, sha256: str, path: str, key: str) -> None:
    _saved(reviews.set_note, run_path, sha256, st.session_state.get(key) or "", path=path)


def review_card(run_path: str, sha256: str, path: str, marks: dict[str, dict[str, Any]] | None, key: str) -> None:
    """An image card's review marks: badges and the note (escaped), and a Review popover that changes them.

    ``marks`` come from :func:`review_marks` (None: nothing shown). ``key`` must be unique on the page.
    The widgets are set from the file on every run, so a change made in another tab shows on the next one.
    """
    if marks is None or not reviews.is_sha256(sha256):  # a damaged index row: there is nothing to key a mark by
        return
    mark = marks.get(sha256) or {}
    labels = [x for x in reviews.LABELS if x in (mark.get("labels") or [])]
    note = mark.get("note") or ""
    if labels or note:
        badges = " ".join(f":{REVIEW_COLOURS[x]}-badge[{reviews.LABELS[x]}]" for x in labels)
        st.markdown(badges + (f" ✎ {md(note)}" if note else ""))
    # A key keeps the popover the same element when a mark adds a badge above it: it stays open.
    with st.popover("Review", icon=":material/rate_review:", key=f"{key}_popover"):
        st.session_state[f"{key}_labels"] = labels
        st.pills("Marks", list(reviews.LABELS), format_func=reviews.LABELS.get, selection_mode="multi",
                 key=f"{key}_labels", label_visibility="collapsed", on_change=_labels_changed,
                 args=(run_path, sha256, path, tuple(labels), f"{key}_labels"))
        st.session_state[f"{key}_note"] = note
        st.text_input("Note", key=f"{key}_note", max_chars=reviews.MAX_NOTE, placeholder="a short note; Enter saves it",
                      on_change=_note_changed, args=(run_path, sha256, path, f"{key}_note"))
