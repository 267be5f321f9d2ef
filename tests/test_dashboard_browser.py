"""End to end: the real server (``python -m dashboard``) driven by real Chromium through Playwright.

Clicks a confusion-matrix cell and checks the gallery shows exactly that cell's images, opens
every page without an exception, and saves a screenshot of each under outputs/screenshots/.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from dashboard import pages
from tests.support.browser import assert_no_exception, settle

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "outputs" / "screenshots"
PAGES = {page.slug: page.title for page in pages.PAGES}  # every page, by its URL path, with its title

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def full_screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main container, so grow the viewport to fit it."""
    height = page.evaluate("""() => {
        const main = document.querySelector('[data-testid="stMain"]') || document.body;
        return Math.max(main.scrollHeight, document.body.scrollHeight);
    }""")
    width = page.viewport_size["width"]
    page.set_viewport_size({"width": width, "height": min(max(int(height) + 40, 800), 12000)})
    page.wait_for_timeout(500)  # Plotly redraws its charts for the new size after a short debounce
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": width, "height": 1000})


def test_every_page_opens_and_is_screenshotted(server, browser) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    best = server["best"].relative_to(server["root"]).as_posix()
    for url_path, title in PAGES.items():
        query = f"?run={best}" if url_path == "run" else ""
        page.goto(f"{server['url']}/{'' if url_path == 'data' else url_path}{query}")  # data is the default page
        settle(page)
        assert_no_exception(page, url_path)
        assert title in page.locator("h1").first.inner_text(), url_path
        full_screenshot(page, SCREENSHOTS / f"{url_path}.png")
    page.close()


def test_clicking_a_confusion_matrix_cell_shows_its_images(server, browser) -> None:
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    best = server["best"].relative_to(server["root"]).as_posix()
    page.goto(f"{server['url']}/run?run={best}")
    settle(page)
    pred = pd.read_csv(server["best"] / "predictions.csv")
    test = pred[pred["split"] == "test"]
    classes = ["benign", "early", "pre", "pro"]
    counts = test.groupby(["true", "pred"]).size()
    # The page opens on the largest error cell; click the fullest diagonal cell, so the gallery must change.
    cells = sorted(counts.items(), key=lambda kv: (kv[0][0] != kv[0][1], -kv[1]))
    (true, guess), n = cells[0]
    default = page.locator(".st-key-cell_gallery h4").first.inner_text()
    assert f"true {true} → predicted {guess}" not in default or not (test["true"] != test["pred"]).any()
    chart = page.locator("[data-testid='stPlotlyChart']").first
    chart.scroll_into_view_if_needed()
    box = chart.locator(".nsewdrag").first.bounding_box()
    assert box is not None
    i, j = classes.index(true), classes.index(guess)
    page.mouse.click(box["x"] + (j + 0.5) * box["width"] / 4, box["y"] + (i + 0.5) * box["height"] / 4)
    heading = page.locator(".st-key-cell_gallery h4").first
    heading.wait_for(timeout=30_000)
    deadline = time.time() + 30
    while f"true {true} → predicted {guess}" not in heading.inner_text() and time.time() < deadline:
        page.wait_for_timeout(300)
    settle(page)
    assert f"true {true} → predicted {guess}" in heading.inner_text()
    assert f"{n} images" in heading.inner_text()
    shown = page.locator(".st-key-cell_gallery .cell-image")
    expected = set(test[(test["true"] == true) & (test["pred"] == guess)]["path"])
    titles = {shown.nth(k).get_attribute("title") for k in range(shown.count())}
    assert shown.count() == min(n, 24)
    assert titles <= expected and (len(titles) == len(expected) or n > 24)
    assert page.locator(".st-key-cell_gallery [data-testid='stImage']").count() >= shown.count()
    assert_no_exception(page, "run after click")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    full_screenshot(page, SCREENSHOTS / "run-cell-selected.png")
    page.close()


