"""Runs overview: every run, filtered, sorted and paged on the server; columns of choice;
a click on a name opens its detail; tick rows to compare."""

from __future__ import annotations

import math

import streamlit as st

import filters
import formats
import link
import live
import reads
import runs_table
import runs_view
import sidebar
import table_picks
import table_sort
from runs_table import STATUS_COLORS, STATUSES

ROW_PX, MAX_ROWS_SHOWN = 35, 20
DETAIL = "detail"   # the link column's header

st.title("Runs")
url, thresholds, _ = sidebar.page_runs()
every = runs_table.every_run(url, thresholds, reads.run_list(url).generation)
view, from_url = runs_view.start()
choosable = [c for c in every.columns if c != "name"]
shown_by_default = [c for c in runs_table.DEFAULT_COLUMNS if c in every.columns
                    and (c != "world_size" or any(v is not None
                                                  for v in every.values["world_size"]))]
if from_url or "runs_columns" not in st.session_state:
    # A link's columns that are none of these (cols=nope,name) are ignored.
    st.session_state["runs_columns"] = ([c for c in view["cols"] or [] if c in choosable]
                                        or list(shown_by_default))

top = st.container(horizontal=True, wrap=True, gap="small")
statuses = top.multiselect("Status", STATUSES, key="status_filter", width=340)
tags = top.multiselect("Tags", sorted({*every.tags, *view["tag"]}), key="tag_filter",
                       width=220, placeholder="any",
                       help="Runs that have every tag picked (`hlbd tag RUN_ID TAG`).")
text = top.text_input(
    "Filter", placeholder="e.g. basics  lr<0.01  batch_size = 16", key="text_filter",
    width="stretch",
    help="Words match the name, id, a dataset, a tag or the notes; `key<value`, "
         "`key=value`, `key!=value` (also <=, >, >=; spaces around them are fine) compare "
         "a column, its spaces written as _ (last_loss, best_val_loss, max_grad_norm, "
         "batch_size, world_size, epochs, ...), or a config key (lr, seed, split.seed, "
         "...). All terms must hold.")
columns = st.multiselect(
    "Columns", choosable, key="runs_columns", format_func=lambda c: every.columns[c].label,
    help="Any summary or config key, in the order picked (the name stays first). "
         "Remove one and add it again to move it to the end.")

clicked = table_picks.clicked_column()
sort = view["sort"] if view["sort"] and view["sort"][0] in every.columns else None
by_label = {c.label: c.id for c in every.columns.values()}
if clicked in by_label:   # (not the link column's header)
    sort = table_sort.clicked(sort, by_label[clicked])
runs_view.put(view, q=text, status=list(statuses), tag=list(tags), sort=sort,
              cols=None if columns == shown_by_default else list(columns),
              per=st.session_state.get("runs_per_page", view["per"]))

wanted = filters.parse(view["q"], every.filter_keys)
if wanted.problems:
    st.warning("Left out of the filter (the table shows what the other terms keep): "
               + "; ".join(wanted.problems))
positions = runs_table.ordered(every, runs_table.chosen(every, statuses, tags, wanted), sort)
pages = max(1, math.ceil(len(positions) / view["per"]))
if view["page"] > pages:
    runs_view.put(view, page=pages)
    runs_view.move_pager()
table_slot = st.empty()
bottom = st.container(horizontal=True, wrap=True, vertical_alignment="center")
page = (bottom.pagination(pages, default=view["page"], key=runs_view.pager_key())
        if pages > 1 else 1)
bottom.selectbox("Rows per page", runs_view.PAGE_SIZES, key="runs_per_page",
                 width=120, label_visibility="collapsed",
                 format_func=lambda n: f"{n} rows per page")
runs_view.put(view, page=page)
first = (page - 1) * view["per"]
shown = positions[first:first + view["per"]]
ids = [every.run_ids[i] for i in shown]

# A click on a run's name opens its detail page here (Back comes back to this view).
cell = table_picks.clicked_cell()
if cell is not None and cell[1] == "name" and cell[0] < len(st.session_state.get(
        "runs_table_ids", [])):
    link.put("run", st.session_state["runs_table_ids"][cell[0]])
    table_picks.forget_cell()
    runs_view.write(view)
    link.switch_to("run", "views/run.py", link.url_params(
        "run", sidebar.picked(), every.run_ids, dict(thresholds),
        reads.threshold_defaults()))

table_picks.sync_table(ids, sidebar.picked())
frame = runs_table.frame(every, shown, ["name", *columns])
frame.insert(1, DETAIL, [f"run?run={i}" for i in ids])
config = {
    "name": st.column_config.TextColumn(pinned=True, help="click a name to open the run"),
    DETAIL: st.column_config.LinkColumn(pinned=True, display_text="open ↗", width=70,
                                        help="the run's detail page, in a new tab"),
    "status": st.column_config.MultiselectColumn(
        options=STATUSES, color=STATUS_COLORS, width="small",
        help="stale: no heartbeat for 2 minutes; crashed: its process is gone"),
    "progress": st.column_config.TextColumn(help="epochs recorded of the planned total"),
    "started (UTC)": st.column_config.DatetimeColumn(
        format="YYYY-MM-DD HH:mm:ss", help="not recorded: an imported run"),
    "finished (UTC)": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
    "last heartbeat (UTC)": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
    "duration (min)": formats.number_column(
        help="time its segments ran (a live one: until now)"),
    "best val loss": formats.number_column(help="lowest val_loss of its evaluations"),
    "best exact": formats.number_column(help="highest val/exact (greedy exact match)"),
    "anomalies": st.column_config.NumberColumn(
        help="flags the anomaly rules raise on the epoch records (thresholds in "
             "the sidebar)"),
    "tags": st.column_config.ListColumn(help="`hlbd tag RUN_ID TAG...`"),
    "notes": st.column_config.TextColumn(width="medium", help="`hlbd note RUN_ID TEXT`"),
    "id": st.column_config.TextColumn(width="large", help="the full run id (copy a "
                                                           "cell with Ctrl+C)"),
}
config.update({c: formats.number_column() for c in frame.columns
               if c not in config and runs_table.MEASURED == next(
                   (k.kind for k in every.columns.values() if k.label == c), None)})
config = formats.with_widths(config, formats.missing_widths(frame))
if sort is not None:
    label = every.columns[sort[0]].label
    if label in frame.columns:
        config[label] = {**config.get(label, st.column_config.Column()),
                         "label": table_sort.label(label, (label, sort[1]))}
table_slot.dataframe(
    # Header clicks select a column (the grid then leaves sorting to us: table_sort);
    # a click on a name selects that cell (and opens the run).
    frame, key=table_picks.key(), on_select="rerun",
    selection_mode=["multi-row", "single-column", "single-cell"],
    hide_index=True, width="stretch", placeholder=formats.NOT_RECORDED,
    # The header and the rows; with none, the grid still draws one ("empty").
    height=ROW_PX * (min(max(len(shown), 1), MAX_ROWS_SHOWN) + 1) + 3,
    column_config=config)
order = (f"sorted by {every.columns[sort[0]].label}, "
         f"{'descending' if sort[1] else 'ascending'}, NaN and not recorded last (click "
         "its header again to reverse it, a third time for newest first)"
         if sort is not None else "newest first (click a column header to sort by it)")
rows = f"rows {first + 1}-{first + len(shown)}, " if pages > 1 else ""
bottom.caption(f"{len(positions)} of {len(every.run_ids)} runs, {rows}{order}. Tick rows "
               "to compare them (or pick runs in the sidebar), then open Compare.")
runs_view.write(view)
live.watch(url, thresholds)
