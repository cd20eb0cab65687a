"""What the tests share, a module per job:

- backends: the databases tests run on (SQLite, PostgreSQL), the sqlite_only and
  postgres_only marks, and reading a store back (rows, db_snapshot, dump).
- exact: the per-epoch columns a resume must reproduce (EXACT_COLUMNS, exact_metrics).
- explorer: driving the explorer (open_app, compare), reading its charts (Chart, charts,
  chart_spec, column_formats), serving it (streamlit_flags, wait_until_serving), and
  its grids in a browser (grid_layout, grid_rows, click_header).
- procs: the processes a test starts (env, Procs, spawn_hlbd), waiting on them
  (wait_until, the one polling loop), ending them (finish, kill_hard), and free_port.
- torchrun: launching torchrun (torchrun_command, Launched) and its process tree, and
  a small dataset for it.
- tiny: the tiny model, once, as a config (tiny_config) and as CLI flags (tiny_flags).
"""