def test_clicking_a_cell_on_the_compare_page_shows_both_runs_maps_of_that_cell(server, browser) -> None:
    from playwright.sync_api import expect

    root = server["root"]
    # The page puts explained runs first, by label: the fixture explains exactly these two.
    run_a, run_b = sorted((server["best"], server["other"]), key=lambda r: r.relative_to(root).as_posix())

    def pred_maps(run: Path) -> pd.DataFrame:
        index = pd.read_csv(run / "cams" / "index.csv")
        index = index[(index["target"] == "pred") & (index["layer"] == "norm5")]
        return index[index["method"] == sorted(index["method"].unique())[0]].drop_duplicates("sha256")

    ia, ib = pred_maps(run_a), pred_maps(run_b)
    common = ia[ia["sha256"].isin(set(ib["sha256"]))]
    counts = common.groupby(["true", "pred"]).size()
    (true, guess), n = max(counts.items(), key=lambda kv: kv[1])
    expected = set(common[(common["true"] == true) & (common["pred"] == guess)]["path"])

    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    page.goto(f"{server['url']}/compare")
    settle(page)
    chart = page.locator("[data-testid='stPlotlyChart']").first
    # Plotly draws after Streamlit's script has finished, so wait for the figure's text, not for the script.
    expect(chart).to_contain_text(run_a.relative_to(root).as_posix(), timeout=30_000)
    chart.scroll_into_view_if_needed()
    box = chart.locator(".nsewdrag").first.bounding_box()
    assert box is not None
    classes = ["benign", "early", "pre", "pro"]
    i, j = classes.index(true), classes.index(guess)
    page.mouse.click(box["x"] + (j + 0.5) * box["width"] / 4, box["y"] + (i + 0.5) * box["height"] / 4)
    page.get_by_text(f"true {true} → predicted {guess}").first.wait_for(timeout=30_000)
    settle(page)
    assert page.get_by_text("Cell of run A").count() == 1
    assert page.get_by_text(f"{n} match").count() == 1
    shown = page.locator("[class*='st-key-cmp_pair_'] .pair-image")
    titles = {shown.nth(k).get_attribute("title") for k in range(shown.count())}
    assert shown.count() == min(n, 12) and titles <= expected
    assert_no_exception(page, "compare after click")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    full_screenshot(page, SCREENSHOTS / "compare-cell-selected.png")
    page.get_by_role("button", name="Show all cells").click()
    settle(page)
    assert page.get_by_text("Cell of run A").count() == 0
    page.close()


def test_html_report_renders_offline(server, browser, tmp_path: Path) -> None:
    from dashboard import report

    deck = report.build(server["root"], report.Findings(run=str(server["best"]), stages=["early"], per_stage=2))
    path = tmp_path / "report.html"
    path.write_text(deck.html)
    page = browser.new_page()
    requested: list[str] = []
    page.route("**/*", lambda route: (requested.append(route.request.url),
                                      route.continue_() if route.request.url.startswith(("file:", "data:"))
                                      else route.abort()))
    page.goto(path.as_uri())
    page.wait_for_selector(".plotly-graph-div .main-svg", timeout=30_000)
    assert [u for u in requested if not u.startswith(("file:", "data:"))] == []
    assert page.locator("img").count() >= 2
    page.close()


