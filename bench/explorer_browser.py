"""How long the explorer's Compare page takes in a browser, as ratios measured in one run.

The database holds RUNS runs of STEPS optimizer steps each: the real per-step rows of a
tiny training run, repeated to length, in epochs of 1,000 steps whose rows summarise
those steps (mean loss, grad-norm mean/min/max, step count; what a trainer records per
epoch beyond that is left not recorded). They are written through the store, so the
step rollups are maintained as a trainer's would be.

Each repeat starts the explorer's server afresh as `hlbd ui` does (`streamlit run
app/main.py` with its libraries imported while the server starts: hlbd/cli/ui_server.py)
and opens, in headless Chromium with a fresh profile, the link /compare?runs=...&x=step:

- cold: that first page of the new server and profile (the database's first reads, the
  scripts' first download), against the same first page of a one-line Streamlit app
  (st.write) on a server and profile of its own: goal <= 1.5x. Also printed: the same
  first page on plain `streamlit run` (its imports paid by the first page), each
  server's time until it serves, and cold against our own warm load (proposed goal
  <= 1.5x; the one-line app's own ratio beside it).
- warm: the same link again in a new page (a new session: the server's caches hold the
  data, the browser's the scripts), against the same page with its charts left out
  (&charts=: everything else the page shows; goal <= 1.3x) and against the SQL page in
  the same profile (goal <= 1.6x). The charts' part (warm less charts-left-out) is also
  set against Vega alone drawing the very spec and rows the page drew, in a blank page
  of a profile that fetched the scripts once (proposed goal <= 1.3x): what drawing these
  charts costs at all, without Streamlit, the server or our component.
- in the page: in an open Compare page, a control is changed and the time taken from
  the change until every chart is drawn again and the run has finished: the x axis
  (epoch, then back to step: the switch back is timed), the smoothing (a click on its
  slider), a chart added (a metric pill), a legend click (no redrawing: until the run
  it causes has finished) and a zoom (a drag across a chart, timed from the button's
  release; read again from the database by step). The same on a second server whose page has no fragments (the app
  as it is, every st.fragment run as a plain function): each change reruns the whole
  page, as before the charts became a fragment. Goal: <= 0.6x for each; also each
  against the warm load of the page (proposed goal <= 0.6x).
- repeated input: the smoothing slider's arrow key pressed 30 times in a row, as a held
  key repeats: the reruns the browser asked for and the runs the server started, until
  the page is idle (goal: one), and the time from the last press until then.

Runs and their kinds are read from the websocket itself (Streamlit's ForwardMsg
new_session / script_finished, each naming the fragments it reran), so a fragment run
and a page run are told apart by what the server says, not by guessing.

With --split it also says where each load's time went: from navigation until the
largest websocket message (the charts' spec and data) arrived, then until the charts
were drawn.

Usage: python bench/explorer_browser.py [--runs 20] [--steps 100000] [--db PATH]
       [--repeat 3] [--split]    (--db keeps the database between bench runs)
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from hlbd.config import TrainConfig
from hlbd.runner import start_run
from hlbd.store import Store

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = ROOT / "app"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1100}
WAIT_MS = 120_000
CHARTS = ".vega-embed canvas"
# --split: note the largest websocket message (its size, when it arrived).
SPLIT_SCRIPT = """(() => {
  const Base = window.WebSocket, seen = window.__hlbdLargest = {bytes: 0, at: null};
  window.WebSocket = class extends Base {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", e => {
        const bytes = e.data.byteLength ?? e.data.size ?? e.data.length;
        if (bytes > seen.bytes) { seen.bytes = bytes; seen.at = performance.now(); }
      });
    }
  };
})();"""
# The app with every st.fragment a plain function: a control change reruns the page.
WHOLE_PAGE_MAIN = '''import runpy

import streamlit as st


def plain(func=None, **_):
    return func if func is not None else (lambda f: f)


st.fragment = plain
runpy.run_path({main!r}, run_name="__main__")
'''
EPOCH_STEPS = 1000
BATCH = 10_000
PRESSES = 30


def real_steps(root: Path) -> list[dict]:
    """The steps of a real tiny run, trained in a database of its own (so the bench
    database holds the bench runs only)."""
    store = Store.open(str(root / "source.db"))
    try:
        config = TrainConfig(name="source", epochs=5, d_model=32, n_layers=1, n_heads=2,
                             d_ff=64, dropout=0.0, save_interval=0, device="cpu")
        run_id = start_run(config, store, runs_root=root / "runs", progress=False).run_id
        return store.steps(run_id)
    finally:
        store.close()


def epoch_row(epoch: int, steps: list[dict]) -> dict:
    """What the epoch's steps say about it; the rest is left not recorded."""
    norms = [s["grad_norm"] for s in steps]
    return {"epoch": epoch, "loss": sum(s["loss"] for s in steps) / len(steps),
            "grad_norm": sum(norms) / len(norms), "grad_norm_max": max(norms),
            "grad_norm_min": min(norms), "steps": len(steps), "nonfinite_steps": 0,
            "lr": steps[0]["lr"]}


