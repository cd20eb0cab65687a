"""Shared fixtures: real databases (SQLite files and PostgreSQL) and real tiny training runs.

The fixtures ``store``, ``db_url`` and ``train_run`` (and every fixture built on
``backend``) run each test once per backend: a SQLite file, then a database of its own
on the PostgreSQL server HLBD_TEST_PG names (tests/helpers/backends.py). A test that is
about SQLite itself says so with ``@sqlite_only``.
"""

from __future__ import annotations

import os

import pytest
from helpers.backends import BACKENDS, Databases, PgServer, pg_required, pg_unavailable
from helpers.procs import Procs
from helpers.tiny import tiny_config

from hlbd.runner import start_run
from hlbd.store import Store


def pytest_collection_modifyitems(config, items) -> None:
    """Without a server (and not in CI), leave the PostgreSQL half out, saying why once."""
    reason = pg_unavailable()
    if not reason or pg_required():
        return
    left_out = [i for i in items
                if getattr(i, "callspec", None) and i.callspec.params.get("backend")
                == "postgresql"]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        dropped = set(left_out)
        items[:] = [i for i in items if i not in dropped]
        config._hlbd_pg_left_out = (len(left_out), reason)


def pytest_terminal_summary(terminalreporter, config) -> None:
    left_out = getattr(config, "_hlbd_pg_left_out", None)
    if left_out:
        terminalreporter.write_line(f"{left_out[0]} PostgreSQL tests deselected: {left_out[1]}")


@pytest.fixture(scope="session")
def pg_server():
    """The PostgreSQL server of HLBD_TEST_PG, opened on first use."""
    servers = []

    def get() -> PgServer:
        if not servers:
            reason = pg_unavailable()
            if reason:
                if pg_required():
                    pytest.fail(f"HLBD_TEST_PG_REQUIRED is set but {reason}")
                pytest.skip(reason)
            servers.append(PgServer(os.environ["HLBD_TEST_PG"]))
        return servers[0]

    yield get
    for server in servers:
        server.close()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, pg_server) -> str:
    """Which database the test runs against: "sqlite" or "postgresql"."""
    if request.param == "postgresql":
        pg_server()  # skips (or fails, in CI) without a server
    return request.param


@pytest.fixture(scope="module")
def databases(backend, pg_server) -> Databases:
    return Databases(backend, pg_server)


@pytest.fixture
def db_url(databases, tmp_path) -> str:
    """The --db of a new database for this test: a SQLite file path or a PostgreSQL URL."""
    db = databases.new(tmp_path)
    yield db
    databases.drop(db)


@pytest.fixture
def store(db_url) -> Store:
    s = Store.open(db_url)
    yield s
    s.close()


@pytest.fixture
def train_run(store, tmp_path):
    """Train a tiny run into ``store``; returns (run_id, outcome)."""

    def run(**overrides):
        outcome = start_run(tiny_config(**overrides), store, runs_root=tmp_path / "runs",
                            progress=False)
        return outcome.run_id, outcome

    return run


@pytest.fixture
def procs():
    """Subprocesses started by a test (``Procs``), their process groups killed at its end."""
    started = Procs()
    yield started
    started.kill_all()
