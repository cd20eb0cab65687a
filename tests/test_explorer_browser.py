"""End to end: `streamlit run app/main.py` in headless Chromium on a trained database.

One server and one browser serve the whole module; each test opens its own page (a new
session). Screenshots go to the test's tmp folder.
"""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest
from helpers.explorer import (
    AXIS_LABELS_JS,
    ScriptRuns,
    chromium,
    click_header,
    click_legend,
    drawn_runs,
    grid_layout,
    grid_rows,
    legend_opacity,
    scene_items,
    serving,
    sidebar_picks,
    tooltip_rows,
)
from helpers.procs import wait_until
from helpers.tiny import tiny_config, tiny_flags

from hlbd import importer
from hlbd.runner import resume_run, start_run
from hlbd.store import Store

pytestmark = pytest.mark.browser

WAIT_MS = 60_000
# Streamlit asks for a page's own URL path before it knows the page (streamlit#7074).
KNOWN_NOISE = ("the server responded with a status of 404",)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Real tiny runs served by `streamlit run`: two that went wrong first (one driven to
    a NaN loss, one whose loss exploded to tens), then three ordinary ones (one resumed),
    newest on top of the runs table, and one imported from an older tool's report;
    yields (url, ids, db). The runs page looks for new runs every second."""
    root = tmp_path_factory.mktemp("served")
    db = root / "runs.db"
    store = Store.open(str(db))
    ids = {name: start_run(tiny_config(name=name, **config), store,
                           runs_root=root / "runs", progress=False).run_id
           for name, config in (
               ("diverged", {"epochs": 2, "lr": 1e8, "max_grad_norm": 0.0,
                             "weight_decay": 0.0}),
               ("exploding", {"epochs": 4, "lr": 1.0, "max_grad_norm": 0.0}))}
    ids.update({name: start_run(tiny_config(name=name, epochs=3, lr=lr, save_interval=1),
                                store, runs_root=root / "runs", progress=False).run_id
                for name, lr in (("first", 2e-3), ("second", 5e-3), ("third", 1e-3))})
    store.close()
    store = Store.open(str(db))
    resume_run(store, ids["second"], epochs=4, progress=False)
    # An older tool's report of the first run's losses (written 2026-01-01: the table's
    # last row): its grad norms, LRs and times are not recorded.
    report = json.loads((root / "runs" / ids["first"] / "experiment_report.json").read_text())
    (root / "old" / "exp").mkdir(parents=True)
    (root / "old" / "exp" / "experiment_report.json").write_text(json.dumps(
        {"control_losses": report["control_losses"], "timestamp": 1_767_225_600.0}))
    [old] = importer.import_reports(store, root / "old", name="imported")
    ids["imported"] = old.run_id
    store.close()
    with serving(db, HLBD_UI_REFRESH_SECONDS="1") as url:
        yield url, ids, db


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser):
    """A fresh page (its own Streamlit session) that collects console errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: m.type == "error" and not any(
        n in m.text for n in KNOWN_NOISE) and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.requested = []
    page.on("request", lambda r: page.requested.append(r.url))
    yield page
    context.close()


def query(page) -> dict:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlparse(page.url).query))


