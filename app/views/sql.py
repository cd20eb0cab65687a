"""Ad-hoc SQL on the run database: read-only (enforced by the connection), time-limited."""

import pandas as pd
import streamlit as st

import reads
import sidebar
from hlbd.errors import HlbdError
from hlbd.query import DEFAULT_TIME_LIMIT

EXAMPLE = ("SELECT run_id, epoch, loss, grad_norm, grad_norm_max, lr\n"
           "FROM epoch_metrics\nORDER BY run_id, epoch\nLIMIT 100")

st.title("SQL")
st.caption(f"Read-only: writes are refused by the database connection. Queries stop after "
           f"{DEFAULT_TIME_LIMIT:g} s; at most {reads.SQL_MAX_ROWS:,} rows are shown. Tables "
           "and views: runs, segments, epochs, epoch_metrics, steps, step_metrics, "
           "checkpoints, anomalies (see the README's SQL contract).")
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
            frame = pd.DataFrame(result.rows, columns=result.columns)
            st.dataframe(frame, hide_index=True, width="stretch")
            st.caption(f"{len(frame):,} rows" + (f" (stopped at {reads.SQL_MAX_ROWS:,}; "
                                                  "add a LIMIT or narrow the query)"
                                                  if result.truncated else ""))
            st.download_button("Download CSV", frame.to_csv(index=False), "query.csv",
                               "text/csv")
