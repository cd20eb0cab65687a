"""Driving the explorer in tests: AppTest on app/main.py, and reading its Altair charts."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app" / "main.py"


def open_app(monkeypatch, db: Path | str) -> AppTest:
    """The explorer on ``db`` (through HLBD_DB, as a user would point it), first page run."""
    monkeypatch.setenv("HLBD_DB", str(db))
    return AppTest.from_file(str(APP), default_timeout=60).run()


def compare(at: AppTest, run_ids: list[str], x_axis: str = "epoch") -> AppTest:
    """Pick runs in the sidebar and open the Compare page."""
    at.sidebar.multiselect(key="picked").set_value(run_ids).run()
    at.switch_page("views/compare.py").run()
    if x_axis != "epoch":
        at.radio(key="x_axis").set_value(x_axis).run()
    return at


class Chart:
    """One rendered Altair chart: its Vega-Lite spec and its datasets as DataFrames."""

    def __init__(self, element):
        self.spec = json.loads(element.proto.spec)
        self.datasets = [convert_arrow_bytes_to_pandas_df(d.data.data)
                         for d in element.proto.datasets]

    @property
    def title(self) -> str:
        return self.spec["title"]["text"]

    @property
    def subtitle(self) -> str:
        return self.spec["title"].get("subtitle", "")

    def frame(self, *columns: str) -> pd.DataFrame:
        """The dataset that has all of ``columns`` (empty if no layer draws one)."""
        for frame in self.datasets:
            if set(columns) <= set(frame.columns):
                return frame
        return pd.DataFrame(columns=list(columns))

    @property
    def points(self) -> pd.DataFrame:
        return self.frame("run", "x", "value", "exact")

    @property
    def nonfinite(self) -> pd.DataFrame:
        return self.frame("run", "x", "where", "what")

    @property
    def flags(self) -> pd.DataFrame:
        return self.frame("run", "x", "rule", "message")

    @property
    def resumes(self) -> pd.DataFrame:
        frames = [f for f in self.datasets if set(f.columns) == {"run", "x", "what"}]
        return frames[0] if frames else pd.DataFrame(columns=["run", "x", "what"])

    def marks(self) -> list[dict]:
        """Every mark of every (nested) layer, with its encoding."""
        out = []

        def walk(node):
            if "layer" in node:
                for child in node["layer"]:
                    walk(child)
            else:
                mark = node["mark"] if isinstance(node["mark"], dict) else {
                    "type": node["mark"]}
                out.append({**mark, "encoding": node.get("encoding", {})})

        walk(self.spec)
        return out


def charts(at: AppTest) -> dict[str, Chart]:
    return {c.title: c for c in map(Chart, at.get("vega_lite_chart"))}


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(port: int, server: subprocess.Popen, timeout: float = 120) -> None:
    """Wait for a Streamlit server's health endpoint (or fail with its output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited ({server.returncode}): "
                                 f"{server.communicate()[0]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health") as r:
                if r.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing served on port {port} after {timeout} s")


def streamlit_flags(port: int) -> list[str]:
    return ["--server.headless", "true", "--server.port", str(port),
            "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
