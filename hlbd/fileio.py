"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomically(path: Path, write: Callable[[IO[bytes]], None], *,
                     durable: bool = True) -> int:
    """Write through ``write(file)`` into a temp file beside ``path``, then rename.

    The rename makes the new file appear whole or not at all, whatever kills the
    process; ``durable`` adds the fsyncs that also survive power loss. Returns the size.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        size = os.path.getsize(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if not durable:
        return size
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return size


def remove_temp_files(folder: Path) -> list[Path]:
    """Remove what write_atomically left in ``folder`` when its process was killed
    mid-write (``.NAME.XXXX.tmp``); only for a folder no other process writes now."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def read_json_file(path: Path, error: type[Exception], what: str) -> tuple[bytes, object]:
    """The raw bytes and decoded JSON of a UTF-8 file (a BOM is allowed).

    Every failure raises ``error`` with one line naming the file: missing, unreadable,
    not UTF-8, malformed JSON. ``what`` names the kind of file for the message.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 (byte {exc.start}); {what} files are UTF-8 "
                    "JSON") from None
    try:
        # NaN, Infinity, -Infinity are accepted: the literals Python's json writes.
        return raw, json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not JSON: {exc.msg} at line {exc.lineno} column "
                    f"{exc.colno}") from None
