"""How long the explorer's Compare page takes in a browser: 4 and 20 runs x 100,000 steps.

The database holds RUNS runs of STEPS optimizer steps each: the real per-step rows of a
tiny training run, repeated to length, in epochs of 1,000 steps whose rows summarise
those steps (mean loss, grad-norm mean/min/max, step count; what a trainer records per
epoch beyond that is left not recorded). They are written through the store, so the
step rollups are maintained as a trainer's would be.

For 4 and for 20 runs the bench starts `streamlit run app/main.py` afresh (no cache),
opens /compare?runs=...&x=step in headless Chromium (a fresh profile) and waits until
the charts are drawn: that is "cold". Then it opens the same link in a new page, a new
session: "warm" (the server's caches hold the data, the browser's the app's scripts). As a baseline it then times the SQL page, which
shows no data, on the same warm server, and prints each time's ratio to it. Then "in
the page": in an open Compare page the x axis is switched to epoch and back, and the
switch back is timed, click to charts drawn (an interaction, no new session). Last, the
floor: a new session of a one-line Streamlit app (st.write) on the same machine, the
least any Streamlit page costs here.

Goals (issue 11): 20 runs warm <= 1.5 s, cold <= 4 s; 4 runs <= 1 s.

With --split it also says where each load's time went: from navigation until the
largest websocket message (the charts' spec and data) arrived (the app's scripts, the
server's script run, the transfer), then until the charts were drawn (the browser:
decoding the data, Vega-Lite and Vega). For that a page script notes when each
websocket message arrives; without --split pages load untouched.

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
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
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
EPOCH_STEPS = 1000
BATCH = 10_000


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


def first_lr_check_seconds() -> float:
    """What a fresh process spends on its first LR-schedule check (importing torch and
    building the configured scheduler), which a cold explorer pays once when its
    database holds hlbd runs; the bench runs have no schedule in their config."""
    code = ("import time; t = time.perf_counter(); from hlbd.anomalies import expected_lrs;"
            "expected_lrs({'lr': 2e-3, 't_0': 10, 't_mult': 2, 'eta_min': 1e-5}, 70);"
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    return float(out.stdout.strip())


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


def serve(db: Path, app: Path = ROOT / "app" / "main.py") -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app),
         "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, "HLBD_DB": str(db)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health") as r:
                if r.read() == b"ok":
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


def timed_load(context, url: str, ready: str) -> tuple[float, tuple | None]:
    """Seconds from navigation until ``ready`` shows and the app has finished running,
    in a new page (a new Streamlit session) of ``context``; with SPLIT_SCRIPT in the
    context also (seconds until the largest websocket message, its bytes, seconds
    from it until drawn)."""
    page = context.new_page()
    started = time.perf_counter()
    page.goto(url)
    page.locator(ready).first.wait_for(timeout=120_000)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=120_000)
    drawn = page.evaluate("() => new Promise(r => requestAnimationFrame(() => "
                          "requestAnimationFrame(() => r(performance.now()))))")
    elapsed = time.perf_counter() - started
    largest = page.evaluate("() => window.__hlbdLargest || null")
    page.close()
    if not largest or largest["at"] is None:
        return elapsed, None
    return elapsed, (largest["at"] / 1000, largest["bytes"], (drawn - largest["at"]) / 1000)


def floor_seconds(browser, db: Path, root: Path, repeat: int) -> float:
    """A new session of a one-line Streamlit app (``st.write``), warm, on a server of its
    own with the same settings: what any Streamlit page costs on this machine."""
    app = root / "floor.py"
    app.write_text('import streamlit as st\n\nst.write("floor")\n')
    times = []
    for _ in range(repeat):
        server, url = serve(db, app)
        context = browser.new_context(viewport={"width": 1400, "height": 1100})
        try:
            timed_load(context, url, "text=floor")  # cold: the scripts come into the cache
            times.append(timed_load(context, url, "text=floor")[0])
        finally:
            context.close()
            stop(server)
    return statistics.median(times)


def timed_switch(context, url: str, ready: str) -> float:
    """Seconds an interaction takes in an open page: the page shows ``url`` (by step),
    the x axis is switched to epoch, and back to step is timed, from the click until
    the new charts are drawn (the same view as the warm load, in the same session)."""
    page = context.new_page()
    page.goto(url)
    page.locator(ready).first.wait_for(timeout=120_000)

    def switch(to: str) -> float:
        page.wait_for_function(
            "() => !document.querySelector('[data-testid=stStatusWidget]')",
            timeout=120_000)
        page.evaluate("() => document.querySelectorAll('.vega-embed canvas, .vega-embed "
                      "svg.marks').forEach(e => e.dataset.hlbdOld = '1')")
        started = time.perf_counter()
        page.locator('[aria-label="x axis"] button').filter(
            has_text=re.compile(f"^{to}$")).click()
        page.wait_for_function(
            "() => { const c = document.querySelector('.vega-embed canvas, .vega-embed "
            "svg.marks'); return c && !c.dataset.hlbdOld && "
            "!document.querySelector('[data-testid=stStatusWidget]'); }", timeout=120_000)
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => "
                      "requestAnimationFrame(r)))")
        return time.perf_counter() - started

    switch("epoch")
    elapsed = switch("step")
    page.close()
    return elapsed


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
        db = args.db or Path(tmp) / "bench.db"
        started = time.perf_counter()
        ids = fill(db, args.runs, args.steps)
        print(f"database: {len(ids)} runs x {args.steps:,} steps ({db}), ready in "
              f"{time.perf_counter() - started:.1f} s")
        ready = ".vega-embed canvas, .vega-embed svg.marks"
        results, splits = [], []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                 args=CHROMIUM_ARGS)
            try:
                for count in sorted({min(4, len(ids)), len(ids)}):
                    link = f"/compare?runs={','.join(i[:8] for i in ids[:count])}&x=step"
                    cold, warm, base, inside = [], [], [], []
                    for _ in range(args.repeat):
                        server, url = serve(db)
                        # One browser profile per server: its first page loads the
                        # app's scripts too; the next ones find them cached, as a
                        # reload does.
                        context = browser.new_context(viewport={"width": 1400,
                                                                "height": 1100})
                        if args.split:
                            context.add_init_script(SPLIT_SCRIPT)
                        try:
                            for times, link_url, shows in ((cold, url + link, ready),
                                                           (warm, url + link, ready),
                                                           (base, f"{url}/sql", "textarea")):
                                elapsed, split = timed_load(context, link_url, shows)
                                times.append(elapsed)
                                if split and times is not base:
                                    splits.append((count, "cold" if times is cold else "warm",
                                                   *split))
                            inside.append(timed_switch(context, url + link, ready))
                        finally:
                            context.close()
                            stop(server)
                    results.append((count, statistics.median(cold),
                                    statistics.median(warm), statistics.median(base),
                                    statistics.median(inside)))
                floor = floor_seconds(browser, db, Path(tmp), args.repeat)
            finally:
                browser.close()
    print(f"Compare page by step, {args.steps:,} steps per run (median of {args.repeat}; "
          "baseline: the SQL page, which reads nothing)")
    print("runs   cold s   warm s   baseline s   cold/base   warm/base   in the page s")
    for count, cold, warm, base, inside in results:
        print(f"{count:4d}   {cold:6.2f}   {warm:6.2f}   {base:10.2f}   {cold / base:9.1f}"
              f"   {warm / base:9.1f}   {inside:13.2f}")
    print("in the page: an open Compare page switched to epoch and back to step, the "
          "switch back timed (click to charts drawn)")
    print(f"a one-line Streamlit app (st.write), warm, on the same machine: {floor:.2f} s "
          "(Streamlit's own floor for any page)")
    print("goals: 20 runs warm <= 1.5 s, cold <= 4 s; 4 runs <= 1 s")
    if splits:
        print("where it went (medians): seconds from navigation until the largest websocket "
              "message arrived, its size, seconds from it until the charts were drawn")
        for count, kind in sorted({(c, k) for c, k, *_ in splits}):
            mine = [s[2:] for s in splits if s[:2] == (count, kind)]
            print(f"{count:4d} {kind}: {statistics.median(m[0] for m in mine):5.2f} s until "
                  f"the message ({statistics.median(m[1] for m in mine) / 1e6:.2f} MB), "
                  f"then {statistics.median(m[2] for m in mine):5.2f} s drawing")
    print(f"a cold start on a database of hlbd runs adds the first LR-schedule check: "
          f"{first_lr_check_seconds():.2f} s here (importing torch)")


if __name__ == "__main__":
    sys.exit(main())