def fill(path: Path, runs: int, steps: int) -> list[str]:
    """The bench database (reused when it already holds the runs); returns run ids."""
    store = Store.open(str(path))
    try:
        existing = [r["run_id"] for r in store.list_runs() if r["name"].startswith("bench-")]
        if len(existing) >= runs:
            return existing[:runs]
        source = real_steps(path.parent)
        ids = []
        for r in range(runs):
            run_id = store.create_run(f"bench-{r}", {"bench": True}, {"bench": steps})
            rows = [{"step": n, "epoch": (n - 1) // EPOCH_STEPS + 1, "loss": s["loss"],
                     "grad_norm": s["grad_norm"], "lr": s["lr"]}
                    for n, s in zip(range(1, steps + 1), itertools.cycle(source))]
            for start in range(0, steps, BATCH):
                store.record_steps(run_id, 1, rows[start:start + BATCH])
            for e in range(steps // EPOCH_STEPS):
                part = rows[e * EPOCH_STEPS:(e + 1) * EPOCH_STEPS]
                store.record_epoch(run_id, 1, epoch_row(e + 1, part))
            store.finish_run(run_id, 1, "finished")
            ids.append(run_id)
        return ids
    finally:
        store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(db: Path, app: Path = APP_DIR / "main.py",
          module: str = "hlbd.cli.ui_server") -> tuple[subprocess.Popen, str]:
    """``streamlit run app`` as ``hlbd ui`` starts it (``module``: "streamlit" for plain
    streamlit); the server's ``ready_seconds``: from its start until it serves."""
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", module, "run", str(app),
         "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, "HLBD_DB": str(db)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health") as r:
                if r.read() == b"ok":
                    server.ready_seconds = time.perf_counter() - started
                    return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    stop(server)
    raise SystemExit("the explorer did not start in 120 s")


def stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def whole_page_app(root: Path) -> Path:
    """app/ as it is in a folder of links, its main script running every st.fragment as
    a plain function (WHOLE_PAGE_MAIN)."""
    folder = root / "whole_page"
    folder.mkdir(exist_ok=True)
    for item in APP_DIR.iterdir():
        if item.name not in ("main.py", "__pycache__") and not (folder / item.name).exists():
            (folder / item.name).symlink_to(item)
    main = folder / "main.py"
    main.write_text(WHOLE_PAGE_MAIN.format(main=str(APP_DIR / "main.py")))
    return main


class Runs:
    """The script runs a page's server reports on its websocket: (time, "new_session" or
    "script_finished", fragment ids), and the rerun requests the page sent."""

    def __init__(self, page):
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        self.events: list[tuple[float, str, tuple]] = []
        self.requests: list[float] = []

        def received(payload) -> None:
            if isinstance(payload, bytes):
                msg = ForwardMsg()
                msg.ParseFromString(payload)
                kind = msg.WhichOneof("type")
                if kind in ("new_session", "script_finished"):
                    self.events.append((time.perf_counter(), kind,
                                        tuple(msg.metadata.run.fragment_ids)))

        def sent(payload) -> None:
            if isinstance(payload, bytes):
                msg = BackMsg()
                msg.ParseFromString(payload)
                if msg.WhichOneof("type") == "rerun_script":
                    self.requests.append(time.perf_counter())

        def watch(ws) -> None:
            ws.on("framereceived", received)
            ws.on("framesent", sent)

        page.on("websocket", watch)

    def started_since(self, when: float) -> list[tuple]:
        return [e for e in self.events if e[0] >= when and e[1] == "new_session"]

    def finished_since(self, when: float) -> list[tuple]:
        return [e for e in self.events if e[0] >= when and e[1] == "script_finished"]


