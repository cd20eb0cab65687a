"""The hlbd explorer: `streamlit run app/main.py` (or `hlbd ui`).

It reads the database the trainer writes (`HLBD_DB`, else ./hlbd.db; the sidebar can
open another), read-only. Pages live in views/; data access in reads.py; the view a
link reproduces in link.py.
"""

import streamlit as st

import charts
import link
import reads
import sidebar
import table_picks

# The pages are named at the top, so the sidebar (database, runs, thresholds) can stay
# folded away on a narrow window and every page is still one click off; open, it
# takes SIDEBAR_PX, not Streamlit's 300.
SIDEBAR_PX = 250
st.set_page_config(page_title="hlbd explorer", layout="wide",
                   initial_sidebar_state=SIDEBAR_PX)
PAGES = {
    "runs": st.Page("views/runs.py", title="Runs", default=True),
    "compare": st.Page("views/compare.py", title="Compare", url_path="compare"),
    "run": st.Page("views/run.py", title="Run detail", url_path="run"),
    "params": st.Page("views/params.py", title="Hyperparameters", url_path="params"),
    "sql": st.Page("views/sql.py", title="SQL", url_path="sql"),
}
page = st.navigation(list(PAGES.values()), position="top")
link.start(tuple(charts.METRICS), reads.threshold_defaults())
url = sidebar.choose_database()
problem = reads.database_problem(url)
if problem:
    st.title(page.title)
    st.info(problem)
    st.stop()
with reads.errors_shown():
    all_runs = reads.runs(url, sidebar.thresholds())
    table_picks.apply_ticks()
    sidebar.pick_runs(all_runs)
    sidebar.choose_thresholds()
    st.sidebar.caption(f"Reading `{url}` (read-only).")
    try:
        page.run()
    finally:  # a page may st.stop(); its link is still brought up to date
        name = next(k for k, p in PAGES.items() if p.url_path == page.url_path)
        link.write_url(name, sidebar.picked(), [r["run_id"] for r in all_runs],
                       dict(sidebar.thresholds()), reads.threshold_defaults())
