"""Driving the explorer in tests: AppTest on app/main.py, reading its Vega-Lite charts, and
serving it with `streamlit run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from streamlit.components.v2.bidi_component.constants import ARROW_REF_KEY
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from helpers.procs import free_port, wait_until

APP = Path(__file__).resolve().parents[2] / "app" / "main.py"


def open_app(monkeypatch, db: Path | str) -> AppTest:
    """The explorer on ``db`` (through HLBD_DB, as a user would point it), first page run."""
    monkeypatch.setenv("HLBD_DB", str(db))
    return AppTest.from_file(str(APP), default_timeout=60).run()


def compare(at: AppTest, run_ids: list[str], x_axis: str = "epoch") -> AppTest:
    """Pick runs in the sidebar and open the Compare page."""
    at.sidebar.multiselect(key="picked").set_value(run_ids).run()
    at.switch_page("views/compare.py").run()
    if x_axis != "epoch":
        at.button_group(key="x_axis").set_value(x_axis).run()
    return at


def runs_table_key(at: AppTest) -> str:
    """The key the Runs page's table is drawn under now (app/table_picks.py: a click the
    page acted on renews it)."""
    round_ = at.session_state.get("runs_table_round", 0)
    return f"runs_table_{round_}" if round_ else "runs_table"


def component_data(at: AppTest, name: str) -> dict:
    """The data the page's first component ``name`` (hlbd_chart, hlbd_slider) was drawn
    with, its Arrow tables left as references."""
    element = next(e for e in at.get("bidi_component")
                   if e.proto.component_name == name and e.proto.HasField("mixed"))
    return json.loads(element.proto.mixed.json)


def slide(at: AppTest, key: str, value: float) -> AppTest:
    """Move the debounced slider ``key`` (app/debounced_slider.py) to ``value``, as its
    browser side says it once the hand stops, and run the page."""
    at.session_state[key] = {"value": value}
    return at.run()


def slider_value(at: AppTest, key: str) -> float:
    """The value the debounced slider ``key`` shows."""
    element = next(e for e in at.get("bidi_component")
                   if e.proto.component_name == "hlbd_slider"
                   and e.proto.id.endswith(f"-{key}"))
    return json.loads(element.proto.json)["value"]


class Chart:
    """One metric's chart of the compare spec: its layers and its datasets as frames."""

    def __init__(self, spec: dict, datasets: dict[str, pd.DataFrame]):
        self.spec = spec
        self.metric = next(layer["data"]["name"].removeprefix("points_")
                           for layer in self._units() if "data" in layer
                           and layer["data"]["name"].startswith("points_"))
        self.datasets = datasets

    def _units(self) -> list[dict]:
        out = []

        def walk(node):
            if "layer" in node:
                for child in node["layer"]:
                    walk(child)
            else:
                out.append(node)

        walk(self.spec)
        return out

    @property
    def title(self) -> str:
        return self.spec["title"]["text"]

    @property
    def subtitle(self) -> str:
        sub = self.spec["title"].get("subtitle") or ""
        return " ".join(sub) if isinstance(sub, list) else sub

    def frame(self, kind: str, columns: list[str]) -> pd.DataFrame:
        name = f"{kind}_{self.metric}"
        return self.datasets[name] if name in self.datasets else pd.DataFrame(columns=columns)

    @property
    def points(self) -> pd.DataFrame:
        return self.frame("points", ["run", "x", "value", "lo", "hi", "piece"])

    @property
    def hover(self) -> pd.DataFrame:
        return self.frame("hover", ["x", "x_lo", "x_hi", "at"])

    @property
    def nonfinite(self) -> pd.DataFrame:
        return self.frame("nonfinite", ["run", "x", "at", "what"])

    @property
    def clipped(self) -> pd.DataFrame:
        return self.frame("clipped", ["run", "x", "at", "what", "edge"])

    @property
    def flags(self) -> pd.DataFrame:
        return self.frame("flags", ["run", "x", "rule", "message"])

    @property
    def resumes(self) -> pd.DataFrame:
        return self.frame("resumes", ["run", "x", "what"])

    def marks(self) -> list[dict]:
        """Every mark of every (nested) layer, with its encoding and data name."""
        return [{**(u["mark"] if isinstance(u["mark"], dict) else {"type": u["mark"]}),
                 "encoding": u.get("encoding", {}), "data": u.get("data", {}).get("name")}
                for u in self._units()]

    def x_scale(self) -> dict:
        return next(m["encoding"]["x"]["scale"] for m in self.marks()
                    if m["data"] == f"points_{self.metric}")

    def y_scale(self) -> dict:
        return next(m["encoding"]["y"]["scale"] for m in self.marks()
                    if m["data"] == f"points_{self.metric}" and m["type"] == "line")


