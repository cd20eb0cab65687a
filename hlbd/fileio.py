"""Files: atomic writes (a reader sees the old file or the new one, never half of one),
and the folders hlbd ships inside its package."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import IO

from hlbd.errors import HlbdError


def write_atomically(path: Path, write: Callable[[IO[bytes]], None], *,
                     durable: bool = True) -> int:
    """Write through ``write(file)`` into a temp file beside ``path``, then rename.

    The rename makes the new file appear whole or not at all, whatever kills the
    process; ``durable`` adds the fsyncs that also survive power loss. The file gets the
    mode any new file gets (0666 less the umask: 0644 under umask 022). Returns the size.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
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


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, empty temp file ``.NAME.XXXXXXXX.tmp`` beside ``path``, opened for writing.

    Not tempfile.mkstemp: it creates files 0600. Created with 0666, the kernel applies
    the umask (and a default ACL) as it does for any new file; O_EXCL makes the name ours.
    """
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
             | getattr(os, "O_BINARY", 0))
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temp file name for {path.name}")


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


def installed_folder(package: str, needed: str, what: str) -> Path:
    """The folder of ``package`` (the explorer, the migrations), found with
    importlib.resources: the top-level folder of a checkout (``pip install -e .``) or its
    copy inside an installed hlbd. Streamlit and Alembic read files from a real folder:
    pip installs hlbd unpacked, so ``files()`` is one; a zipped hlbd is refused rather
    than extracted. HlbdError when ``needed`` is not in it."""
    try:
        folder = resources.files(package)
    except ModuleNotFoundError:  # hlbd on sys.path by hand, never installed
        raise HlbdError(f"{what} ({package}) is not installed; install hlbd with pip (in a "
                        "checkout: pip install -e .)") from None
    if not isinstance(folder, Path) or not (folder / needed).is_file():
        raise HlbdError(f"{what} is not a folder with {needed} at {folder} (a broken or "
                        "zipped install); reinstall hlbd with pip")
    return folder
