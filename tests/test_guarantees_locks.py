"""Locks: one process per run dir (issue 16), and locks that a failed write cannot wedge and temp-file
cleanup that touches only its own run (issue 23). README "Guarantees" lists these tests."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bagnet import io
from bagnet.errors import LockError
from bagnet.identity import run_identity


# ---------------------------------------------------------------- one process per run dir
@pytest.fixture
def hold_lock(repo_root):
    """``hold_lock(directory, then)``: a process that takes ``directory``'s lock, says so, then runs ``then``
    (e.g. sleeps, or dies holding it)."""
    def hold_lock(directory: Path, then: str) -> subprocess.Popen:
        code = (f"import os, time\nfrom bagnet import io\nwith io.dir_lock({str(directory)!r}):\n"
                f"    print('held', flush=True)\n    {then}")
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=repo_root, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "held\n"
        return proc
    return hold_lock


def test_run_dir_locked_by_a_live_process_is_refused(tmp_path, run_in_process, compose_config, tiny_overrides,
                                                     hold_lock):
    cfg = compose_config(*tiny_overrides)
    holder = hold_lock(Path(cfg.run_dir), "time.sleep(60)")
    try:
        lock = Path(cfg.run_dir) / io.LOCK_NAME
        held = lock.read_text()
        with pytest.raises(LockError, match=f"in use by process {holder.pid} on ") as e:
            run_in_process(*tiny_overrides)
        assert "\n" not in str(e.value)
        assert lock.read_text() == held and not (Path(cfg.run_dir) / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_of_the_earlier_json_format_still_refuses(tmp_path):
    lock = tmp_path / io.LOCK_NAME      # what this project wrote before filelock: a run of that version is refused
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "since": "earlier"}))
    with pytest.raises(LockError, match=f"in use by process {os.getppid()} on .*remove {lock}"):
        with io.dir_lock(tmp_path):
            pass
    assert lock.exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys, run_in_process, compose_config, tiny_overrides,
                                                    hold_lock):
    cfg = compose_config(*tiny_overrides)
    gone = hold_lock(Path(cfg.run_dir), "os._exit(0)")   # dies holding it, as a run killed with -9
    gone.wait()
    lock = Path(cfg.run_dir) / io.LOCK_NAME
    assert lock.exists()
    run_in_process(*tiny_overrides)
    out = capsys.readouterr().out
    assert f"taking over the stale lock of {cfg.run_dir}: process {gone.pid}" in out
    assert (Path(cfg.run_dir) / "summary.json").is_file() and not lock.exists()


# Runs the CLI with a pause between the run dir's identity check and its first write: both processes
# get there before either writes unless one was refused before (the lock). ``go`` ends the wait.
RACE = r"""
import os, sys, time, pathlib
import bagnet.tasks as T
gate = pathlib.Path(sys.argv.pop(1))
real = T.provenance
def paused(*a, **k):
    (gate / f"ready.{os.getpid()}").touch()
    t0 = time.time()
    while len(list(gate.glob("ready.*"))) < 2 and not (gate / "go").exists() and time.time() - t0 < 120:
        time.sleep(0.05)
    return real(*a, **k)
T.provenance = paused
from bagnet.run import main
main()
"""


def test_two_commands_on_one_run_dir_one_wins(tmp_path, tiny_overrides, repo_root, one_error_line):
    gate = tmp_path / "gate"
    gate.mkdir()
    run_dir = tmp_path / "shared_run"
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(gate), *tiny_overrides, f"trainer.lr={lr}",
                               f"run_dir={run_dir}", f"paths.root_dir={tmp_path}"],
                              cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for lr in (0.1, 0.2)]
    while all(p.poll() is None for p in procs):
        time.sleep(0.1)
    (gate / "go").touch()
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, [e[-2000:] for _, e in outs])
    loser = outs[codes.index(2)][1]
    assert "in use by process" in one_error_line(loser) or "another config" in loser
    from bagnet.train import saved_config
    saved = saved_config(run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["identity"] == run_identity(saved)
    assert saved["trainer"]["lr"] == (0.1, 0.2)[codes.index(0)]


# ---------------------------------------------------------------- locks a failed write cannot wedge
def test_a_lock_that_cannot_be_written_is_removed(tmp_path, monkeypatch):
    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    (tmp_path / "d").mkdir()
    with monkeypatch.context() as m, pytest.raises(LockError, match="No space left on device"):
        m.setattr(os, "write", disk_full)          # filelock writes the holder's record with os.write
        with io.dir_lock(tmp_path / "d"):
            pass
    assert not (tmp_path / "d" / io.LOCK_NAME).exists()


def test_an_unreadable_lock_is_stale_after_a_minute(tmp_path, capsys):
    lock = tmp_path / io.LOCK_NAME
    lock.write_text("")
    with pytest.raises(LockError, match=f"unreadable lock file.*remove {lock}"):
        with io.dir_lock(tmp_path):
            pass
    old = time.time() - io.UNREADABLE_LOCK_STALE_S - 5
    os.utime(lock, (old, old))
    with io.dir_lock(tmp_path):
        pass
    assert "taking over the stale lock" in capsys.readouterr().out and not lock.exists()


# ---------------------------------------------------------------- temp cleanup touches only its own run
def test_temp_cleanup_leaves_another_runs_files_alone(tmp_path):
    parent = tmp_path / "runs" / "train"
    sibling = parent / "other_run"
    (sibling / "checkpoints").mkdir(parents=True)
    (sibling / "config.yaml").write_text("task: train\n")
    theirs = sibling / "checkpoints" / ".last.pt.inflight.tmp"
    theirs.write_bytes(b"\0")
    mine = parent / ".summary.json.x.tmp"
    mine.write_bytes(b"\0")
    assert io.remove_orphaned_temps(parent) == [mine] and theirs.exists()