def chart_spec(at: AppTest) -> tuple[dict, dict[str, pd.DataFrame]]:
    """The page's chart, as the browser gets it (app/vega_component.py): its Vega-Lite
    spec and its named datasets, each run named by its label again."""
    element = next(e for e in at.get("bidi_component")
                   if e.proto.component_name == "hlbd_chart" and e.proto.HasField("mixed"))
    data = json.loads(element.proto.mixed.json)
    blobs = element.proto.mixed.arrow_blobs
    datasets = {}
    for name in data["datasets"]:
        frame = convert_arrow_bytes_to_pandas_df(blobs[data[name][ARROW_REF_KEY]].data)
        if "run" in frame:
            frame["run"] = [data["spec"]["usermeta"]["runs"][i] for i in frame["run"]]
        datasets[name] = frame
    return data["spec"], datasets


def charts(at: AppTest) -> dict[str, Chart]:
    """The metric charts of the page's chart, by title."""
    spec, datasets = chart_spec(at)
    return {c.title: c for c in (Chart(child, datasets) for child in spec["vconcat"])}


def column_formats(element) -> dict[str, str]:
    """A grid's column number formats (from its column config), by column name."""
    config = json.loads(element.proto.columns or "{}")
    return {name: (c.get("type_config") or {}).get("format")
            for name, c in config.items() if isinstance(c, dict)}


# In a browser page: the runs grid's columns as glide-data-grid lays them out (title,
# width in px, the checkbox column first) and the box of its canvas, read from the
# DataEditor's React props (the grid is drawn on a canvas; nothing else says where a
# column is).
GRID_LAYOUT_JS = """(index) => {
  const canvas = document.querySelectorAll('[data-testid=stDataFrame]')[index]
    ?.querySelector('canvas');
  if (!canvas) return null;
  const key = Object.keys(canvas).find((k) => k.startsWith('__reactFiber$'));
  for (let f = canvas[key]; f; f = f.return) {
    const p = f.memoizedProps;
    if (p && Array.isArray(p.columns) && p.getCellContent && p.theme) {
      const box = canvas.getBoundingClientRect();
      return {columns: p.columns.map((c) => ({title: c.title, width: c.width})),
              box: {x: box.x, y: box.y, width: box.width, height: box.height},
              header: p.headerHeight, font: `${p.theme.baseFontStyle} ${p.theme.fontFamily}`,
              padding: p.theme.cellHorizontalPadding};
    }
  }
  return null;
}"""


def grid_layout(page, index: int = 0) -> dict:
    """The layout of the page's ``index``-th grid (GRID_LAYOUT_JS), each column with the
    x of its left edge on the page."""
    for _ in range(300):   # (while the grid is drawn anew, as in grid_rows)
        _wait_for_grid(page, index)
        layout = page.evaluate(GRID_LAYOUT_JS, index)
        if layout is not None:
            break
        page.wait_for_timeout(200)
    x = layout["box"]["x"]
    for column in layout["columns"]:
        column["x"] = x
        x += column["width"]
    return layout


def _wait_for_grid(page, index: int) -> None:
    """Until the grid is drawn (its component loads after the page's text)."""
    page.locator("[data-testid=stDataFrame] table[role=grid]").nth(index).wait_for(
        state="attached", timeout=60_000)


def click_header(page, title: str, index: int = 0) -> None:
    """Click the header of the grid's column whose title holds ``title``."""
    layout = grid_layout(page, index)
    column = next(c for c in layout["columns"] if title in c["title"])
    page.mouse.click(column["x"] + column["width"] / 2,
                     layout["box"]["y"] + layout["header"] / 2)


