"""What every result file records: config, git commit, library versions, device, seed, time."""
from __future__ import annotations

import datetime as dt
import platform
import subprocess
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


# Changes here don't alter what the code computes, so they don't make a commit "dirty": a result
# written while results/ or the docs have uncommitted edits still names exactly the code that made it.
_NOT_CODE = (":(exclude)results", ":(exclude)*.md")


def git_commit(root: Path = REPO_ROOT) -> str:
    """HEAD's sha, with "-dirty" when tracked code or configs differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *_NOT_CODE],
                               cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
            "host": platform.node(), "seed": seed, "config": config, **extra}
