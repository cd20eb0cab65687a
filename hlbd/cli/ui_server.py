"""`streamlit run` for ``hlbd ui``, the explorer's libraries imported before it serves.

Streamlit runs the explorer's page script only when a browser opens a session, so the
first page of a new server paid for importing pandas, SQLAlchemy, pyarrow and the store
(0.6-0.9 s on a 2-core machine) before it could read a run. Here they are imported while
the server starts, before anyone can connect: the server is ready that much later, and
its first page comes as fast as any other (bench/explorer_browser.py prints both).

Usage (what ``hlbd ui`` runs): python -m hlbd.cli.ui_server run APP [streamlit flags]
"""

from __future__ import annotations

import sys

# What the explorer's pages import beyond Streamlit, heaviest first.
LIBRARIES = ("pandas", "pyarrow", "sqlalchemy", "numpy", "hlbd.store")


def main() -> None:
    for name in LIBRARIES:
        __import__(name)
    from streamlit.web.cli import main as streamlit

    streamlit(prog_name="streamlit")


if __name__ == "__main__":
    sys.exit(main())
