"""The hlbd explorer: `streamlit run app/main.py` (or `hlbd ui`).

It reads the database the trainer writes (`HLBD_DB`, else ./hlbd.db; the sidebar can
open another), read-only. Pages live in views/; data access in reads.py.
"""

import streamlit as st

import reads
import sidebar

st.set_page_config(page_title="hlbd explorer", layout="wide")
page = st.navigation([
    st.Page("views/runs.py", title="Runs", default=True),
    st.Page("views/compare.py", title="Compare"),
    st.Page("views/run.py", title="Run detail"),
    st.Page("views/sql.py", title="SQL"),
])
url = sidebar.choose_database()
problem = reads.database_problem(url)
if problem:
    st.title(page.title)
    st.info(problem)
    st.stop()
with reads.errors_shown():
    sidebar.pick_runs(reads.runs(url, sidebar.thresholds()))
    sidebar.choose_thresholds()
    st.sidebar.caption(f"Reading `{url}` (read-only).")
    page.run()
