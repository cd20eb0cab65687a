"""One run in detail: facts, tags and notes, status history (each run or resume),
charts of any series it has, flags linked to the charts, epochs, evaluations,
checkpoints, config."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import charts
import extra_series
import formats
import link
import live
import reads
import sidebar
from extra_series import EXTRA
from series import POINT, RunSeries, metric_data, rule_metric

TIMES = ("started (UTC)", "ended (UTC)", "last heartbeat (UTC)")
DEFAULT_SERIES = ("loss", "grad_norm", "lr")
EPOCH_MEASURES = ("loss", "grad_norm", "grad_norm_max", "grad_norm_min", "lr",
                  "token_accuracy", "wall_seconds", "tokens_per_second")

st.title("Run detail")
url, thresholds, runs = sidebar.page_runs()
options = list(runs)
wanted = link.get("run") or ""
first = next((i for i in options if wanted and i.startswith(wanted)),
             next((i for i in sidebar.picked() if i in runs), options[0]))
run_id = st.selectbox("Run", options, index=options.index(first), key="detail_run",
                      format_func=lambda i: sidebar.label(runs[i]))
link.put("run", run_id)
short = link.short_ids([run_id], list(runs))[0]


def when(value) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value is not None else formats.NOT_RECORDED


def segment_table(run: dict, segments: list[dict]) -> pd.DataFrame:
    """The segments as shown: the last one's status is the run's own when the run
    stopped without saying so (crashed, stale), its end not recorded. An imported run's
    first segment is the import: its times, process and host are the importer's, not
    the run's, so they are not recorded. The store keeps one heartbeat per run, the
    newest, so only the last segment's last heartbeat is known."""
    rows = []
    for s in segments:
        status, ended = s["status"], s["ended_at"]
        if (s is segments[-1] and status == "running"
                and run["display_status"] in ("crashed", "stale")):
            status, ended = run["display_status"], None
        imported = run["source"] == "imported" and s["segment"] == 1
        beat = (run.get("heartbeat_at") if s is segments[-1] and not imported else None)
        rows.append({"segment": s["segment"],
                     "what": ("import" if imported else "start" if s["segment"] == 1
                              else "resume"),
                     "status": status,
                     "start epoch": s["start_epoch"],
                     "started (UTC)": None if imported else s["started_at"],
                     "ended (UTC)": None if imported else ended,
                     "last heartbeat (UTC)": beat,
                     "resumed from": s["resumed_from"] or ("(the start)" if s["segment"] == 1
                                                           else None),
                     "pid": None if imported else s["pid"],
                     "host": None if imported else s["hostname"]})
    frame = pd.DataFrame(rows)
    for column in TIMES:
        frame[column] = pd.Series(frame[column].tolist(), dtype="datetime64[us]")
    frame["pid"] = formats.counted(frame["pid"].tolist())
    return frame


def series_name(option: str) -> str:
    if option.startswith(EXTRA):
        return f"{option.removeprefix(EXTRA)} (imported list)"
    return charts.title(option)


def extra_chart(name: str, values: list[float | None]) -> None:
    """A list an imported report kept, by its position in the list: hlbd does not know
    which epoch or step each value belongs to, so it does not say."""
    st.markdown(f"**{name}** (imported list, {len(values)} values)")
    frame = pd.DataFrame({"position in the list": range(1, len(values) + 1),
                          "value": formats.measured(values)})
    st.line_chart(frame, x="position in the list", y="value", height=charts.HEIGHT)
    missing, bad = extra_series.counts(values)
    if missing or bad:
        st.caption(f"{missing} value(s) not recorded and {bad} NaN/Inf: the line breaks "
                   "there.")


def flag_link(flag: dict, epochs: list[dict], run_short: str) -> str:
    """The Compare page on this run, zoomed around the flag: by step, one epoch's steps
    either side, when the flag names its step; else by epoch, one epoch either side."""
    metrics = list(link.DEFAULT_CHARTS)
    if rule_metric(flag["rule"]) not in metrics:
        metrics.append(rule_metric(flag["rule"]))
    if flag.get("step") is not None:
        per_epoch = max((e["steps"] or 0 for e in epochs), default=0) or 1
        around = (max(0, flag["step"] - per_epoch), flag["step"] + per_epoch)
        return link.compare_link(run_short, "step", around, metrics)
    epoch = flag["epoch"] or 0
    return link.compare_link(run_short, "epoch", (epoch - 1, epoch + 1), metrics)


def evaluation_table(evaluated: list[dict]) -> pd.DataFrame:
    """One row per evaluation: which checkpoint, which file (and its hash), when, and a
    column per value it recorded (missing where another evaluation has it and it not)."""
    names = list(dict.fromkeys(k for e in evaluated for k in e["values"]))
    # The values first after what was scored; the long path and hash at the end.
    rows = [{"evaluated (UTC)": e["evaluated_at"], "checkpoint epoch": e["checkpoint_epoch"],
             "dataset": e["dataset"], **{n: e["values"].get(n) for n in names},
             "pairs": e["pairs"], "scored pairs": e["exact_pairs"], "seconds": e["seconds"],
             "dataset sha256": e["dataset_sha256"], "checkpoint": e["checkpoint"]}
            for e in evaluated]
    return formats.table(rows, ("seconds", *names))


def tags_and_notes(run: dict) -> None:
    """The run's tags and notes (set with `hlbd tag`, `hlbd note`, hlbd.init(tags=...))."""
    tags = run.get("tags") or []
    st.markdown("Tags: " + (" ".join(f"`{t}`" for t in tags) if tags else "none"))
    if run.get("notes"):
        st.caption("Notes")
        st.text(run["notes"])
    else:
        st.caption("Notes: none (`hlbd note RUN_ID TEXT` sets them).")


