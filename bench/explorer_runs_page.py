"""How long the explorer's Runs page takes in a browser on 5,000 runs against 50, and
whether reloading it again and again costs more each time.

Each database holds RUNS runs written through the store API (Store.create_run, then
record_epoch per epoch with its epoch points, then finish_run): every run records again
the epochs of one real tiny training run (trained once, in a database of its own, with
its held-out evaluation: val_loss, val/exact ...) under that run's config (only the name
differs; two runs in three tagged), so every row holds numbers a real run measured.
Nothing is trained per run, nothing is made up.

For each database a fresh `streamlit run app/main.py` serves the page; headless Chromium
(one profile) opens each once (cold: the server reads the list), then each REPEAT more
times, each in a new page (a new session), the two taking turns so that other work on
the machine slows both alike: warm. "First paint" is from navigation until the table's
rows are drawn and the app has finished its run. The warm medians are compared: the
goal (issue 23) is 5,000 runs <= 1.5x 50 runs.

Then each page is reloaded RELOADS times in a tab of its own (each reload a new
session, the old one closed; the two again taking turns), printing each reload's time
and what the server holds after it (resident memory, threads, sessions) and has done
(how often it built the table of every run, how many per-run reads the pages asked for:
Streamlit's /_stcore/metrics). The issue measured 14.9, 18.4, 19.0, 24.1, 24.6 s on
5,000 runs: these must stay flat.

Usage: python bench/explorer_runs_page.py [--runs 5000] [--baseline 50] [--repeat 5]
       [--reloads 6] [--keep DIR]   (--keep reuses the databases in DIR)
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from explorer_browser import serve, stop  # bench/ is the script's folder: on sys.path

from hlbd.config import TrainConfig
from hlbd.runner import start_run
from hlbd.store import Store

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
EPOCH_COLUMNS = ("epoch", "loss", "grad_norm", "grad_norm_max", "grad_norm_min", "steps",
                 "nonfinite_steps", "clipped_steps", "skipped_steps", "lr",
                 "token_accuracy", "wall_seconds", "tokens", "tokens_per_second")
TAGS = (["baseline", "sweep"], ["sweep"], [])


def source_run(root: Path) -> tuple[dict, list[dict], list[dict]]:
    """A real tiny run (with its held-out evaluation), trained in a database of its
    own: its config, effective epochs and points."""
    store = Store.open(str(root / "source.db"))
    try:
        config = TrainConfig(name="source", epochs=4, d_model=32, n_layers=1, n_heads=2,
                             d_ff=64, dropout=0.0, save_interval=0, device="cpu")
        run_id = start_run(config, store, runs_root=root / "runs", progress=False).run_id
        return store.get_run(run_id)["config"], store.epochs(run_id), store.points(run_id)
    finally:
        store.close()


def fill(path: Path, runs: int, source: tuple[dict, list[dict], list[dict]]) -> float:
    """``runs`` runs replaying ``source``'s epochs, each under a config of its own;
    returns the seconds it took (a database that has them already is kept)."""
    started = time.perf_counter()
    store = Store.open(str(path))
    try:
        have = len(store.list_runs())
        config, epochs, points = source
        for i in range(have, runs):
            run_id = store.create_run(
                f"run-{i}", {**config, "name": f"run-{i}"}, {"bundled": 143},
                tags=TAGS[i % 3])
            for e in epochs:
                store.record_epoch(
                    run_id, 1, {k: e[k] for k in EPOCH_COLUMNS},
                    points=[(p["key"], p["scope"], p["step"], p["epoch"], p["value"])
                            for p in points if p["epoch"] == e["epoch"]])
            store.finish_run(run_id, 1, "finished")
    finally:
        store.close()
    return time.perf_counter() - started


def first_paint(page, url: str | None, runs: int) -> float:
    """Seconds from navigation (``url``; None: a reload) until the runs table's rows are
    drawn and the app has finished its run."""
    page.bring_to_front()  # a tab behind another gets no animation frames
    started = time.perf_counter()
    if url is None:
        page.reload()
    else:
        page.goto(url)
    page.get_by_text(re.compile(rf"^\d+ of {runs} runs")).wait_for(timeout=600_000)
    page.locator("[data-testid=stDataFrame] table[role=grid] tbody tr").first.wait_for(
        state="attached", timeout=600_000)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=600_000)
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => "
                  "requestAnimationFrame(r)))")
    return time.perf_counter() - started


def server_state(url: str, pid: int) -> dict:
    """What the server holds and has done: resident memory (MB) and threads of its
    process, and from Streamlit's metrics its sessions, how often the table of every
    run was built (misses of runs_table.every_run) and how many per-run reads the
    pages asked for (lookups of reads.run, reads.epochs, reads.flags)."""
    status = Path(f"/proc/{pid}/status").read_text()
    with urllib.request.urlopen(f"{url}/_stcore/metrics") as r:
        metrics = r.read().decode()

    def lookups(cache: str, result: str = "") -> int:
        return sum(int(v) for v in re.findall(
            rf'^cache_lookups_total\{{cache="{re.escape(cache)}"[^}}]*result="{result}'
            r'[^"]*"\} (\d+)', metrics, re.MULTILINE))

    return {"rss_mb": int(re.search(r"VmRSS:\s+(\d+)", status)[1]) / 1024,
            "threads": int(re.search(r"Threads:\s+(\d+)", status)[1]),
            "sessions": int(re.search(r"^active_sessions (\d+)", metrics, re.MULTILINE)[1]),
            "builds": lookups("runs_table.every_run", "miss"),
            "per_run": sum(lookups(c) for c in ("reads.run", "reads.epochs", "reads.flags"))}


def measure(browser, dbs: dict[int, Path], repeat: int, reloads: int) -> dict:
    """Cold, warm and reload times of each database's Runs page, the databases taking
    turns (a machine shared with other work slows both alike)."""
    served = {n: serve(db) for n, db in dbs.items()}
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    out = {n: {"warm": [], "reloads": []} for n in dbs}
    try:
        for n, (_, url) in served.items():
            page = context.new_page()
            out[n]["cold"] = first_paint(page, url, n)
            page.close()
        for _ in range(repeat):
            for n, (_, url) in served.items():
                page = context.new_page()
                out[n]["warm"].append(first_paint(page, url, n))
                page.close()
        tabs = {n: context.new_page() for n in dbs}
        for n, (_, url) in served.items():
            first_paint(tabs[n], url, n)
        for _ in range(reloads):
            for n, (server, url) in served.items():
                seconds = first_paint(tabs[n], None, n)
                time.sleep(0.5)  # the closed session's goodbye reaches the server
                out[n]["reloads"].append((seconds, server_state(url, server.pid)))
    finally:
        context.close()
        for server, _ in served.values():
            stop(server)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--baseline", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--reloads", type=int, default=6)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        dbs = {n: root / f"runs-{n}.db" for n in (args.baseline, args.runs)}
        if not all(p.exists() for p in dbs.values()):
            source = source_run(root)
            for n, path in dbs.items():
                print(f"{n} runs written through the store in {fill(path, n, source):.1f} s")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                 args=CHROMIUM_ARGS)
            try:
                results = measure(browser, dbs, args.repeat, args.reloads)
            finally:
                browser.close()
    print("Runs page, first paint (navigation to the table's rows drawn and the app idle); "
          f"warm: median of {args.repeat} new sessions")
    print("runs    cold s   warm s")
    for n, r in results.items():
        print(f"{n:5d}   {r['cold']:6.2f}   {statistics.median(r['warm']):6.2f}")
    ratio = (statistics.median(results[args.runs]["warm"])
             / statistics.median(results[args.baseline]["warm"]))
    print(f"warm {args.runs} / {args.baseline} runs: {ratio:.2f}x (goal <= 1.5x)")
    big, small = results[args.runs]["reloads"], results[args.baseline]["reloads"]
    print(f"\nThe same page reloaded {args.reloads} times in a tab of its own; the "
          f"{args.runs}-run server after each reload:")
    print(f"reload   {args.baseline:5d} s   {args.runs:5d} s   ratio   vs reload 1   "
          "server MB   threads   sessions   table builds   per-run reads")
    for i, ((seconds, s), (base, _)) in enumerate(zip(big, small, strict=True), 1):
        print(f"{i:6d}   {base:7.2f}   {seconds:7.2f}   {seconds / base:5.2f}   "
              f"{seconds / big[0][0]:11.2f}   {s['rss_mb']:9.1f}   {s['threads']:7d}   "
              f"{s['sessions']:8d}   {s['builds']:12d}   {s['per_run']:13d}")
    times = [t for t, _ in big]
    half = len(times) // 2
    print(f"{args.runs} runs, last half / first half of the reloads (median): "
          f"{statistics.median(times[half:]) / statistics.median(times[:half]):.2f}x "
          "(flat: 1.0x)")

if __name__ == "__main__":
    sys.exit(main())