def grid_rows(page, index: int = 0) -> list[dict]:
    """The grid's rows as its accessibility table gives them (the rows drawn), each a
    dict of column title to cell text (waiting while the grid is drawn anew: the Runs
    table is a new widget after a header click, app/table_picks.py)."""
    for _ in range(300):
        _wait_for_grid(page, index)
        rows = page.evaluate(GRID_ROWS_JS, index)
        if rows is not None:
            return rows
        page.wait_for_timeout(200)
    raise AssertionError("the grid was not drawn again")


GRID_ROWS_JS = """(index) => {
      const table = document.querySelectorAll('[data-testid=stDataFrame]')[index]
        ?.querySelector('table[role=grid]');
      if (!table) return null;
      const titles = [...table.querySelectorAll('th')].map((th) => th.innerText);
      return [...table.querySelectorAll('tbody tr')].map((tr) => Object.fromEntries(
        [...tr.querySelectorAll('td')].map((td, i) => [titles[i], td.innerText])));
    }"""


# In a browser page: every axis the compare charts drew, as the tick values and the label
# texts Vega drew for them (from its scenegraph).
AXIS_LABELS_JS = """() => {
  const view = document.querySelector('.vega-embed').hlbdView;
  const axes = [];
  const walk = (group) => {
    for (const mark of group.items || []) {
      if (mark.role === 'axis-label') {
        axes.push(mark.items.map((item) => ({value: item.datum.value, text: item.text})));
      }
      if (mark.marktype === 'group') for (const item of mark.items) walk(item);
    }
  };
  walk(view.scenegraph().root.items[0]);
  return axes;
}"""


# In a browser page: the items Vega drew for the marks whose name starts with
# ``args.name`` (or whose role is ``args.role``; every mark's with neither), each with
# its datum, opacity and the page position of its centre, from the first chart's
# scenegraph.
SCENE_ITEMS_JS = """(args) => {
  const view = document.querySelector('.vega-embed').hlbdView;
  const canvas = view.container().querySelector('canvas').getBoundingClientRect();
  const [originX, originY] = view.origin();
  const out = [];
  const walk = (group) => {
    for (const mark of group.items || []) {
      const named = args.name && (mark.name || '').startsWith(args.name);
      const every = !args.name && !args.role;
      if (every || named || (args.role && mark.role === args.role)) {
        let x = canvas.x + originX, y = canvas.y + originY;
        for (let g = mark.group; g; g = g.mark && g.mark.group) {
          x += g.x || 0;
          y += g.y || 0;
        }
        for (const item of mark.items) {
          const b = item.bounds;
          out.push({mark: mark.name, role: mark.role, datum: item.datum,
                    opacity: item.opacity, x: x + (b.x1 + b.x2) / 2,
                    y: y + (b.y1 + b.y2) / 2, width: b.x2 - b.x1, height: b.y2 - b.y1});
        }
      }
      if (mark.marktype === 'group') for (const item of mark.items) walk(item);
    }
  };
  walk(view.scenegraph().root.items[0]);
  return out;
}"""


def scene_items(page, name: str | None = None, role: str | None = None) -> list[dict]:
    """The drawn items of the compare charts' marks named ``name...`` or of ``role``."""
    return page.evaluate(SCENE_ITEMS_JS, {"name": name, "role": role})


def drawn_runs(page) -> dict[str, int]:
    """How many items the charts draw for each run (lines' points, bands, dots, markers,
    resume lines), legend left out."""
    counts: dict[str, int] = {}
    for item in scene_items(page):
        run = (item["datum"] or {}).get("run") if isinstance(item["datum"], dict) else None
        if run and not (item["role"] or "").startswith("legend"):
            counts[run] = counts.get(run, 0) + 1
    return counts


def legend_opacity(page) -> dict[str, float]:
    """Each legend entry's label opacity, by run label."""
    return {i["datum"]["value"]: i["opacity"] for i in scene_items(page, role="legend-label")}