def settle(page, runs: Runs, since: float, redraw: bool) -> float:
    """Wait until a run started after ``since`` has finished with none after it pending
    (and with ``redraw``, a new drawing of the charts is on the page); the time then."""
    deadline = time.perf_counter() + WAIT_MS / 1000
    while time.perf_counter() < deadline:
        started, finished = runs.started_since(since), runs.finished_since(since)
        if started and len(finished) >= len(started):
            break
        page.wait_for_timeout(10)
    if redraw:  # drawn anew, or the new numbers swapped into the drawn view
        page.wait_for_function(
            "(old) => { const e = document.querySelector('.vega-embed'); "
            "return e && e.dataset.drawings && e.dataset.drawings !== old; }",
            arg=page.hlbd_drawings, timeout=WAIT_MS)
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => "
                  "requestAnimationFrame(r)))")
    return time.perf_counter()


def idle(page) -> None:
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=WAIT_MS)


def timed_load(context, url: str, ready: str) -> tuple[float, tuple | None]:
    """Seconds from navigation until ``ready`` shows and the app has finished running,
    in a new page (a new Streamlit session) of ``context``; with SPLIT_SCRIPT in the
    context also (seconds until the largest websocket message, its bytes, seconds
    from it until drawn)."""
    page = context.new_page()
    runs = Runs(page)
    started = time.perf_counter()
    page.goto(url)
    page.locator(ready).first.wait_for(timeout=WAIT_MS)
    settle(page, runs, started, redraw=False)
    idle(page)
    drawn = page.evaluate("() => new Promise(r => requestAnimationFrame(() => "
                          "requestAnimationFrame(() => r(performance.now()))))")
    elapsed = time.perf_counter() - started
    largest = page.evaluate("() => window.__hlbdLargest || null")
    page.close()
    if not largest or largest["at"] is None:
        return elapsed, None
    return elapsed, (largest["at"] / 1000, largest["bytes"], (drawn - largest["at"]) / 1000)


def mark_drawn(page) -> None:
    """Note how many times the charts were drawn so far (settle waits for one more)."""
    page.hlbd_drawings = page.evaluate(
        "() => document.querySelector('.vega-embed')?.dataset.drawings ?? null")


# In a browser page: the page positions of the items of the first chart's marks whose
# role or name is args (each item's centre).
ITEMS_JS = """(wanted) => {
  const view = document.querySelector('.vega-embed').hlbdView;
  const box = view.container().querySelector('canvas').getBoundingClientRect();
  const [ox, oy] = view.origin();
  const found = [];
  const walk = (group) => { for (const mark of group.items || []) {
    if (mark.role === wanted || (mark.name || '').startsWith(wanted)) {
      for (const item of mark.items) {
        let x = box.x + ox, y = box.y + oy;
        for (let g = mark.group; g; g = g.mark && g.mark.group) { x += g.x || 0; y += g.y || 0; }
        found.push({x: x + (item.bounds.x1 + item.bounds.x2) / 2,
                    y: y + (item.bounds.y1 + item.bounds.y2) / 2,
                    left: x + item.bounds.x1, right: x + item.bounds.x2});
      }
    }
    if (mark.marktype === 'group') for (const item of mark.items) walk(item);
  } };
  walk(view.scenegraph().root.items[0]);
  return found;
}"""


def items(page, wanted: str) -> list[dict]:
    return page.evaluate(ITEMS_JS, wanted)


