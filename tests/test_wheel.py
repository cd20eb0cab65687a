"""The wheel carries the explorer and the migrations inside the package.

Built for real (`pip wheel`, as a user or an index would) from a copy of the checkout's
files; .ci/wheel-check goes further: installs it and runs it from an unrelated folder.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def checkout_files() -> list[str]:
    """The checkout's files: tracked, and new ones git does not ignore (a stray build/ or
    __pycache__ is left out, as a fresh clone has none)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, capture_output=True,
                            check=True, timeout=60).stdout.decode()
    return sorted(name for name in listed.split("\0") if name and (REPO / name).is_file())


def build_wheel(tmp_path: Path) -> zipfile.ZipFile:
    source = tmp_path / "src"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in checkout_files():
            tar.add(REPO / name, arcname=name)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        tar.extractall(source, filter="data")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                    "--no-deps", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, timeout=300, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("hlbd-*.whl")
    return zipfile.ZipFile(wheel)


def test_the_wheel_holds_every_file_of_app_and_migrations_inside_the_package(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(wheel.namelist())
    shipped = [name for name in checkout_files()
               if name.split("/")[0] in ("app", "migrations") and "__pycache__" not in name]
    assert "app/main.py" in shipped and "migrations/versions/0001_initial.py" in shipped
    assert "migrations/script.py.mako" in shipped
    missing = [name for name in shipped if f"hlbd/{name}" not in names]
    assert missing == []
    # Nothing lands outside the package (a top-level app/ or migrations/ would clash
    # with other distributions), and the command is there.
    tops = {name.split("/")[0] for name in names}
    (dist_info,) = tops - {"hlbd"}
    assert dist_info.startswith("hlbd-") and dist_info.endswith(".dist-info")
    entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert "hlbd = hlbd.cli:main" in entry_points
