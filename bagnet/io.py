"""The one module that writes files: tables, figures, JSON, checkpoints, lock files, results folders.

Every write is atomic (temp file in the same directory, fsynced, then renamed), so a run killed mid-write
never leaves a torn file; files get the permissions of the process umask, as ``open()`` would give them.
:func:`dir_lock` gives one process at a time a run or results directory. A results folder is replaced whole
(:func:`write_result`): the new result is written beside the old one, then moved in under a journal, so a
failure before the move leaves the old result and a kill during it is completed by the next writer; the
folder's manifest lists the files the suite wrote, and nothing else in it is ever replaced.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .locks import LOCK_NAME, UNREADABLE_LOCK_STALE_S, dir_lock  # noqa: F401  (callers write, and lock, through io)
from .result import Result, Text
from .utils import jsonable

TEMP_SUFFIX = ".tmp"


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
        fd = os.open(tmp, os.O_RDONLY)     # the bytes reach the disk before the name does (a power cut)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
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


def safe_name(name: str) -> str:
    """``name`` as one file-name component: anything but letters, digits and ``.+-`` becomes ``_``."""
    return re.sub(r"[^\w.+-]+", "_", name).strip(".") or "_"


def with_ext(stem: str | os.PathLike, ext: str) -> Path:
    """``stem.ext``: the extension appended (``Path.with_suffix`` would eat a stem's own dots: img.000)."""
    stem = Path(stem)
    return stem.parent / f"{stem.name}.{ext}"


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
    csv, md = with_ext(path_stem, "csv"), with_ext(path_stem, "md")
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
            path = with_ext(path_stem, ext)
            with atomic_path(path) as tmp:
                tmp.write_bytes(with_ext(fig, ext).read_bytes())
            out.append(path)
        return out
    for ext in formats:
        path = with_ext(path_stem, ext)
        with atomic_path(path) as tmp:
            # no creation date in PDFs: the same figure gives the same bytes (re-rendering changes nothing)
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight",
                        metadata={"CreationDate": None} if ext == "pdf" else None)
        out.append(path)
    plt.close(fig)
    return out


def _text(text: Text, provenance: dict) -> str:
    return text(provenance) if callable(text) else text


def result_digest(blob: dict) -> str:
    """SHA-256 of everything raw.json holds but its ``digest`` (numbers, provenance), as written: a raw.json
    changed by hand no longer matches it (:func:`read_result` refuses it). A check, not a signature: it
    catches edits and damage, not somebody who recomputes it."""
    part = {k: v for k, v in blob.items() if k != "digest"}
    return hashlib.sha256(json.dumps(jsonable(part), sort_keys=True).encode()).hexdigest()


def read_result(path: str | os.PathLike) -> dict:
    """A raw.json as written by :func:`write_result`, checked: one line naming the file when it is not JSON,
    was changed after it was written, or belongs to a folder whose write did not finish."""
    from .errors import UserError
    path = Path(path)
    if (path.parent / JOURNAL).exists() or (path.parent.parent / JOURNAL).exists():
        raise UserError(f"{path.parent}: its write did not finish; run the command that makes it again")
    try:
        blob = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({type(e).__name__}: {e}); make it again or restore it") from None
    if not isinstance(blob, dict) or blob.get("digest") != result_digest(blob):
        raise UserError(f"{path}: its numbers differ from what the suite wrote (digest mismatch: edited by hand, "
                        "or written before digests); make it again or restore it")
    return blob


def _write_files(result: Result, out_dir: Path, provenance: dict) -> list[Path]:
    header = _text(result.header, provenance)
    written = []
    for name, part in result.parts.items():
        written += _write_files(part, out_dir / name, provenance)
    for name, df in result.tables.items():
        written += write_table(df, out_dir / name, header=header)
    for name, fig in result.figures.items():
        written += write_figure(fig, out_dir / name)
    if result.tables or result.figures or result.raw:
        # Tables go into the JSON too, so scripts/render_results.py can rebuild everything from it.
        tables = {name: df.to_dict(orient="list") for name, df in result.tables.items()}
        blob = {"provenance": provenance, "summary": result.summary, "header": header, "tables": tables,
                "raw": result.raw, "units": result.units}
        written.append(write_json({**blob, "digest": result_digest(json.loads(json.dumps(jsonable(blob))))},
                                  out_dir / "raw.json"))
    if result.readme:
        written.append(write_text(_text(result.readme, provenance), out_dir / "README.md"))
    return written


# ---------------------------------------------------------------- results folders
MANIFEST = ".manifest.json"     # the files the suite wrote in a results folder
JOURNAL = ".commit.json"        # a replacement in progress: written before the first move, removed after the last
STAGING = ".staging-"           # the new result, written whole before anything of the old one is touched