def in_page_times(context, url: str) -> dict[str, tuple[float, float]]:
    """Seconds from each control change until the page shows its result, and until the
    server's run for it had finished (the rest is the browser's)."""
    page = context.new_page()
    runs = Runs(page)
    page.goto(url)
    page.locator(CHARTS).first.wait_for(timeout=WAIT_MS)
    page.wait_for_function("() => document.querySelector('.vega-embed')?.hlbdView",
                           timeout=WAIT_MS)
    idle(page)
    times = {}

    def timed(name: str, action, redraw: bool = True, prepare=None) -> None:
        idle(page)
        page.wait_for_timeout(300)
        mark_drawn(page)
        if prepare:
            prepare()
        started = time.perf_counter()
        action()
        done = settle(page, runs, started, redraw)
        served = max((e[0] for e in runs.finished_since(started)), default=done)
        # (until drawn, until the server's run had finished: its script and messages)
        times[name] = (done - started, served - started)

    def x_axis(to: str):
        return lambda: page.locator('[aria-label="x axis"] button').filter(
            has_text=re.compile(f"^{to}$")).click()

    timed("x axis (to epoch)", x_axis("epoch"))
    timed("x axis", x_axis("step"))

    def smoothing() -> None:
        box = page.locator(".hlbd-slider input").first.bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)

    timed("smoothing", smoothing)
    timed("metric pick", lambda: page.get_by_test_id("stButtonGroup").get_by_text(
        "Token accuracy", exact=True).first.click())

    def legend() -> None:
        entry = items(page, "legend-label")[1]
        page.mouse.click(entry["x"], entry["y"])

    timed("legend", legend, redraw=False)

    def drag() -> None:
        bands = items(page, "hover_loss")  # across the loss chart's plot
        left, right, y = bands[0]["left"], bands[-1]["right"], bands[0]["y"]
        page.mouse.move(left + (right - left) * 0.3, y)
        page.mouse.down()
        page.mouse.move(left + (right - left) * 0.6, y, steps=5)

    timed("zoom", page.mouse.up, prepare=drag)  # from the button's release
    page.close()
    times.pop("x axis (to epoch)")
    return times


def held_key(context, url: str) -> tuple[int, int, float]:
    """The smoothing slider's arrow key pressed PRESSES times in a row: the reruns the
    page asked for, the runs the server started, and the seconds from the last press
    until the page was idle again."""
    page = context.new_page()
    runs = Runs(page)
    page.goto(url)
    page.locator(CHARTS).first.wait_for(timeout=WAIT_MS)
    idle(page)
    page.wait_for_timeout(500)
    page.locator(".hlbd-slider input").first.focus()
    began = time.perf_counter()
    for _ in range(PRESSES):
        page.keyboard.press("ArrowRight")
    pressed = time.perf_counter()
    # Quiet for two seconds with every run finished: nothing more is coming.
    while True:
        page.wait_for_timeout(200)
        started, finished = runs.started_since(began), runs.finished_since(began)
        last = max((e[0] for e in runs.events if e[0] >= began), default=pressed)
        if len(finished) >= len(started) and time.perf_counter() - last > 2.0:
            break
    done = max((e[0] for e in runs.finished_since(began)), default=pressed)
    requests = sum(1 for t in runs.requests if t >= began)
    page.close()
    return requests, len(runs.started_since(began)), max(0.0, done - pressed)


# Keeps the last chart spec the page gave vega-embed (its datasets as the rows Vega
# reads), for vega_alone.
SPEC_SCRIPT = """(() => {
  let embed;
  Object.defineProperty(window, "vegaEmbed", {configurable: true,
    get: () => embed,
    set: (real) => { embed = (el, spec, options) => {
      if (spec && spec.vconcat) window.__hlbdSpec = spec;
      return real(el, spec, options);
    }; Object.assign(embed, real); }});
})()"""
# In a blank page: fetch the Vega scripts as the component does (at once, run in order),
# draw the spec with vega-embed on a canvas, wait for the frame it shows in.
VEGA_ALONE_JS = """async ([sources, spec]) => {
  const box = document.createElement("div");
  document.body.appendChild(box);
  const started = performance.now();
  await Promise.all(sources.map((src) => new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src; script.async = false; script.onload = resolve; script.onerror = reject;
    document.head.appendChild(script);
  })));
  await vegaEmbed(box, spec, {actions: false, renderer: "canvas"});
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return (performance.now() - started) / 1000;
}"""


