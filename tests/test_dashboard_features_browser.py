"""The Feature map page in a real browser: a lasso and a box drawn on the map select their images.

AppTest cannot draw on a Plotly chart, so this is the one check that Streamlit hands the selection
(customdata: sha256) back to the page. Uses the server and browser of tests/support/browser.py.
"""

from __future__ import annotations

import re

import pytest

from tests.support.browser import assert_no_exception, settle

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def selected(page) -> int:
    text = page.locator("h3", has_text=re.compile(r"Selected: \d+ image")).first.inner_text(timeout=30_000)
    return int(re.search(r"Selected: (\d+)", text).group(1))


def test_lasso_and_box_on_the_feature_map_select_images(server, browser) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(f"{server['url']}/features")
    settle(page)
    assert_no_exception(page, "features")
    assert "Nothing selected yet." in page.inner_text("body")
    plot = page.locator(".js-plotly-plot").first
    plot.scroll_into_view_if_needed()
    box = plot.locator(".nsewdrag").first.bounding_box()  # the plotting area inside the axes
    shown = int(re.search(r"(\d+) images\. Pooled", page.inner_text("body")).group(1))

    # The map opens in lasso mode: a loop around the whole plotting area takes every point shown.
    x0, y0, x1, y1 = box["x"] + 2, box["y"] + 2, box["x"] + box["width"] - 2, box["y"] + box["height"] - 2
    page.mouse.move(x0, y0)
    page.mouse.down()
    for x, y in ((x1, y0), (x1, y1), (x0, y1), (x0, y0 + 4)):
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    settle(page)
    assert_no_exception(page, "features after a lasso")
    assert selected(page) == shown
    assert page.locator(".fm-image").count() == min(shown, 24)

    # A box over the left half takes some of them (at least the leftmost point: the axes fit the points), and
    # the page shows exactly those.
    page.locator('[data-title="Box Select"]').first.click()
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, y1, steps=10)
    page.mouse.up()
    settle(page)
    assert_no_exception(page, "features after a box")
    n = selected(page)
    assert 0 < n <= shown
    assert page.locator(".fm-image").count() == min(n, 24)
    page.close()
