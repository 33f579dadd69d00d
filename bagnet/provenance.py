"""What every result file records: config, git commit, library versions, device, seed, time."""
from __future__ import annotations

import datetime as dt
import platform
import subprocess
from pathlib import Path

import json
from typing import Mapping

import pandas as pd
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


# Changes here don't alter what the code computes, so they don't make a commit "dirty": a result
# written while results/ or the docs have uncommitted edits still names exactly the code that made it.
_NOT_CODE = (":(exclude)results", ":(exclude)*.md")


def git_commit(root: Path = REPO_ROOT) -> str:
    """HEAD's sha, with "-dirty" when code or configs differ from it (edited, or new files git does not ignore:
    untracked code computes results too); for an installed package (no
    checkout of its own: a site-packages folder may sit inside somebody else's repository) its version."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not top or Path(top).resolve() != root.resolve():
            return _installed_version()
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", ".", *_NOT_CODE],
                               cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"installed bagnet-repro {version('bagnet-repro')} (no git checkout)"
    except PackageNotFoundError:
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# CPU features that change which kernels run, and so the floating-point results (bf16 autocast is ~2x
# faster with AVX512-BF16 than without)
KEY_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo_fields() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines()) if v}


def cpu_flags() -> list[str]:
    have = set(_cpuinfo_fields().get("flags", "").split())
    return [f for f in KEY_FLAGS if f in have]


def cpu_id() -> str:
    """Family, model and stepping: two CPUs with the same marketing name ("AMD EPYC") can differ here, and so
    can their results (the same commit and thread count trained other demo models on another such machine)."""
    f = _cpuinfo_fields()
    return " ".join(f"{k} {f[k]}" for k in ("cpu family", "model", "stepping") if k in f) or platform.machine()


def device_description(device: str | torch.device = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_name()}, {torch.get_num_threads()} threads"


def versions() -> dict:
    import matplotlib
    import pandas
    import torchvision
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "pandas": pandas.__version__,
           "matplotlib": matplotlib.__version__}
    for mod in ("hydra", "omegaconf", "captum"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def provenance(config: dict | None = None, device: str | torch.device = "cpu", seed: int | None = None,
               **extra) -> dict:
    return {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(), "versions": versions(), "device": device_description(device),
            "cpu": {"id": cpu_id(), "flags": cpu_flags()}, "host": platform.node(), "seed": seed,
            "config": config, **extra}


def model_provenance(models: Mapping, seed: int = 0) -> dict:
    """What an experiment's ``models`` were, for its provenance: per trained run the checkpoint file and its
    sha256 and, from the run dir (when there), the commit, time and device it was trained with and its
    val/test top-1 with the per-image 95% bootstrap interval of Table 1 (``seed``, over the run's saved
    predictions); a model config is recorded as given."""
    from .checkpoint import checkpoint_path     # here, not at the top: checkpoint -> models would load for
    from .stats import bootstrap_ci             # every provenance record, and scipy with them
    from .utils import file_sha256
    out = {}
    for name, spec in dict(models).items():
        if not isinstance(spec, (str, Path)):
            out[name] = {"config": spec}
            continue
        path = checkpoint_path(spec)
        entry = {"checkpoint": str(path), "sha256": file_sha256(path)}
        run_dir = path.parent.parent
        if (run_dir / "summary.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
            prov = summary.get("provenance") or {}
            entry.update({k: prov.get(k) for k in ("git_commit", "time", "device")},
                         **{k: summary.get(k) for k in ("epochs", "precision", "train_wall_s")}, top1={})
            for split in summary.get("eval") or {}:
                preds = run_dir / "eval" / f"predictions_{split}.csv.gz"
                if preds.is_file():
                    df = pd.read_csv(preds)
                    ci = bootstrap_ci((df["pred"] == df["label"]).to_numpy(), seed=seed)
                    entry["top1"][split] = {"top1": ci.estimate, "lo": ci.lo, "hi": ci.hi, "n": len(df)}
        out[name] = entry
    return out
