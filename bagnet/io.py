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
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from filelock import SoftFileLock, Timeout

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


def append_text(text: str, path: str | os.PathLike) -> Path:
    """Append to a log file (logger=csv's steps.csv). Not atomic: a kill can cut its last line, which the
    next process drops (:class:`bagnet.loggers.CSVLogger`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(text)
    return path


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
# filelock's SoftFileLock does the locking: an O_EXCL marker naming its holder (PID, host, process start), written
# or rolled back (a failed write, e.g. a full disk, leaves no marker), removed on release, and taken over once its
# holder is no longer running on this host (a run killed with -9). By hand, where filelock has no API for it:
# naming the holder in the refusal, the takeover note, and markers that name nobody (see _remove_unreadable).
UNREADABLE_LOCK_STALE_S = 60   # a holder writes its lock within milliseconds of creating it


@contextmanager
def dir_lock(directory: str | os.PathLike, what: str = "run dir"):
    """Hold ``directory/.lock`` for the block: one process at a time may write ``directory``.

    A second process is refused (:class:`LockError`, naming the holder); a lock left by a process that is no
    longer running on this host is taken over, with a note."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    lock = SoftFileLock(path, timeout=0, is_singleton=True)   # one instance per path: a second hold is a bug
    if lock.is_locked:
        raise RuntimeError(f"{path} is already held by this process")
    left = _holder(path)
    if _remove_unreadable(path):
        print(f"note: taking over the stale lock of {directory}: its file is unreadable and older than "
              f"{UNREADABLE_LOCK_STALE_S} s (a write killed mid-way)", flush=True)
    _acquire(lock, path, what)
    if left is not None:   # filelock took over a marker that named another process: it had died
        print(f"note: taking over the stale lock of {directory}: process {left[0]} on {left[1]} is not running",
              flush=True)
    try:
        yield path
    finally:
        lock.release()


def _acquire(lock: SoftFileLock, path: Path, what: str) -> None:
    for _ in range(3):   # the holder may release between our attempt and our reading its marker: try again
        try:
            lock.acquire()
            return
        except Timeout:
            if not path.exists():
                continue
            holder = _holder(path)
            for _ in range(20):   # created but not yet written: its holder writes it within milliseconds
                if holder is not None or not path.exists():
                    break
                time.sleep(0.05)
                holder = _holder(path)
            who = (f"process {holder[0]} on {holder[1]} (since {_mtime(path)})" if holder
                   else "an unknown process (unreadable lock file)")
            raise LockError(f"{path.parent} ({what}) is in use by {who}; wait for it to finish, or "
                            f"remove {path} if that process is gone") from None
        except OSError as e:   # e.g. disk full or a read-only folder; filelock has removed its half-written marker
            raise LockError(f"cannot write the lock file {path} ({e.strerror or e}); free space or fix the "
                            "permissions, then run again") from None
    raise LockError(f"could not lock {path.parent} ({what}): other processes keep taking it")


def _holder(path: Path) -> tuple[str, str] | None:
    """(PID, host) that the lock file names, or None (no file, or it names nobody). filelock has no public reader
    of its marker's host; it writes ``PID\\nhost\\n[start]\\n``. The JSON locks of this project before filelock
    name their holder too, so a run of an earlier version is refused, not taken over."""
    try:
        raw = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    try:
        old = json.loads(raw)
        return str(int(old["pid"])), str(old["host"])
    except (ValueError, TypeError, KeyError):
        pass
    lines = raw.splitlines()
    return (lines[0], lines[1]) if raw.endswith("\n") and len(lines) in (2, 3) and lines[0].isdigit() else None


def _mtime(path: Path) -> str:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime).astimezone().isoformat(timespec="seconds")
    except FileNotFoundError:
        return "?"


def _remove_unreadable(path: Path) -> bool:
    """Remove a lock file that names nobody and is older than :data:`UNREADABLE_LOCK_STALE_S`: a write killed
    mid-way. filelock keeps an empty marker for good (an old filelock's holder writes none) and takes over a torn
    one only after watching it for 2 s. Checked and removed under a flock on the directory, so two takers cannot
    remove each other's fresh lock."""
    if not path.exists() or _holder(path) is not None:
        return False
    import fcntl
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        try:
            if _holder(path) is not None or time.time() - path.stat().st_mtime <= UNREADABLE_LOCK_STALE_S:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
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
