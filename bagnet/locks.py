"""Directory locks: one process at a time writes a run or results directory (:func:`dir_lock`).

Used through :mod:`bagnet.io`, the module that writes files.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import SoftFileLock, Timeout

from .errors import LockError

LOCK_NAME = ".lock"


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
