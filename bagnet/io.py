"""The one module that writes files: tables, figures, JSON, checkpoints, lock files.

Every write is atomic (temp file in the same directory, then rename), so a run killed mid-write never
leaves a torn file; files get the permissions of the process umask, as ``open()`` would give them.
:func:`dir_lock` gives one process at a time a run or results directory.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import socket
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .errors import LockError
from .result import Result, Text
from .utils import jsonable

TEMP_SUFFIX = ".tmp"
LOCK_NAME = ".lock"


def _umask() -> int:
    """The process umask (read from /proc where there is one: setting it to read it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; a result file is as open() would make it
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(obj), indent=2) + "\n")
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_table(df: pd.DataFrame, path_stem: str | os.PathLike, header: str = "") -> list[Path]:
    """``<stem>.csv`` and ``<stem>.md`` (Markdown, with an optional header paragraph)."""
    stem = Path(path_stem)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4g")
    write_text((header.rstrip() + "\n\n" if header else "") + to_markdown(df) + "\n", md)
    return [csv, md]


def to_markdown(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """Markdown table without the optional `tabulate` dependency."""
    def fmt(v):
        if v is None:                  # a missing value read back from JSON (render_results) is NaN's "–"
            return "–"
        if isinstance(v, float):
            return "–" if not math.isfinite(v) else floatfmt.format(v)
        return str(v)
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def write_figure(fig, path_stem: str | os.PathLike, formats=("png", "pdf"), dpi: int = 150) -> list[Path]:
    """A matplotlib Figure as ``path_stem.<ext>``; a path stem instead of a Figure (a figure saved earlier,
    e.g. by a resumable unit) is copied from its files."""
    import matplotlib.pyplot as plt
    out = []
    if isinstance(fig, (str, os.PathLike)):
        for ext in formats:
            path = Path(path_stem).with_suffix("." + ext)
            with atomic_path(path) as tmp:
                tmp.write_bytes(Path(fig).with_suffix("." + ext).read_bytes())
            out.append(path)
        return out
    for ext in formats:
        path = Path(path_stem).with_suffix("." + ext)
        with atomic_path(path) as tmp:
            # no creation date in PDFs: the same figure gives the same bytes (re-rendering changes nothing)
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight",
                        metadata={"CreationDate": None} if ext == "pdf" else None)
        out.append(path)
    plt.close(fig)
    return out


def _text(text: Text, provenance: dict) -> str:
    return text(provenance) if callable(text) else text


def write_result(result: Result, out_dir: str | os.PathLike, provenance: dict) -> list[Path]:
    """Tables as CSV+MD, figures as PNG+PDF, raw numbers + provenance as JSON; each part in a
    sub-folder of its own; the README last."""
    out_dir = Path(out_dir)
    header = _text(result.header, provenance)
    written = []
    for name, part in result.parts.items():
        written += write_result(part, out_dir / name, provenance)
    for name, df in result.tables.items():
        written += write_table(df, out_dir / name, header=header)
    for name, fig in result.figures.items():
        written += write_figure(fig, out_dir / name)
    if result.tables or result.figures or result.raw:
        # Tables go into the JSON too, so scripts/render_results.py can rebuild everything from it.
        tables = {name: df.to_dict(orient="list") for name, df in result.tables.items()}
        written.append(write_json({"provenance": provenance, "summary": result.summary, "header": header,
                                   "tables": tables, "raw": result.raw}, out_dir / "raw.json"))
    if result.readme:
        written.append(write_text(_text(result.readme, provenance), out_dir / "README.md"))
    return written


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def write_predictions(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Per-image predictions, gzip CSV (compact, and readable without extra packages)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, compression="gzip", float_format="%.5g")
    return Path(path)


# ---------------------------------------------------------------- directory locks
_HELD: set[Path] = set()   # locks this process holds