def wait_for_picks(page, names: list[str], timeout_ms: int = WAIT_MS) -> None:
    """Wait until the sidebar shows exactly these runs picked."""
    for _ in range(timeout_ms // 200):
        if sidebar_picks(page) == sorted(names):
            return
        page.wait_for_timeout(200)
    assert sidebar_picks(page) == sorted(names)


def tick(page, row: int) -> None:
    """Click the checkbox of the runs table's row (1 = top; the grid is a canvas)."""
    box = page.get_by_test_id("stDataFrame").bounding_box()
    page.mouse.click(box["x"] + 15, box["y"] + 35 * row + 17)


def test_ticks_stay_on_the_runs_picked_when_a_new_run_arrives(served, page, tmp_path):
    url, _ids, db = served
    page.goto(url)
    page.get_by_text("6 of 6 runs").wait_for(timeout=WAIT_MS)
    # Newest first: third, second, first. Tick the second and third rows.
    tick(page, 2)
    wait_for_picks(page, ["second"])
    tick(page, 3)
    wait_for_picks(page, ["first", "second"])
    # A trainer starts a new run: it arrives on top at the page's next refresh.
    store = Store.open(str(db))
    try:
        newest = store.create_run("newest", tiny_config().to_dict(), {"bundled": 143})
        page.get_by_text("7 of 7 runs").wait_for(timeout=WAIT_MS)
        page.wait_for_timeout(1500)  # another refresh or two: nothing may move
        assert sidebar_picks(page) == ["first", "second"]
        page.screenshot(path=tmp_path / "runs_after_new_run.png", full_page=True)
        tick(page, 1)  # the new run, on top
        wait_for_picks(page, ["first", "newest", "second"])
        page.wait_for_function(f"() => decodeURIComponent(location.search)"
                               f".includes('{newest[:8]}')", timeout=WAIT_MS)
    finally:
        store.finish_run(newest, 1, "failed", "a test's stand-in for a trainer")
        store.close()
    assert page.errors == []


def test_a_compare_link_opens_that_view_and_charts_zoom_and_hover_together(served, page,
                                                                          tmp_path):
    url, ids, _ = served
    picked = f"{ids['first'][:8]},{ids['second'][:8]}"
    page.goto(f"{url}/compare?runs={picked}&x=step&smooth=0.3")
    chart = page.locator(".vega-embed").first
    chart.wait_for(timeout=WAIT_MS)
    page.get_by_text("Drag across a chart").wait_for(timeout=WAIT_MS)
    page.wait_for_timeout(1500)  # let Vega finish drawing
    wait_for_picks(page, ["first", "second"])
    assert page.locator(".hlbd-slider").first.inner_text().count("0.30") == 1
    assert query(page) == {"runs": picked, "x": "step", "smooth": "0.3"}
    page.screenshot(path=tmp_path / "compare_step.png", full_page=True)
    # The charts, y axes included, fit the page's width: nothing runs past its right
    # edge (the plots take the chart's width, the axes the room left beside it).
    right, edge = page.evaluate("""() => {
        const main = document.querySelector('[data-testid=stMainBlockContainer]');
        const canvas = document.querySelector('.vega-embed canvas');
        return [canvas.getBoundingClientRect().right, main.getBoundingClientRect().right
                - parseFloat(getComputedStyle(main).paddingRight)]}""")
    assert right <= edge + 16
    box = chart.bounding_box()
    # Hover over the first chart: one tooltip names every picked run's value there.
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + 160)
    tooltip = page.locator("#vg-tooltip-element")
    tooltip.wait_for(state="visible", timeout=WAIT_MS)
    text = tooltip.inner_text()
    assert f"first · {ids['first'][:8]}" in text and f"second · {ids['second'][:8]}" in text
    page.screenshot(path=tmp_path / "compare_hover.png", full_page=True)
    # Drag across it: every chart zooms to that range, and the link carries it.
    y = box["y"] + 160
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=8)
    page.mouse.up()
    page.wait_for_function("() => location.search.includes('range=')", timeout=WAIT_MS)
    page.get_by_text("Zoomed to").wait_for(timeout=WAIT_MS)
    low, high = map(float, query(page)["range"].split(","))
    assert 1 <= low < high
    page.wait_for_timeout(1500)
    page.screenshot(path=tmp_path / "compare_zoomed.png", full_page=True)
    box = page.locator(".vega-embed").first.bounding_box()
    page.mouse.dblclick(box["x"] + box["width"] * 0.5, box["y"] + 160)
    page.wait_for_function("() => !location.search.includes('range=')", timeout=WAIT_MS)
    assert page.errors == []
    # The charts' scripts came from the explorer's own server, like everything else.
    assert any(u.endswith("/vega.min.js") for u in page.requested)
    assert {urllib.parse.urlparse(u).netloc for u in page.requested
            if u.startswith("http")} == {urllib.parse.urlparse(url).netloc}


@pytest.mark.parametrize("path, title", [("/run", "Run detail"), ("/sql", "SQL"),
                                         ("/compare", "Compare runs")])
def test_every_page_opens_by_its_url(served, page, path, title):
    url, ids, _ = served
    page.goto(f"{url}{path}?run={ids['second'][:8]}&runs={ids['third'][:8]}")
    page.get_by_role("heading", name=title).wait_for(timeout=WAIT_MS)
    if path == "/run":
        page.get_by_text(ids["second"]).first.wait_for(timeout=WAIT_MS)
    if path == "/compare":
        page.locator(".vega-embed").first.wait_for(timeout=WAIT_MS)
    assert page.errors == []