with reads.errors_shown():
    summary = runs[run_id]
    version = summary["version"]
    run = reads.run(url, run_id, version)
    imported = run["source"] == "imported"
    started = (f"imported {when(run['created_at'])}; started {formats.NOT_RECORDED}"
               if imported else f"started {when(run['created_at'])}")
    st.markdown(f"**{run['name']}** `{run_id}` · status **{run['display_status']}** · "
                f"source {run['source']} · {started} · last heartbeat "
                f"{when(run.get('heartbeat_at')) if not imported else formats.NOT_RECORDED}")
    tags_and_notes(run)
    if imported:
        written = reads.report_time(run)
        stamp = ((run.get("extra") or {}).get("report") or {}).get("timestamp")
        st.caption("Imported from an older tool's report: when its epochs were recorded is "
                   "not known. " + (f"The report says it was written at {when(written)} "
                                    f"(its timestamp: {stamp!r})." if written else
                                    "The report has no timestamp."))
    if run.get("run_dir"):
        st.caption(f"Run folder: `{run['run_dir']}`")
    if run.get("error"):
        st.error(f"The run failed: {run['error']}")

    st.subheader("Segments (each run or resume)")
    segments = reads.segments(url, run_id, version)
    formats.show(segment_table(run, segments), hide_index=True, width="stretch", column_config={
        c: st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss") for c in TIMES})
    st.caption("start epoch: the checkpoint epoch a segment continued from (0 = the "
               "start). Epochs an earlier segment recorded after it are kept, marked "
               "superseded, and hidden from the charts. The store keeps the newest "
               "heartbeat only: an earlier segment's last one is not recorded.")

    flags = reads.flags(url, run_id, version, thresholds)
    epochs = reads.epochs(url, run_id, version)
    own = reads.point_keys(url, run_id, version)
    extras = extra_series.extra_series(run.get("extra"))
    available = [*charts.METRICS, *(POINT + k for k in own), *(EXTRA + k for k in extras)]
    picked = st.multiselect(
        "Series", available, default=list(DEFAULT_SERIES), key="detail_series",
        format_func=series_name,
        help="Every series the run has: the epoch metrics, the names it logged (val_loss, "
             "val/exact/..., sys/rss_bytes ...) and lists an imported report kept.")
    drawn = [m for m in picked if not m.startswith(EXTRA)]
    if drawn:
        own_points = {m.removeprefix(POINT): reads.points(url, run_id, version,
                                                          m.removeprefix(POINT))
                      for m in drawn if m.startswith(POINT)}
        series = RunSeries(run_id, sidebar.label(summary), run["created_at"], epochs, None,
                           segments, flags, points=own_points,
                           color=charts.colors({run_id: summary["rank"]}, [run_id])[run_id])
        data = [metric_data([series], m, "epoch", title=charts.title(m)) for m in drawn]
        charts.draw(charts.spec(data, [series], "epoch", zoomable=False))
    for name in (m.removeprefix(EXTRA) for m in picked if m.startswith(EXTRA)):
        extra_chart(name, extras[name])

    st.subheader(f"Anomalies ({len(flags)})")
    if flags:
        shown = formats.table(flags, ("value", "threshold")).drop(columns=["run_id"])
        shown["on the charts"] = [flag_link(f, epochs, short) for f in flags]
        formats.show(shown, hide_index=True, width="stretch", column_config={
            "on the charts": st.column_config.LinkColumn(
                display_text="open in Compare",
                help="The Compare page on this run, zoomed to the flag")})
    else:
        st.caption("No flags.")

    st.subheader("Evaluations")
    evaluated = reads.evaluations(url, run_id, version)
    if evaluated:
        formats.show(evaluation_table(evaluated), hide_index=True, width="stretch",
                     column_config={"evaluated (UTC)": st.column_config.DatetimeColumn(
                         format="YYYY-MM-DD HH:mm:ss")})
    else:
        st.caption("No evaluations recorded (`hlbd eval --run-id ID --dataset FILE` "
                   "scores a checkpoint on a file and records it here).")

    st.subheader("Epochs")
    every_epoch = reads.epochs(url, run_id, version, include_superseded=True)
    if every_epoch:
        formats.show(formats.table(every_epoch, EPOCH_MEASURES).drop(columns=["run_id"]),
                     hide_index=True, width="stretch")
        st.caption("NaN: a measured NaN. Rows with superseded_by set were replaced by a "
                   "later segment (they stay in the store, out of the charts). recorded_at "
                   "not recorded: an imported epoch.")
    else:
        st.caption("No epochs recorded yet.")

    left, right = st.columns(2)
    left.subheader("Checkpoints")
    checkpoints = reads.checkpoints(url, run_id, version)
    if checkpoints:
        with left:
            formats.show(pd.DataFrame(checkpoints).drop(columns=["run_id", "id"]),
                         hide_index=True, width="stretch")
    else:
        left.caption("No checkpoints recorded.")
    right.subheader("Datasets (pairs per file)")
    right.dataframe(pd.DataFrame({"dataset": list(run["dataset_stats"]),
                                  "pairs": list(run["dataset_stats"].values())}),
                    hide_index=True, width="stretch")
    st.subheader("Config")
    st.json(run["config"])
    if run.get("extra"):
        st.subheader("Extra")
        st.json(run["extra"])
live.watch(url, thresholds, [run_id])