def vega_alone(context, url: str) -> float:
    """Seconds Vega alone takes to draw the page's charts in a new page of ``context``
    (its scripts from the same server and cache, then the very spec and rows the page
    drew): what the charts cost without Streamlit, the server or our component."""
    page = context.new_page()
    page.goto(url)
    page.locator(CHARTS).first.wait_for(timeout=WAIT_MS)
    page.wait_for_function("() => window.__hlbdSpec", timeout=WAIT_MS)
    spec = page.evaluate("() => JSON.parse(JSON.stringify(window.__hlbdSpec))")
    sources = page.evaluate("() => performance.getEntriesByType('resource').map(r => r.name)"
                            ".filter(n => /vega(-lite|-embed)?\\.min\\.js$/.test(n))")
    page.close()
    alone = context.new_page()
    alone.goto(url.split("/compare")[0] + "/_stcore/health")  # the server's origin
    try:
        return alone.evaluate(VEGA_ALONE_JS, [sorted(sources, key=_script_order), spec])
    finally:
        alone.close()


def _script_order(src: str) -> int:
    return next(i for i, n in enumerate(("vega.min", "vega-lite", "vega-embed")) if n in src)


def floor_cold(browser, db: Path, root: Path) -> tuple[float, float, float]:
    """A one-line Streamlit app (``st.write``) on a new server (plain `streamlit run`):
    its first page in a new profile (cold), a new page after it (warm), and the seconds
    until the server was ready."""
    app = root / "floor.py"
    app.write_text('import streamlit as st\n\nst.write("floor")\n')
    server, url = serve(db, app, module="streamlit")
    context = browser.new_context(viewport=VIEWPORT)
    try:
        cold = timed_load(context, url, "text=floor")[0]
        warm = timed_load(context, url, "text=floor")[0]
        return cold, warm, server.ready_seconds
    finally:
        context.close()
        stop(server)