def test_the_charts_in_the_browser_hold_exactly_the_stored_numbers(served, page):
    """What Vega draws is what the store holds: every effective step's loss to the last
    bit, and no band where a step has none (null stays null, never a made-up 0)."""
    url, ids, db = served
    page.goto(f"{url}/compare?runs={ids['first'][:8]},{ids['second'][:8]}&x=step")
    page.wait_for_function("() => document.querySelector('.vega-embed')?.hlbdView",
                           timeout=WAIT_MS)
    drawn = page.evaluate("""() => document.querySelector('.vega-embed').hlbdView
        .data('points_loss').map(d => [d.run, d.x, d.value, d.lo, d.hi])""")
    store = Store.open(str(db))
    try:
        expected = sorted([f"{name} · {ids[name][:8]}", float(s["step"]), s["loss"], None,
                           None] for name in ("first", "second")
                          for s in store.steps(ids[name]))
    finally:
        store.close()
    assert len(expected) > 30  # the resumed run's superseded steps are not among them
    assert sorted(drawn) == expected
    assert page.errors == []


def test_an_empty_runs_table_stays_above_its_caption(served, page):
    url, _, _ = served
    page.goto(url)
    page.get_by_text(re.compile(r"\d+ of \d+ runs")).wait_for(timeout=WAIT_MS)
    page.get_by_label("Filter", exact=True).fill("no-run-is-named-this")
    page.keyboard.press("Enter")
    caption = page.get_by_text(re.compile(r"^0 of \d+ runs"))
    caption.wait_for(timeout=WAIT_MS)
    grid = page.get_by_test_id("stDataFrame")
    grid.locator("canvas").first.wait_for(timeout=WAIT_MS)
    # Everything the grid draws (its canvas holds the header and the "empty" row) ends
    # above the caption's first line.
    bottom = grid.evaluate("(e) => Math.max(e.getBoundingClientRect().bottom, "
                           "...[...e.querySelectorAll('*')].map("
                           "(c) => c.getBoundingClientRect().bottom))")
    assert bottom <= caption.bounding_box()["y"]
    assert page.errors == []


def cut_cells(page, placeholder: str) -> list[tuple[str, int, float]]:
    """The columns of the page's grids that draw ``placeholder`` in a cell narrower than
    it: (title, the column's width, the width the text and the cell's padding need)."""
    cut = []
    for index in range(page.get_by_test_id("stDataFrame").count()):
        layout = grid_layout(page, index)
        needs = page.evaluate("(font) => { const c = document.createElement('canvas')"
                              ".getContext('2d'); c.font = font; return c.measureText("
                              f"{json.dumps(placeholder)}).width; }}", layout["font"])
        needs += 2 * layout["padding"]
        empty = {title for row in grid_rows(page, index)
                 for title, text in row.items() if text == ""}
        cut += [(c["title"], c["width"], needs) for c in layout["columns"]
                if c["title"] in empty and c["width"] < needs]
    return cut


def test_a_cell_not_recorded_says_so_whole_in_every_grid(served, page):
    url, ids, _ = served
    page.goto(url)
    page.get_by_text(re.compile(r"\d+ of \d+ runs")).wait_for(timeout=WAIT_MS)
    assert cut_cells(page, "not recorded") == []
    page.goto(f"{url}/run?run={ids['imported'][:8]}")
    page.get_by_role("heading", name="Epochs").wait_for(timeout=WAIT_MS)
    page.get_by_test_id("stDataFrame").nth(2).wait_for(timeout=WAIT_MS)
    assert cut_cells(page, "not recorded") == []
    assert page.errors == []


