"""End to end: `streamlit run app/main.py` in headless Chromium on a trained database."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import tiny_config
from explorer_helpers import APP, free_port, streamlit_flags, wait_until_serving

from hlbd.runner import start_run
from hlbd.store import Store

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
NAMES = ("browser-a", "browser-b")  # the table lists them newest first
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


@pytest.fixture
def trained_db(tmp_path):
    store = Store.open(str(tmp_path / "runs.db"))
    ids = [start_run(tiny_config(name=name, epochs=3, lr=lr), store,
                     runs_root=tmp_path / "runs", progress=False).run_id
           for name, lr in zip(NAMES, (2e-3, 5e-3))]
    store.close()
    return tmp_path / "runs.db", ids


@pytest.fixture
def explorer(trained_db):
    """The explorer served by `streamlit run` on the trained database; yields its URL."""
    db, ids = trained_db
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), *streamlit_flags(port)],
        env={**os.environ, "HLBD_DB": str(db)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_serving(port, server)
        yield f"http://127.0.0.1:{port}", ids
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_explorer_in_a_browser_lists_runs_and_draws_charts_without_console_errors(
        explorer, tmp_path):
    from playwright.sync_api import sync_playwright

    url, ids = explorer
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.get_by_text(f"{len(ids)} of {len(ids)} runs").wait_for(timeout=60_000)
        table = page.get_by_test_id("stDataFrame")
        table.wait_for()
        # Tick both rows' checkboxes (the grid is a canvas: first column, rows of 35 px);
        # each picked run then shows in the sidebar's "Runs to compare".
        box = table.bounding_box()
        for row in range(1, len(ids) + 1):
            page.mouse.click(box["x"] + 15, box["y"] + 35 * row + 17)
            page.get_by_test_id("stSidebar").get_by_text(
                f"{NAMES[len(ids) - row]} · ", exact=False).wait_for(timeout=30_000)
        page.screenshot(path=tmp_path / "runs.png", full_page=True)
        page.get_by_role("link", name="Compare").click()
        page.locator(".vega-embed").nth(2).wait_for(timeout=60_000)
        page.wait_for_timeout(1000)  # let Vega finish drawing before the picture
        page.screenshot(path=tmp_path / "compare.png", full_page=True)
        browser.close()
    assert errors == []
    assert (tmp_path / "runs.png").stat().st_size > 0
    assert (tmp_path / "compare.png").stat().st_size > 0