def median(values) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--split", action="store_true",
                        help="also say how long until the charts' message came, and after")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = args.db or root / "bench.db"
        started = time.perf_counter()
        ids = fill(db, args.runs, args.steps)
        print(f"database: {len(ids)} runs x {args.steps:,} steps ({db}), ready in "
              f"{time.perf_counter() - started:.1f} s")
        whole = whole_page_app(root)
        link = f"/compare?runs={','.join(i[:8] for i in ids)}&x=step"
        got: dict[str, list] = {k: [] for k in (
            "cold", "warm", "no charts", "sql", "floor cold", "floor warm", "held",
            "ready", "floor ready", "vega alone", "cold plain")}
        inside: dict[str, dict[str, list]] = {"fragment": {}, "page": {}}
        splits = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                 args=CHROMIUM_ARGS)
            try:
                for _ in range(args.repeat):
                    server, url = serve(db)
                    got["ready"].append(server.ready_seconds)
                    context = browser.new_context(viewport=VIEWPORT)
                    if args.split:
                        context.add_init_script(SPLIT_SCRIPT)
                    try:
                        for name, path, ready in (("cold", link, CHARTS),
                                                  ("warm", link, CHARTS),
                                                  ("no charts", link + "&charts=",
                                                   "text=Pick at least one chart"),
                                                  ("sql", "/sql", "textarea")):
                            elapsed, split = timed_load(context, url + path, ready)
                            got[name].append(elapsed)
                            if split and name in ("cold", "warm"):
                                splits.append((name, *split))
                        for name, seconds in in_page_times(context, url + link).items():
                            inside["fragment"].setdefault(name, []).append(seconds)
                        got["held"].append(held_key(context, url + link))
                        alone = browser.new_context(viewport=VIEWPORT)
                        alone.add_init_script(SPEC_SCRIPT)
                        try:
                            got["vega alone"].append(vega_alone(alone, url + link))
                        finally:
                            alone.close()
                    finally:
                        context.close()
                        stop(server)
                    server, url = serve(db, whole)
                    context = browser.new_context(viewport=VIEWPORT)
                    try:
                        timed_load(context, url + link, CHARTS)  # the scripts, cached
                        for name, seconds in in_page_times(context, url + link).items():
                            inside["page"].setdefault(name, []).append(seconds)
                        got.setdefault("held page", []).append(held_key(context, url + link))
                    finally:
                        context.close()
                        stop(server)
                    # The same first page on plain `streamlit run` (the libraries
                    # imported by the first page, not while the server starts).
                    server, url = serve(db, module="streamlit")
                    context = browser.new_context(viewport=VIEWPORT)
                    try:
                        got["cold plain"].append(timed_load(context, url + link, CHARTS)[0])
                    finally:
                        context.close()
                        stop(server)
                    cold, warm, ready = floor_cold(browser, db, root)
                    got["floor cold"].append(cold)
                    got["floor warm"].append(warm)
                    got["floor ready"].append(ready)
            finally:
                browser.close()
    m = {k: median(v) for k, v in got.items() if k not in ("held", "held page") and v}
    print(f"\nCompare page, {len(ids)} runs x {args.steps:,} steps by step, headless "
          f"Chromium (medians of {args.repeat}; each ratio from times of the same runs)")
    print(f"  warm load                 {m['warm']:6.2f} s")
    print(f"  warm, charts left out     {m['no charts']:6.2f} s   ratio "
          f"{m['warm'] / m['no charts']:.2f}  (goal <= 1.3)")
    print(f"  warm SQL page             {m['sql']:6.2f} s   ratio "
          f"{m['warm'] / m['sql']:.2f}  (goal <= 1.6)")
    charts_part = m["warm"] - m["no charts"]
    print(f"    the charts' part {charts_part:.2f} s against Vega alone drawing the same "
          f"charts in a new page, {m['vega alone']:.2f} s: ratio "
          f"{charts_part / m['vega alone']:.2f}  (proposed goal <= 1.3)")
    print(f"  cold load                 {m['cold']:6.2f} s   (server as hlbd ui starts it, "
          f"ready in {m['ready']:.2f} s; plain streamlit run: cold {m['cold plain']:.2f} s)")
    print(f"  one-line app, cold        {m['floor cold']:6.2f} s   ratio "
          f"{m['cold'] / m['floor cold']:.2f}  (goal <= 1.5)   (warm: "
          f"{m['floor warm']:.2f} s; server ready in {m['floor ready']:.2f} s)")
    print(f"    cold against our warm load: ratio {m['cold'] / m['warm']:.2f}  (proposed goal "
          f"<= 1.5; the one-line app's own: {m['floor cold'] / m['floor warm']:.2f})")
    print("\nA control change in an open page, until the charts are drawn again and the run"
          " has finished\n  (fragment: this app; page: every fragment run as a plain "
          "function, the whole page reruns)")
    print("  control          fragment s (server)   page s (server)   ratio (goal <= 0.6)"
          "   fragment / warm load (proposed goal <= 0.6)")
    for name in inside["fragment"]:
        frag, page = (median(t[0] for t in inside[k][name]) for k in ("fragment", "page"))
        frag_s, page_s = (median(t[1] for t in inside[k][name]) for k in ("fragment", "page"))
        print(f"  {name:15s}  {frag:10.2f} ({frag_s:5.2f})   {page:6.2f} ({page_s:5.2f})   "
              f"{frag / page:5.2f}   {frag / m['warm']:22.2f}")
    print("  (server: until the run's script_finished arrived; the rest is the browser's "
          "drawing)")
    for kind, key in (("fragment", "held"), ("page", "held page")):
        held = got.get(key) or []
        if held:
            print(f"\nSmoothing slider's arrow key pressed {PRESSES} times in a row ({kind}): "
                  f"reruns asked {median(h[0] for h in held):.0f}, runs started "
                  f"{median(h[1] for h in held):.0f}, idle "
                  f"{median(h[2] for h in held):.2f} s after the last press (goal: one run)")
    if splits:
        print("\nwhere it went (medians): seconds from navigation until the largest "
              "websocket message arrived, its size, seconds from it until drawn")
        for kind in ("cold", "warm"):
            mine = [s[1:] for s in splits if s[0] == kind]
            if mine:
                print(f"  {kind}: {median(x[0] for x in mine):5.2f} s until the message "
                      f"({median(x[1] for x in mine) / 1e6:.2f} MB), then "
                      f"{median(x[2] for x in mine):5.2f} s drawing")


if __name__ == "__main__":
    sys.exit(main())
