"""Pretrained weights: hash-checked download into the torch hub cache, or a local file.

Every file is read with ``torch.load(weights_only=True)`` (tensors and plain containers only, so a
crafted file cannot run code) and held to the sha256 prefix in its name where it has one: a download as
torch.hub checks it, and a file already in the hub cache again (torch.hub skips the check for those).
Offline (as on CI) a download fails with one line saying where to put the file.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path
from urllib.error import URLError

import torch
import torch.nn as nn

from ..errors import WeightsError
from ..utils import refused_content

HASH_RE = re.compile(r"-([a-f0-9]{6,64})\.")


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_prefix_ok(path: str | os.PathLike, fname: str) -> bool:
    """torch.hub convention: the hex part of ``name-<hex>.ext`` is a sha256 prefix of the file."""
    m = HASH_RE.search(fname)
    if not m:
        return True
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest().startswith(m.group(1))


def _same_stem(name: str, release_file: str) -> bool:
    """True if ``name`` is ``<release stem>-<hex>.<ext>``, whatever the hex."""
    m, r = HASH_RE.search(name), HASH_RE.search(release_file)
    return bool(m and r) and name[:m.start()] == release_file[:r.start()]


def fetch_state_dict(url: str, file: str | None = None, weights: str | os.PathLike | None = None) -> dict:
    """State dict from a local file, the hub cache, or a (hash-checked) download."""
    file = file or url.rsplit("/", 1)[-1]
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        # A name shaped like the release's ('bagnet8-<hex>.pth.tar') claims a hash: hold it to it.
        if _same_stem(path.name, file) and not sha256_prefix_ok(path, path.name):
            raise WeightsError(f"{path}: sha256 does not match the hash in its name (release file: {file})")
        return _unwrap(load_weights_file(path))
    cached = hub_checkpoint_dir() / file
    if cached.is_file():
        # torch.hub checks the hash only when it downloads; a cached file could have been replaced since.
        if not sha256_prefix_ok(cached, file):
            raise WeightsError(f"refused {cached}: its sha256 does not match the hash in its name; delete it "
                               "to download it again, or pass model.weights=/path/to/a/good/copy")
    else:
        m = HASH_RE.search(file)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached), hash_prefix=m.group(1) if m else None, progress=True)
        except (URLError, OSError, ConnectionError) as e:
            raise WeightsError(f"cannot download {url} ({type(e).__name__}); offline? put the file at "
                               f"{cached} or pass model.weights=/path/{file}") from None
        except RuntimeError as e:  # torch.hub's hash mismatch (the partial download is removed)
            raise WeightsError(f"{file}: {' '.join(str(e).split())}") from None
    return _unwrap(load_weights_file(cached))


def load_weights_file(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)``; a file holding anything else is refused (WeightsError)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(f"refused to load weights file {path}: {refused_content(e)}; weights files hold "
                           "only those, so it was not saved as weights or was altered") from None
    except Exception as e:  # truncated, or not a torch file
        raise WeightsError(f"cannot read weights file {path} ({type(e).__name__}: damaged or not a torch file)") from None


def _unwrap(obj) -> dict:
    """Accept a bare state_dict, {'state_dict': ...}, {'model': ...} and DataParallel 'module.' keys."""
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"not a state dict: {type(obj).__name__}")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_pretrained(model: nn.Module, cfg: dict, weights: str | None = None, num_classes: int | None = None,
                    classifier: str = "fc", state_filter=None) -> nn.Module:
    """Load ``cfg['url']`` (or ``weights``) into ``model``; a head of another size is left freshly initialised."""
    sd = fetch_state_dict(cfg["url"], cfg.get("file"), weights)
    if state_filter is not None:
        sd = state_filter(sd)
    head_resized = num_classes is not None and num_classes != cfg.get("num_classes", num_classes)
    if head_resized:
        sd = {k: v for k, v in sd.items() if not k.startswith(classifier + ".")}
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise WeightsError(f"weights do not fit {type(model).__name__}: {str(e).splitlines()[-1].strip()}") from None
    if head_resized:
        missing = [k for k in missing if not k.startswith(classifier + ".")]
    if missing or unexpected:
        raise WeightsError(f"weights do not fit {type(model).__name__}: missing {missing[:4]}, "
                           f"unexpected {list(unexpected)[:4]}")
    return model