def write_result(result: Result, out_dir: str | os.PathLike, provenance: dict) -> list[Path]:
    """Tables as CSV+MD, figures as PNG+PDF, raw numbers + provenance as JSON; each part in a sub-folder of
    its own; the README last. Replaces the folder's previous result whole (the caller holds its lock)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    note = recover_results_dir(out_dir)
    if note:
        print(note, flush=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=STAGING))
    try:
        files = [str(p.relative_to(staging)) for p in _write_files(result, staging, provenance)]
        clash = sorted({f for f in files if files.count(f) > 1})
        if clash:   # two figures or tables of one result under one name: one would be lost
            raise ValueError(f"result files written twice: {', '.join(clash[:3])}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)   # the old result is untouched
        raise
    old = set(manifest(out_dir) or ())
    write_json({"staging": staging.name, "files": sorted(files), "remove": sorted(old - set(files))},
               out_dir / JOURNAL)
    _commit(out_dir)
    return [out_dir / f for f in files]


def _commit(out_dir: Path) -> None:
    """Move a journalled result into place (again, if a kill interrupted it: every step can be repeated)."""
    journal = json.loads((out_dir / JOURNAL).read_text())
    staging = out_dir / journal["staging"]
    for f in journal["files"]:
        if (staging / f).exists():
            (out_dir / f).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / f, out_dir / f)
    for f in journal["remove"]:              # the previous result's files the new one does not write
        (out_dir / f).unlink(missing_ok=True)
    write_json({"files": journal["files"]}, out_dir / MANIFEST)
    for d in {(out_dir / f).parent for f in journal["files"]} | {out_dir}:
        _fsync_dir(d)
    (out_dir / JOURNAL).unlink()
    shutil.rmtree(staging, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_results_dir(out_dir: Path) -> str | None:
    """Finish a replacement a kill interrupted, drop a staged result that never got its journal; the note."""
    notes = []
    if (out_dir / JOURNAL).is_file():
        _commit(out_dir)
        notes.append("finished replacing its result (the previous write was interrupted while moving files)")
    for left in sorted(out_dir.glob(STAGING + "*")):
        shutil.rmtree(left, ignore_errors=True)
        notes.append(f"removed {left.name}, a result whose write failed before it was moved in")
    return f"note: {out_dir}: " + "; ".join(notes) if notes else None


def manifest(out_dir: Path) -> list[str] | None:
    """The files the suite wrote in ``out_dir`` (None: no manifest)."""
    try:
        return list(json.loads((Path(out_dir) / MANIFEST).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def saved_results(out_dir: Path) -> Path | None:
    """The ``raw.json`` of the results in ``out_dir`` (its own, else its first part's), if any."""
    if (out_dir / "raw.json").is_file():
        return out_dir / "raw.json"
    return next(iter(sorted(out_dir.glob("*/raw.json"))), None)


def results_files(root: str | os.PathLike) -> list[Path]:
    """Every raw.json under ``root`` that a results folder's manifest lists (one line naming the folder when a
    listed raw.json is missing), and those of folders written before manifests."""
    from .errors import UserError
    out = set()
    for m in Path(root).glob(f"**/{MANIFEST}"):
        for f in manifest(m.parent) or ():
            if Path(f).name == "raw.json":
                if not (m.parent / f).is_file():
                    raise UserError(f"{m.parent / f} is missing (its folder's manifest lists it); make it again")
                out.add(m.parent / f)
    out |= {p for p in Path(root).glob("**/raw.json")       # a part's raw.json sits one below its manifest
            if not (p.parent / MANIFEST).exists() and not (p.parent.parent / MANIFEST).exists()}
    return sorted(out)


def foreign_files(out_dir: Path) -> list[Path]:
    """Files in ``out_dir`` that the suite did not write: not in its manifest, nor in a sub-folder that is a
    results folder of its own (``seed1/``). A folder without a manifest that holds a raw.json was written before
    manifests: its files are taken as the suite's."""
    out_dir = Path(out_dir)
    listed = manifest(out_dir)
    if not out_dir.is_dir() or (listed is None and saved_results(out_dir) is not None):
        return []
    listed, foreign = set(listed or ()), []
    for root, dirs, files in os.walk(out_dir):
        root = Path(root)
        rel = root.relative_to(out_dir)
        own = saved_results(root)
        if root != out_dir and ((root / MANIFEST).exists() or (own is not None and
                                                               str(own.relative_to(out_dir)) not in listed)):
            dirs.clear()          # another result's folder
            continue
        dirs[:] = [d for d in dirs if not d.startswith(STAGING)]
        foreign += [root / f for f in sorted(files) if str(rel / f) not in listed and f not in (
            LOCK_NAME, MANIFEST, JOURNAL) and not (f.startswith(".") and f.endswith(TEMP_SUFFIX))]
    return foreign


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def write_predictions(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Per-image predictions, gzip CSV (compact, and readable without extra packages)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, compression="gzip", float_format="%.5g")
    return Path(path)


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
