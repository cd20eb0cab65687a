"""The Runs page in headless Chromium: its view in the link, Back to the view before, a
run's name opening its detail page."""

from __future__ import annotations

import re
import urllib.parse

import pytest
from helpers.explorer import (
    chromium,
    click_header,
    grid_layout,
    grid_rows,
    serving,
)
from helpers.replay import replay, source_run

from hlbd.store import Store

pytestmark = pytest.mark.browser

WAIT_MS = 60_000
TAGS = (["baseline", "sweep"], ["sweep"], [])   # run i has TAGS[i % 3]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """30 finished runs (a real tiny run recorded again, helpers/replay.py), run i tagged
    TAGS[i % 3], served by `streamlit run`; yields (url, ids oldest first)."""
    root = tmp_path_factory.mktemp("runs_page")
    store = Store.open(str(root / "source.db"))
    try:
        source = source_run(store, root)
    finally:
        store.close()
    store = Store.open(str(root / "runs.db"))
    try:
        ids = replay(store, source, 30, lambda i: TAGS[i % 3])
    finally:
        store.close()
    with serving(root / "runs.db") as url:
        yield url, ids


@pytest.fixture
def page():

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        yield page


def query(page) -> dict:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlparse(page.url).query))


def names(page, changed_from: list[str] | None = None) -> list[str]:
    """The name column top to bottom (once it differs from ``changed_from``)."""
    for _ in range(WAIT_MS // 200):
        # (the header of the column sorted by carries an arrow: "name ↓")
        shown = [next(v for k, v in r.items() if k.startswith("name")) for r in grid_rows(page)]
        if shown and shown != changed_from:
            return shown
        page.wait_for_timeout(200)
    raise AssertionError(f"the table still shows {changed_from}")


def wait_for_query(page, **expected) -> None:
    for _ in range(WAIT_MS // 200):
        if all(query(page).get(k) == v for k, v in expected.items()):
            return
        page.wait_for_timeout(200)
    assert {k: query(page).get(k) for k in expected} == expected


def test_a_link_back_and_a_name_click_keep_the_runs_view(served, page):
    url, ids = served
    page.goto(f"{url}/?tag=sweep&sort=-name")
    page.get_by_text(re.compile(r"^20 of 30 runs")).wait_for(timeout=WAIT_MS)
    linked = names(page)
    tagged = sorted((f"run-{i}" for i in range(30) if "sweep" in TAGS[i % 3]), reverse=True)
    assert linked == tagged[:len(linked)]

    # A header click sorts anew and puts that in the link; Back brings the linked view.
    click_header(page, "name")
    wait_for_query(page, sort=None)   # a third click on name's sort: newest first
    by_age = names(page, linked)
    assert by_age != linked
    page.go_back()
    wait_for_query(page, sort="-name", tag="sweep")
    assert names(page, by_age) == linked

    # A click on a run's name opens its detail page; Back comes back to this view.
    layout = grid_layout(page)
    column = next(c for c in layout["columns"] if c["title"].startswith("name"))
    page.mouse.click(column["x"] + column["width"] / 2,
                     layout["box"]["y"] + layout["header"] + 17)
    page.get_by_role("heading", name="Run detail").wait_for(timeout=WAIT_MS)
    top = ids[int(linked[0].removeprefix("run-"))]
    assert urllib.parse.urlparse(page.url).path == "/run"
    page.get_by_text(top).first.wait_for(timeout=WAIT_MS)
    page.go_back()
    page.get_by_text(re.compile(r"^20 of 30 runs")).wait_for(timeout=WAIT_MS)
    wait_for_query(page, sort="-name", tag="sweep")
    assert names(page) == linked
    assert page.errors == []


def test_a_tag_picked_after_a_header_sort_keeps_the_sort_and_a_name_opens_its_own_link(
        served, page):
    """Sorted by a header (twice: descending), then a tag picked: the link used to drop
    the sort while the table stayed sorted, a name click then opened the detail page on
    a URL with the Runs view's parameters and no run= (a new tab on it showed another
    run), and Back brought the view sorted ascending."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    url, ids = served
    page.goto(f"{url}/")
    page.get_by_text(re.compile(r"^30 of 30 runs")).wait_for(timeout=WAIT_MS)
    click_header(page, "last loss")
    wait_for_query(page, sort="last_loss")
    click_header(page, "last loss")
    wait_for_query(page, sort="-last_loss")
    page.get_by_test_id("stMultiSelect").filter(has_text=re.compile(r"^Tags")).click()
    page.get_by_role("option", name="baseline").click()
    page.keyboard.press("Escape")
    page.get_by_text(re.compile(r"^10 of 30 runs")).wait_for(timeout=WAIT_MS)
    wait_for_query(page, tag="baseline", sort="-last_loss")
    shown = names(page)

    layout = grid_layout(page)
    column = next(c for c in layout["columns"] if c["title"].startswith("name"))
    heading = page.get_by_role("heading", name="Run detail")
    for _ in range(3):   # (the first click after the tag picker may only focus the grid)
        page.mouse.click(column["x"] + column["width"] / 2,
                         layout["box"]["y"] + layout["header"] + 17)
        try:
            heading.wait_for(timeout=5000)
            break
        except PlaywrightTimeout:
            continue
    heading.wait_for(timeout=WAIT_MS)
    top = ids[int(shown[0].removeprefix("run-"))]
    page.get_by_text(top).first.wait_for(timeout=WAIT_MS)
    assert urllib.parse.urlparse(page.url).path == "/run"
    assert query(page) == {"run": top[:8]}
    page.go_back()
    page.get_by_text(re.compile(r"^10 of 30 runs")).wait_for(timeout=WAIT_MS)
    wait_for_query(page, tag="baseline", sort="-last_loss")
    assert query(page) == {"tag": "baseline", "sort": "-last_loss"}
    assert names(page) == shown
    assert page.errors == []