def test_no_deploy_button_or_developer_menu(server, browser) -> None:
    """The launcher sets client.toolbarMode=viewer: Streamlit's Deploy button and developer options are gone."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(server["url"])
    settle(page)
    page.wait_for_selector("[data-testid='stMainMenu']", timeout=30_000)  # the toolbar has rendered
    assert page.get_by_role("button", name="Deploy").count() == 0
    page.close()


def open_list(page, key: str, wanted) -> None:
    """Open the selectbox with widget key ``key`` until ``wanted`` (an option locator) shows."""
    box = page.locator(f".st-key-{key} [role='combobox']")
    for attempt in range(3):  # a rerun that redraws the page meanwhile closes the list: open it again
        # Scrolled first: clicked where the page is still laying out below the fold, the list stays shut.
        box.scroll_into_view_if_needed()
        box.click()
        try:
            wanted.wait_for(timeout=5_000)
            return
        except Exception:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
            settle(page)


def options(page, key: str) -> list[str]:
    """The labels the selectbox with widget key ``key`` offers (the list is closed again afterwards)."""
    found = page.get_by_role("option")
    open_list(page, key, found.first)
    labels = [found.nth(k).inner_text() for k in range(found.count())]
    page.keyboard.press("Escape")
    return labels


def choose(page, key: str, option: str) -> None:
    """Pick ``option`` in the selectbox with widget key ``key`` and wait for the rerun to finish."""
    wanted = page.get_by_role("option", name=option, exact=True)
    open_list(page, key, wanted)
    wanted.click()
    page.wait_for_function("([key, option]) => document.querySelector(`.st-key-${key} [role='combobox']`)"
                           "?.value === option", arg=[key, option], timeout=30_000)
    settle(page)


def test_evidence_page_shows_verdicts_and_switches_the_per_stage_table(server, browser) -> None:
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    page.goto(f"{server['url']}/evidence")
    settle(page)
    assert_no_exception(page, "evidence")
    for heading in ("Verdicts", "Do the maps point at the leukocytes?"):
        assert page.get_by_role("heading", name=heading).is_visible(), heading
    # The sentence stands in the verdicts and again in its own section.
    assert page.get_by_text("With the leukocytes removed the model still classifies").first.is_visible()
    tables = page.locator("[data-testid='stDataFrame']")
    # The verdicts, then the chosen pair's per-stage table. Streamlit loads the grid's code on first use, so
    # a table may mount a moment after the script run ended: wait for it rather than count at once.
    tables.nth(1).wait_for(state="visible", timeout=30_000)

    def stage_table() -> bytes:
        return tables.nth(1).screenshot()

    labels = options(page, "evidence_pair")
    assert len(labels) >= 2, labels
    before = stage_table()
    choose(page, "evidence_pair", labels[-1])
    assert_no_exception(page, "evidence after choosing a pair")
    # On a loaded machine the table is redrawn a moment after the rerun: wait for it, up to 30 s.
    deadline, after = time.time() + 30, stage_table()
    while after == before and time.time() < deadline:
        page.wait_for_timeout(500)
        after = stage_table()
    assert after != before
    page.close()


def open_gallery(server, browser):
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    page.goto(f"{server['url']}/gallery")
    settle(page)
    assert_no_exception(page, "gallery")
    return page


def map_png(page):
    """The first card's map (the second image of the card) as an RGB array, fetched from its src."""
    import io

    import numpy as np
    from PIL import Image

    img = page.locator("[data-testid='stImage'] img").nth(1)
    src = img.get_attribute("src")
    data = page.request.get(src if src.startswith("http") else f"{page.url.split('/gallery')[0]}{src}").body()
    return src, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_gallery_outline_toggle_draws_the_green_leukocyte_outline(server, browser) -> None:
    page = open_gallery(server, browser)
    toggle = page.locator(".st-key-g_outline input[type='checkbox']")
    assert toggle.is_checked()  # on by default
    src_on, on = map_png(page)
    page.locator(".st-key-g_outline label").click()
    page.wait_for_function("""(src) => {
        const imgs = document.querySelectorAll("[data-testid='stImage'] img");
        return imgs.length > 1 && imgs[1].getAttribute('src') !== src;
    }""", arg=src_on, timeout=30_000)
    settle(page)
    assert not toggle.is_checked()
    src_off, off = map_png(page)
    assert src_on != src_off and on.shape == off.shape
    changed = (on != off).any(axis=2)
    assert changed.sum() > 10  # an outline, not a stray pixel
    assert (on[changed] == [0, 255, 0]).all()  # every changed pixel is the outline's green (both served as PNG)
    page.close()