def test_clicking_a_header_sorts_the_runs_with_nan_last_either_way(served, page):
    url, _, _ = served
    page.goto(url)
    page.get_by_text(re.compile(r"\d+ of \d+ runs")).wait_for(timeout=WAIT_MS)
    newest_first = [r["name"] for r in grid_rows(page)]

    def best_losses() -> list[str]:
        """The best-loss column top to bottom, once the grid's order has changed."""
        for _ in range(WAIT_MS // 200):
            rows = grid_rows(page)
            if [r["name"] for r in rows] != newest_first:
                break
            page.wait_for_timeout(200)
        column = next(t for t in rows[0] if "best loss" in t)
        return [r[column] for r in rows]

    for descending in (False, True):
        click_header(page, "best loss")
        values = best_losses()
        measured = [float(v) for v in values if v not in ("NaN", "")]
        assert measured == sorted(measured, reverse=descending)
        # The diverged run's NaN after every number, then any run without epochs (an
        # empty cell: not recorded), never first as the best.
        tail = values[len(measured):]
        assert tail[0] == "NaN" and tail == sorted(tail, key=lambda v: v != "NaN")
        newest_first = [r["name"] for r in grid_rows(page)]
    assert grid_rows(page)[len(measured)]["name"] == "diverged"
    assert page.errors == []


SI = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def read_label(text: str) -> tuple[str, float]:
    """A tick label's notation (plain, SI or scientific) and the number it says."""
    text = text.replace(",", "").replace("\u2212", "-")
    if text[-1:] in SI:
        return "SI", float(text[:-1]) * SI[text[-1]]
    return ("scientific" if "e" in text else "plain"), float(text)


@pytest.mark.parametrize("x_axis", ["epoch", "step", "wall"])
def test_tick_labels_are_plain_numbers_unless_the_range_needs_more(served, page, x_axis):
    url, ids, _ = served
    picked = ",".join(ids[n][:8] for n in ("first", "second", "exploding"))
    # Every chart, the robust range off: the exploded loss spans 0 to about 60.
    page.goto(f"{url}/compare?runs={picked}&x={x_axis}&robust=0&log="
              "&charts=loss,grad_norm,lr,token_accuracy,tokens_per_second")
    page.wait_for_function("() => document.querySelector('.vega-embed')?.hlbdView",
                           timeout=WAIT_MS)
    axes = page.evaluate(AXIS_LABELS_JS)
    assert len(axes) >= 6  # five y axes and the shared x axis
    for labels in axes:
        read = [(read_label(t["text"]), t["value"]) for t in labels if t["text"]]
        notations = {notation for (notation, _), _ in read}
        assert len(notations) == 1, labels  # one notation per axis
        top = max(abs(v) for _, v in read)
        smallest = min((abs(v) for _, v in read if v), default=1.0)
        if notations != {"plain"}:  # SI or scientific only where plain digits do not fit
            assert top >= 1e5 or smallest < 1e-3, labels
        for (_, said), value in read:  # and each label says its tick's value
            assert said == pytest.approx(value, rel=0.05, abs=1e-12), labels
    assert page.errors == []


def test_the_hover_tooltip_lists_runs_with_a_value_there_by_value_the_nearest_first(
        served, page):
    url, ids, _ = served
    names = {f"{n} · {ids[n][:8]}" for n in ("first", "second", "third")}
    picked = ",".join(ids[n][:8] for n in ("first", "second", "third"))
    page.goto(f"{url}/compare?runs={picked}&x=step")
    page.wait_for_function("() => document.querySelector('.vega-embed')?.hlbdView",
                           timeout=WAIT_MS)
    bands = scene_items(page, "hover_loss")
    # The resumed run ("second", 4 epochs) has steps past the others' last: there the
    # tooltip has its row alone, no "null" for the runs without a value.
    last = bands[-1]
    page.mouse.move(last["x"], last["y"])
    title, rows = tooltip_rows(page)
    assert "null" not in page.locator("#vg-tooltip-element").inner_text()
    assert [name for name, _ in rows if name in names] == [f"second · {ids['second'][:8]}"]
    training = [row for row in rows if not row[0].endswith(" · validation")]
    assert title == last["datum"]["at"] and len(training) == 1
    # Its last epoch ended there: its held-out loss too, named as validation.
    assert [name for name, _ in rows if name not in names] == [
        f"second · {ids['second'][:8]} · validation"]
    assert float(rows[0][1]) == pytest.approx(
        next(v for k, v in last["datum"].items() if k.startswith("v") and v is not None),
        rel=1e-5)
    # Where all three have a value: every run once, the one nearest the pointer first
    # (here the lowest), the rest by value from the top of the chart down.
    middle = bands[len(bands) // 3]
    page.mouse.move(middle["x"], middle["y"])
    tooltip_rows(page)
    dots = scene_items(page, "dots_loss")
    assert {d["datum"]["run"] for d in dots} == names
    lowest = max(dots, key=lambda d: d["y"])  # the lowest value is drawn lowest
    page.mouse.move(middle["x"], lowest["y"] + 2)
    page.wait_for_timeout(300)
    _, rows = tooltip_rows(page)
    assert rows[0][0] == lowest["datum"]["run"]
    assert {r[0] for r in rows if not r[0].endswith(" · validation")} == names
    rest = [float(v) for _, v in rows[1:]]
    assert rest == sorted(rest, reverse=True)
    assert "null" not in page.locator("#vg-tooltip-element").inner_text()
    assert page.errors == []


def wait_for_chart(page, previous=None) -> None:
    """Until the compare charts are drawn (a new drawing, when ``previous`` was one)."""
    page.wait_for_function("(old) => { const v = document.querySelector('.vega-embed')"
                           "?.hlbdView; return v && v !== old && v._renderer; }",
                           arg=previous, timeout=WAIT_MS)


def current_view(page):
    return page.evaluate_handle("() => document.querySelector('.vega-embed').hlbdView")


def legend_after_click(page, before: dict) -> dict:
    """The legend's opacities once a click changed them (or as they are after WAIT_MS)."""
    for _ in range(WAIT_MS // 100):
        now = legend_opacity(page)
        if now != before:
            return now
        page.wait_for_timeout(100)
    return legend_opacity(page)


# In a browser page: how many pixels of the first chart's canvas are drawn (not clear).
DRAWN_PIXELS_JS = """() => {
  const canvas = document.querySelector('.vega-embed canvas');
  const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let drawn = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i]) drawn++;
  return drawn;
}"""


def test_the_charts_are_drawn_before_the_pointer_comes_near(served, page):
    url, ids, _ = served
    page.goto(f"{url}/compare?runs={ids['first'][:8]},{ids['second'][:8]}")
    wait_for_chart(page)
    # No pointer event: the lines, axes and legend are on the canvas all the same.
    page.wait_for_function(f"() => ({DRAWN_PIXELS_JS})() > 10000", timeout=WAIT_MS)
    assert page.errors == []


def two_runs_settled(served, page):
    """Compare of the first and second run, drawn, with no rerun under way: the second
    run's legend label and the page's script-run recorder."""
    url, ids, _ = served
    runs = ScriptRuns(page)
    page.goto(f"{url}/compare?runs={ids['first'][:8]},{ids['second'][:8]}")
    wait_for_chart(page)
    runs.wait_quiet(page)
    return f"second · {ids['second'][:8]}", runs


def test_a_control_change_reruns_the_charts_alone_not_the_page(served, page):
    second, runs = two_runs_settled(served, page)
    opened = runs.page_runs()
    assert opened >= 1
    # The x axis, a chart's log scale, the smoothing, a legend click, a zoom: each
    # reruns the charts' fragment, never the page around it.
    before = current_view(page)
    page.get_by_test_id("stButtonGroup").first.get_by_text("step", exact=True).click()
    wait_for_chart(page, before)
    page.get_by_test_id("stButtonGroup").nth(2).get_by_text("Loss", exact=True).click()
    page.wait_for_function("() => location.search.includes('log=')", timeout=WAIT_MS)
    page.locator(".hlbd-slider input").first.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => location.search.includes('smooth=0.01')", timeout=WAIT_MS)
    runs.wait_quiet(page)
    click_legend(page, second)
    page.wait_for_function("() => location.search.includes('hide=')", timeout=WAIT_MS)
    runs.wait_quiet(page)
    box = page.locator(".vega-embed").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + 160)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + 160, steps=8)
    page.mouse.up()
    page.wait_for_function("() => location.search.includes('range=')", timeout=WAIT_MS)
    runs.wait_quiet(page)
    fragment_runs = [ids for ids in runs.started if ids]
    assert len(fragment_runs) >= 5
    assert runs.page_runs() == opened
    assert page.errors == []


DRAWINGS_JS = "() => Number(document.querySelector('.vega-embed').dataset.drawings)"


def test_a_held_arrow_key_on_the_smoothing_costs_one_rerun_not_one_per_step(served, page):
    url, ids, _ = served
    runs = ScriptRuns(page)
    page.goto(f"{url}/compare?runs={ids['first'][:8]}&smooth=0.3")
    wait_for_chart(page)
    runs.wait_quiet(page)
    asked, started = runs.asked, len(runs.started)
    view, drawings = current_view(page), page.evaluate(DRAWINGS_JS)
    smoothed = page.evaluate("() => JSON.stringify(document.querySelector('.vega-embed')"
                             ".hlbdView.data('points_loss').map(r => r.smooth))")
    page.locator(".hlbd-slider input").first.focus()
    for _ in range(20):  # a held key repeats about every 30 ms
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(30)
    page.wait_for_function("() => location.search.includes('smooth=0.5')", timeout=WAIT_MS)
    runs.wait_quiet(page)
    assert runs.asked - asked == 1
    assert len(runs.started) - started == 1
    assert page.locator(".hlbd-slider").first.inner_text().count("0.50") == 1
    # The same layout with new numbers: swapped into the drawn view, drawn once, not a
    # new view built.
    page.wait_for_function(f"() => ({DRAWINGS_JS})() > {drawings}", timeout=WAIT_MS)
    assert page.evaluate(DRAWINGS_JS) == drawings + 1
    assert page.evaluate("(old) => document.querySelector('.vega-embed').hlbdView === old",
                         view)
    assert page.evaluate("() => JSON.stringify(document.querySelector('.vega-embed')"
                         ".hlbdView.data('points_loss').map(r => r.smooth))") != smoothed
    assert page.errors == []


def test_a_legend_click_hides_that_run_and_fades_its_entry_only(served, page):
    url, ids, _ = served
    first, second = (f"{n} · {ids[n][:8]}" for n in ("first", "second"))
    page.goto(f"{url}/compare?runs={ids['first'][:8]},{ids['second'][:8]}")
    wait_for_chart(page)
    drawn = drawn_runs(page)
    assert drawn[first] and drawn[second]
    # The resumed run draws its resume line (a rule with a "resumed ..." tooltip field).
    resumes = [i for i in scene_items(page) if isinstance(i["datum"], dict)
               and str(i["datum"].get("what", "")).startswith("resumed")]
    assert {i["datum"]["run"] for i in resumes} == {second}
    shown = legend_opacity(page)
    click_legend(page, second)
    faded = legend_after_click(page, shown)
    assert faded[second] < 1 and faded[first] == 1  # the clicked entry fades, no other
    after = drawn_runs(page)
    assert second not in after  # no line, band, dot or resume line of it is left
    assert after[first] == drawn[first]
    click_legend(page, second)  # again: back
    assert legend_after_click(page, faded) == shown
    assert drawn_runs(page) == drawn
    assert page.errors == []


def test_a_legend_click_does_not_send_the_charts_again(served, page):
    second, runs = two_runs_settled(served, page)
    charts = max(size for kind, size in runs.received if kind == "delta")
    for clicks in (1, 2):  # hidden, shown again
        since = len(runs.received)
        click_legend(page, second)
        page.wait_for_function("(n) => (location.search.match(/hide=/g) || []).length == n",
                               arg=2 - clicks, timeout=WAIT_MS)
        runs.wait_quiet(page)
        after = runs.received[since:]
        # The click's rerun drew the same charts: sent as a reference to the browser's
        # copy, nothing near the charts' size sent again.
        assert any(kind == "ref_hash" for kind, _ in after)
        assert max(size for _, size in after) < charts / 10
    assert page.errors == []


def test_runs_hidden_in_the_legend_stay_hidden_through_redraws_and_in_the_link(served,
                                                                               page):
    url, ids, _ = served
    first, second = (f"{n} · {ids[n][:8]}" for n in ("first", "second"))
    page.goto(f"{url}/compare?runs={ids['first'][:8]},{ids['second'][:8]}")
    wait_for_chart(page)
    click_legend(page, second)
    page.wait_for_function(f"() => location.search.includes('hide={ids['second'][:8]}')",
                           timeout=WAIT_MS)
    # A new drawing (another x axis: a new spec, a new Vega view): still hidden.
    before = current_view(page)
    page.get_by_test_id("stButtonGroup").first.get_by_text("step", exact=True).click()
    wait_for_chart(page, before)
    assert second not in drawn_runs(page) and drawn_runs(page)[first]
    assert legend_opacity(page)[second] < 1
    assert "hide=" in page.url
    # The link opens the view with the run hidden.
    other = page.context.new_page()
    other.goto(page.url)
    wait_for_chart(other)
    assert second not in drawn_runs(other) and drawn_runs(other)[first]
    assert legend_opacity(other)[second] < 1
    assert page.errors == []


def test_a_live_update_keeps_the_tooltip_and_the_hidden_runs_where_they_were(served, page,
                                                                            procs):
    url, ids, db = served
    # A trainer writes a run while the page shows it: the page redraws at each news.
    trainer = procs.hlbd("train", "--db", db, "--runs-dir", db.parent / "live-runs",
                         "--name", "live", *tiny_flags(epochs=400))
    store = Store.open(str(db))
    try:
        live = wait_until(lambda: next((r["run_id"] for r in store.list_runs()
                                        if r["name"] == "live" and r["epochs"] >= 2),
                                       None), trainer)
    finally:
        store.close()
    first = f"first · {ids['first'][:8]}"
    page.goto(f"{url}/compare?runs={live[:8]},{ids['first'][:8]}")
    wait_for_chart(page)
    click_legend(page, first)
    page.wait_for_function("() => location.search.includes('hide=')", timeout=WAIT_MS)
    band = scene_items(page, "hover_loss")[1]
    page.mouse.move(band["x"], band["y"])
    tooltip_rows(page)
    # The next live update draws the chart anew; the pointer does not move.
    before = current_view(page)
    wait_for_chart(page, before)
    assert trainer.poll() is None  # it was a live update, the run still going
    page.wait_for_timeout(500)
    tooltip = page.locator("#vg-tooltip-element")
    assert "visible" in (tooltip.get_attribute("class") or "")
    # It speaks of the x now under the pointer (the axis grows as epochs arrive).
    title, rows = tooltip_rows(page)
    assert title in {b["datum"]["at"] for b in scene_items(page, "hover_loss")}
    assert rows[0][0].startswith("live")
    assert first not in drawn_runs(page) and legend_opacity(page)[first] < 1
    assert page.errors == []


def in_view(page, wanted) -> dict:
    """The first drawn item whose datum is ``wanted``, scrolled into the window first."""
    def find() -> dict:
        return next(i for i in scene_items(page) if isinstance(i["datum"], dict)
                    and wanted(i["datum"]))

    height = page.viewport_size["height"]
    item = find()
    if not 50 < item["y"] < height - 50:
        page.mouse.move(page.viewport_size["width"] / 2, height / 2)
        page.mouse.wheel(0, item["y"] - height / 2)
        page.wait_for_timeout(500)
        item = find()
    return item


def test_markers_answer_a_pointer_near_them_not_only_on_their_few_pixels(served, page):
    url, ids, _ = served
    page.goto(f"{url}/compare?runs={ids['exploding'][:8]},{ids['second'][:8]}")
    wait_for_chart(page)
    targets = {
        # A flag diamond on the bottom edge (the exploding run's grad norms), and a
        # resume line (the resumed run's), each pointed at 10 px beside its centre.
        "anomaly": lambda d: d.get("rule") == "grad_explosion",
        "resume": lambda d: str(d.get("what", "")).startswith("resumed"),
    }
    for title, wanted in targets.items():
        item = in_view(page, wanted)
        page.mouse.move(item["x"] + 10, item["y"] if title == "anomaly" else
                        item["y"] - item["height"] / 4)
        page.wait_for_timeout(300)
        _, rows = tooltip_rows(page)
        assert title in dict(rows), (title, rows)
    assert page.errors == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_chart_saves_alone_as_a_png_on_the_page_background_named_for_its_runs(
        served, browser, scheme, tmp_path):
    from PIL import Image

    url, ids, _ = served
    context = browser.new_context(viewport={"width": 1400, "height": 1100},
                                  color_scheme=scheme, accept_downloads=True)
    try:
        page = context.new_page()
        page.goto(f"{url}/compare?runs={ids['first'][:8]},{ids['second'][:8]}")
        wait_for_chart(page)
        background = page.evaluate("() => getComputedStyle(document.querySelector("
                                   "'[data-testid=stApp]')).backgroundColor")
        page_rgb = tuple(int(v) for v in re.findall(r"\d+", background)[:3])
        with page.expect_download() as saved:
            page.locator(".hlbd-export button", has_text="Gradient norm").click()
        assert saved.value.suggested_filename == "Gradient norm - first, second.png"
        path = tmp_path / f"{scheme}.png"
        saved.value.save_as(path)
        image = Image.open(path).convert("RGBA")
        # Opaque, on the page's own background (a dark viewer shows it as the page did).
        width, height = image.size
        for corner in ((0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1)):
            assert image.getpixel(corner) == (*page_rgb, 255)
        # One chart with the legend, not the stack of three (at twice the screen's pixels).
        stack = page.locator(".vega-embed canvas").first.bounding_box()["height"]
        assert height / 2 < 0.5 * stack
        assert len(image.getcolors(maxcolors=1 << 24)) > 20  # it drew a chart, not a blank
    finally:
        context.close()


# In a browser page: the widgets of the main column whose content runs past their own box
# or past the column, the charts' canvases that run past the column, and how wide the
# page scrolls.
FIT_JS = """() => {
  const main = document.querySelector('[data-testid=stMainBlockContainer]');
  const right = main.getBoundingClientRect().right
    - parseFloat(getComputedStyle(main).paddingRight);
  const cut = [];
  for (const e of main.querySelectorAll('[data-testid=stButtonGroup], [data-testid=stSlider],'
      + ' [data-testid=stCheckbox], [data-testid=stWidgetLabel], .hlbd-export, .hlbd-slider')) {
    const box = e.getBoundingClientRect();
    let inner = box.right;
    for (const c of e.querySelectorAll('*')) inner = Math.max(inner, c.getBoundingClientRect().right);
    if (e.scrollWidth > e.clientWidth + 1 || inner > box.right + 1 || box.right > right + 1) {
      cut.push(e.innerText.slice(0, 40));
    }
  }
  const overflow = [...document.querySelectorAll('.vega-embed canvas')]
    .filter((c) => c.getBoundingClientRect().right > right + 1).length;
  return {cut, overflow, scroll: document.documentElement.scrollWidth - window.innerWidth};
}"""


@pytest.mark.parametrize("width, charts", [
    (800, ""), (1400, "&charts=loss,grad_norm,lr,token_accuracy,tokens_per_second")])
def test_the_compare_page_fits_the_window_its_controls_and_charts_whole(served, browser,
                                                                       width, charts):
    url, ids, _ = served
    context = browser.new_context(viewport={"width": width, "height": 1000})
    try:
        page = context.new_page()
        picked = ",".join(ids[n][:8] for n in ("first", "second", "exploding"))
        # The exploded run's loss makes the chart say, at length, what the robust range
        # left out; every chart is on the log-scale pills at 1400 px.
        page.goto(f"{url}/compare?runs={picked}{charts}")
        wait_for_chart(page)
        page.get_by_text("Save as PNG").wait_for(timeout=WAIT_MS)
        assert page.evaluate(FIT_JS) == {"cut": [], "overflow": 0, "scroll": 0}
    finally:
        context.close()


def test_the_sidebar_folds_away_for_good_and_every_page_stays_one_click_off(served,
                                                                            browser):
    url, ids, _ = served
    context = browser.new_context(viewport={"width": 800, "height": 1000})
    try:
        page = context.new_page()
        page.goto(f"{url}/compare?runs={ids['first'][:8]}")
        wait_for_chart(page)
        sidebar = page.get_by_test_id("stSidebar")
        assert sidebar.bounding_box()["width"] <= 260  # open, it leaves the page room
        sidebar.hover()
        page.get_by_test_id("stSidebarCollapseButton").click()
        page.wait_for_function("() => document.querySelector('[data-testid=stSidebar]')"
                               ".getBoundingClientRect().right <= 0", timeout=WAIT_MS)
        # Folded, every page is still reachable, and it stays folded.
        for name, heading in (("SQL", "SQL"), ("Runs", "Runs"), ("Run detail", "Run detail"),
                              ("Compare", "Compare runs")):
            page.get_by_role("link", name=name, exact=True).click()
            page.get_by_role("heading", name=heading).wait_for(timeout=WAIT_MS)
            assert sidebar.bounding_box()["x"] + sidebar.bounding_box()["width"] <= 0
        assert page.evaluate(FIT_JS)["scroll"] == 0
    finally:
        context.close()