@contextmanager
def dir_lock(directory: str | os.PathLike, what: str = "run dir"):
    """Hold ``directory/.lock`` for the block: one process at a time may write ``directory``.

    The lock file is created with O_CREAT|O_EXCL and names the holder (PID, host, start time, command);
    it is removed when the block ends, however it ends. A second process is refused
    (:class:`LockError`, naming the holder). A lock whose process is no longer running on this host
    is stale (a run killed with -9) and is taken over, with a note.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_NAME
    key = lock.resolve()
    if key in _HELD:
        raise RuntimeError(f"{lock} is already held by this process")
    token = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "since": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                        "command": " ".join(sys.argv)[:500], "token": uuid.uuid4().hex})
    _acquire(lock, token, what)
    _HELD.add(key)
    try:
        yield lock
    finally:
        _HELD.discard(key)
        try:
            if lock.read_text() == token:
                lock.unlink()
        except FileNotFoundError:
            pass


def _acquire(lock: Path, token: str, what: str) -> None:
    for _ in range(20):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            raw = _read_lock(lock)
            if raw is None:          # removed meanwhile: try again
                continue
            holder = _parse_lock(raw)
            if not _is_stale(holder, lock):
                who = (f"process {holder['pid']} on {holder['host']} (since {holder.get('since', '?')})"
                       if holder else "an unknown process (unreadable lock file)")
                raise LockError(f"{lock.parent} ({what}) is in use by {who}; wait for it to finish, or "
                                f"remove {lock} if that process is gone") from None
            if _remove_if_unchanged(lock, raw):
                why = (f"process {holder['pid']} on {holder['host']} is not running" if holder else
                       f"its file is unreadable and older than {UNREADABLE_LOCK_STALE_S} s (a write that failed)")
                print(f"note: taking over the stale lock of {lock.parent}: {why}", flush=True)
            continue
        try:
            with os.fdopen(fd, "w") as f:
                f.write(token)
        except OSError as e:       # e.g. disk full: an empty lock file would block the directory for good
            lock.unlink(missing_ok=True)
            raise LockError(f"cannot write the lock file {lock} ({e.strerror or e}); free space or fix the "
                            "permissions, then run again") from None
        return
    raise LockError(f"could not lock {lock.parent} ({what}): other processes keep taking it")


def _read_lock(lock: Path) -> str | None:
    """The lock file's text; None if it disappeared. Waits briefly for a lock being written."""
    for _ in range(10):
        try:
            raw = lock.read_text()
        except FileNotFoundError:
            return None
        if _parse_lock(raw) is not None:
            return raw
        time.sleep(0.1)            # just created by O_EXCL, its holder is writing it
    return raw


def _parse_lock(raw: str) -> dict | None:
    try:
        holder = json.loads(raw)
        int(holder["pid"]), str(holder["host"])
        return holder
    except (ValueError, TypeError, KeyError):
        return None


UNREADABLE_LOCK_STALE_S = 60   # a holder writes its lock within milliseconds of creating it


def _is_stale(holder: dict | None, lock: Path) -> bool:
    """True if the holder is a process of this host that is not running (another host: cannot tell), or
    the lock file is unreadable and older than :data:`UNREADABLE_LOCK_STALE_S`."""
    if holder is None:
        try:
            return time.time() - lock.stat().st_mtime > UNREADABLE_LOCK_STALE_S
        except FileNotFoundError:
            return False
    if holder["host"] != socket.gethostname():
        return False
    pid = int(holder["pid"])
    if pid == os.getpid():         # not held by us (checked above): left by an earlier process with our PID
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:        # alive, another user's
        return False
    return False


def _remove_if_unchanged(lock: Path, raw: str) -> bool:
    """Remove the stale ``lock`` if it still holds ``raw``; takers are serialised by flock on the dir."""
    import fcntl
    dfd = os.open(lock.parent, os.O_RDONLY)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        try:
            if lock.read_text() != raw:
                return False       # someone else took it over first
        except FileNotFoundError:
            return False
        lock.unlink()
        return True
    finally:
        os.close(dfd)              # releases the flock


def remove_orphaned_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete temp files that a write killed mid-way left in ``directory`` (call it holding its lock). Only
    the directory's own: a subfolder with its own lock or config.yaml is another run's, and is left alone."""
    removed = []
    for root, dirs, files in os.walk(directory):
        root = Path(root)
        if root != Path(directory) and ((root / LOCK_NAME).exists() or (root / "config.yaml").exists()):
            dirs.clear()
            continue
        for name in sorted(files):
            if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                (root / name).unlink()
                removed.append(root / name)
    if removed:
        print(f"note: removed {len(removed)} temp file(s) left by an interrupted write in {directory}", flush=True)
    return removed