def test_gallery_order_by_concentration_lists_the_lowest_first(server, browser) -> None:
    import itertools
    import re

    page = open_gallery(server, browser)
    choose(page, "g_order", "concentration: lowest first")
    assert_no_exception(page, "gallery ordered")
    captions = page.locator("[data-testid='stCaptionContainer']").filter(
        has_text=re.compile(r"^concentration \d+\.\d\d")).all()
    # Card i goes to column i % 2, and each column stacks on its own: interleave the columns back.
    boxes = [(c.bounding_box(), float(re.match(r"concentration (\d+\.\d\d)", c.inner_text()).group(1)))
             for c in captions]
    middle = (min(b["x"] for b, _ in boxes) + max(b["x"] for b, _ in boxes)) / 2
    columns = [[v for b, v in sorted(boxes, key=lambda bv: bv[0]["y"]) if (b["x"] > middle) == right]
               for right in (False, True)]
    values = [v for pair in itertools.zip_longest(*columns) for v in pair if v is not None]
    assert len(values) >= 2 and values == sorted(values), values
    page.close()


def cell_map_png(page) -> bytes:
    """The bytes of the first map in the Run page's cell view, fetched as the browser fetched them."""
    img = page.locator(".st-key-cell_gallery [data-testid='stImage'] img").nth(1)
    src = img.get_attribute("src")
    return page.request.get(src if src.startswith("http") else f"{page.url.split('/run')[0]}{src}").body()


def test_a_copied_link_reopens_the_same_view(server, browser) -> None:
    """Pick a cell and an overlay style on the Run page, take the address bar's URL, open it in a new browser
    context (no shared session): the same cell, the same choices, the same map pixels."""
    best = server["best"].relative_to(server["root"]).as_posix()
    pred = pd.read_csv(server["best"] / "predictions.csv")
    test = pred[pred["split"] == "test"]
    stage = test[test["true"] == test["pred"]]["true"].value_counts().index[0]  # a cell with images
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    page.goto(f"{server['url']}/run?run={best}")
    settle(page)
    for key, value in (("cell_true", stage), ("cell_pred", stage), ("cell_overlay_cmap", "magma")):
        choose(page, key, value)
    page.locator(".st-key-cell_overlay_show label").click()  # off, then on again: the URL keeps it on
    settle(page)
    page.locator(".st-key-cell_overlay_show label").click()
    settle(page)
    assert_no_exception(page, "run with a chosen view")
    link = page.url
    assert f"cell_true={stage}" in link and f"cell_pred={stage}" in link and "cell_overlay_cmap=magma" in link
    heading = page.locator(".st-key-cell_gallery h4").first.inner_text()
    assert f"true {stage} → predicted {stage}" in heading
    drawn = cell_map_png(page)

    context = browser.new_context(viewport={"width": 1600, "height": 1100})
    other = context.new_page()
    other.goto(link)
    settle(other)
    assert_no_exception(other, "run reopened from a link")
    assert other.locator(".st-key-cell_gallery h4").first.inner_text() == heading
    for key, value in (("run", None), ("cell_true", stage), ("cell_pred", stage), ("cell_overlay_cmap", "magma")):
        shown = other.locator(f".st-key-{key} [role='combobox']").input_value()
        assert shown == (value or page.locator(f".st-key-{key} [role='combobox']").input_value()), key
    assert cell_map_png(other) == drawn  # drawn in magma from the stored map, as in the first session
    context.close()
    page.close()


def test_a_review_mark_keeps_its_popover_open_and_shows_a_badge(server, browser) -> None:
    """Marking an image adds a badge above its Review button; the popover must stay open for the note."""
    from engine import runs

    page = open_gallery(server, browser)
    try:
        page.get_by_role("button", name="Review").first.click()
        page.get_by_text("suspected label error", exact=True).first.click()
        settle(page)
        note = page.get_by_placeholder("a short note; Enter saves it").first
        assert note.is_visible()  # still open after the rerun that drew the badge
        note.fill("nucleus <b>looks</b> pre")
        note.press("Enter")
        settle(page)
        assert_no_exception(page, "gallery after a review mark")
        body = page.inner_text("body")
        assert "suspected label error" in body and "nucleus <b>looks</b> pre" in body  # shown as text
    finally:
        for path in server["root"].rglob(runs.REVIEWS):
            path.unlink()
        page.close()