def click_legend(page, label: str) -> None:
    """Click the legend entry of the run labelled ``label``."""
    entry = next(i for i in scene_items(page, role="legend-label")
                 if i["datum"]["value"] == label)
    page.mouse.click(entry["x"], entry["y"])


def tooltip_rows(page) -> tuple[str, list[tuple[str, str]]]:
    """The visible Vega tooltip: its title and its (name, value) rows, in order."""
    tooltip = page.locator("#vg-tooltip-element")
    tooltip.wait_for(state="visible", timeout=60_000)
    title = tooltip.locator("h2")
    rows = [(tr.locator("td.key").inner_text(), tr.locator("td.value").inner_text())
            for tr in tooltip.locator("tr").all()]
    return (title.inner_text() if title.count() else ""), rows


def wait_until_serving(port: int, server: subprocess.Popen, timeout: float = 120) -> None:
    """Wait for a Streamlit server's health endpoint (or fail with its output)."""

    def health_check_answers_ok() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health") as r:
                return r.read() == b"ok"
        except OSError:
            return False  # nothing listens on the port yet

    wait_until(health_check_answers_ok, server, timeout=timeout, every=0.2)


def streamlit_flags(port: int) -> list[str]:
    return ["--server.headless", "true", "--server.port", str(port),
            "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]


@contextmanager
def serving(db, **env: str) -> Iterator[str]:
    """`streamlit run app/main.py` on ``db`` (``env``: more of its environment) for the
    block; yields its URL once it answers, and stops its process group after (SIGTERM,
    then SIGKILL if it lingers)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), *streamlit_flags(port)],
        env={**os.environ, "HLBD_DB": str(db), **env}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_until_serving(port, server)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@contextmanager
def chromium():
    """Headless Chromium (Debian's) for the block."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def sidebar_picks(page) -> list[str]:
    """The runs shown picked in the sidebar's multiselect (the names of their labels)."""
    text = page.get_by_test_id("stSidebar").get_by_test_id("stMultiSelect").inner_text()
    return sorted(line.split(" · ")[0].strip() for line in text.splitlines() if " · " in line)


class ScriptRuns:
    """The script runs a browser page's server reports on its websocket, and the reruns
    the page asked for: read from Streamlit's own messages (ForwardMsg new_session names
    the fragments a run reruns, none for a run of the whole page; BackMsg rerun_script),
    so a fragment's run and the page's are told apart by what the server says.
    Attach before the page opens its websocket (before goto)."""

    def __init__(self, page):
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        self.started: list[tuple[str, ...]] = []   # each run's fragment ids
        self.finished = 0
        self.asked = 0
        # Every message received: (its type, its bytes); "ref_hash" for one that only
        # names a message the browser holds already (Streamlit's ForwardMsg cache).
        self.received: list[tuple[str, int]] = []

        def received(payload) -> None:
            if isinstance(payload, bytes):
                msg = ForwardMsg()
                msg.ParseFromString(payload)
                kind = msg.WhichOneof("type")
                self.received.append((kind, len(payload)))
                if kind == "new_session":
                    self.started.append(tuple(msg.metadata.run.fragment_ids))
                elif kind == "script_finished":
                    self.finished += 1

        def sent(payload) -> None:
            if isinstance(payload, bytes):
                msg = BackMsg()
                msg.ParseFromString(payload)
                self.asked += msg.WhichOneof("type") == "rerun_script"

        def watch(ws) -> None:
            ws.on("framereceived", received)
            ws.on("framesent", sent)

        page.on("websocket", watch)

    def page_runs(self) -> int:
        """Runs of the whole page so far (no fragment named)."""
        return sum(1 for ids in self.started if not ids)

    def wait_quiet(self, page, quiet_ms: int = 1500, timeout_ms: int = 60_000) -> None:
        """Until every run started has finished and none started for ``quiet_ms``."""
        seen, still = (len(self.started), self.finished), 0
        for _ in range(timeout_ms // 100):
            page.wait_for_timeout(100)
            now = (len(self.started), self.finished)
            still = still + 100 if now == seen else 0
            seen = now
            if still >= quiet_ms and self.finished >= len(self.started):
                return
        raise TimeoutError("the page kept running")
