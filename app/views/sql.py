"""Ad-hoc SQL on the run database: read-only (enforced by the connection), time-limited."""

import pandas as pd
import streamlit as st

import formats
import reads
import sidebar
from hlbd.errors import HlbdError
from hlbd.store.query import DEFAULT_TIME_LIMIT

EXAMPLE = ("SELECT run_id, epoch, loss, grad_norm, grad_norm_max, lr\n"
           "FROM epoch_metrics\nORDER BY run_id, epoch\nLIMIT 100")



def unique_names(columns: list[str]) -> list[str]:
    """Column names made unique for the grid: a repeat becomes ``name_2``, ``name_3``
    (``SELECT * FROM epochs e JOIN segments s ...`` has two run_id columns)."""
    taken: set[str] = set()
    out = []
    for name in columns:
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}_{n}"
        taken.add(candidate)
        out.append(candidate)
    return out


st.title("SQL")
st.caption(f"Read-only: writes are refused by the database connection. Queries stop after "
           f"{DEFAULT_TIME_LIMIT:g} s; at most {reads.SQL_MAX_ROWS:,} rows are shown. Tables "
           "and views: runs, segments, epochs, epoch_metrics, steps, step_metrics, "
           "points, metric_points, checkpoints, anomalies (see the README's SQL contract).")
with st.form("sql"):
    query = st.text_area("Query", value=EXAMPLE, height=160, key="sql_query")
    submitted = st.form_submit_button("Run")

if submitted and query.strip():
    try:
        result = reads.sql(sidebar.database_url(), query)
    except HlbdError as exc:
        st.error(str(exc))
    else:
        if not result.columns:
            st.caption("The statement returned no rows.")
        else:
            names = unique_names(result.columns)
            frame = formats.table([dict(zip(names, row)) for row in result.rows])
            frame = frame.reindex(columns=names)
            formats.show(frame, missing=formats.SQL_NULL, hide_index=True, width="stretch")
            renamed = [f"{new} ({old})" for new, old in zip(names, result.columns) if new != old]
            st.caption(f"{len(frame):,} rows" + (f" (stopped at {reads.SQL_MAX_ROWS:,}; "
                                                  "add a LIMIT or narrow the query)"
                                                  if result.truncated else "")
                       + (". Repeated column names shown as " + ", ".join(renamed)
                          if renamed else ""))
            st.download_button("Download CSV",
                               pd.DataFrame(result.rows, columns=result.columns)
                               .to_csv(index=False), "query.csv", "text/csv")

