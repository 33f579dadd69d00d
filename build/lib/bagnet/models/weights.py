"""Pretrained weights: a local file (``model.weights=``), a copy in ``$BAGNET_WEIGHTS_DIR``, the torch hub
cache, or a hash-checked download into it.

Every file is read with ``torch.load(weights_only=True)`` (tensors and plain containers only, so a
crafted file cannot run code) and held to the sha256 prefix in its name where it has one: a download as
torch.hub checks it, and a file already in the hub cache again (torch.hub skips the check for those).
The download is ``torch.hub.download_url_to_file(url, dst, hash_prefix=...)``; not
``load_state_dict_from_url(check_hash=True)``, which loads a file already in the cache unchecked.
Offline (as on CI) a missing file fails with one line naming it, its url and where to put it.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from urllib.error import URLError

import torch
import torch.nn as nn

from ..errors import WeightsError
from ..utils import file_sha256, refused_content

HASH_RE = re.compile(r"-([a-f0-9]{6,64})\.")


WEIGHTS_DIR_ENV = "BAGNET_WEIGHTS_DIR"


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_dir() -> Path | None:
    """``$BAGNET_WEIGHTS_DIR``: a folder of local copies of release files (found by their release names)."""
    d = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(d).expanduser() if d else None


def find_local(release_file: str, directory: str | os.PathLike | None, pattern: str | None = None) -> Path | None:
    """A copy of ``release_file`` in ``directory``: that name, else one named like it under another hash
    ('<stem>-<hex>.<ext>', e.g. re-saved under its own hash; the loader holds it to that hash), else the
    first match of ``pattern`` (a glob). None when there is none."""
    if not directory or not Path(directory).is_dir():
        return None
    d = Path(directory)
    if (d / release_file).is_file():
        return d / release_file
    m = HASH_RE.search(release_file)
    found = sorted(d.glob(f"{release_file[:m.start()]}-*{release_file[m.end() - 1:]}")) if m else []
    found = [p for p in found if _same_stem(p.name, release_file)]
    if not found and pattern:
        found = sorted(d.glob(pattern))
    return found[0] if found else None


def missing_message(file: str, url: str, why: str = "", alt: str = "") -> str:
    """One line: which file (``alt``: another accepted name), where it comes from, where to put it offline."""
    return (f"weights {file} not available{f' ({why})' if why else ''}: download {url} and put it{alt} in "
            f"${WEIGHTS_DIR_ENV} ({weights_dir() or 'unset'}) or at {hub_checkpoint_dir() / file}, "
            f"or pass model.weights=/path/{file}")


def sha256_prefix_ok(path: str | os.PathLike, fname: str) -> bool:
    """torch.hub convention: the hex part of ``name-<hex>.ext`` is a sha256 prefix of the file."""
    m = HASH_RE.search(fname)
    if not m:
        return True
    return file_sha256(path).startswith(m.group(1))


def _same_stem(name: str, release_file: str) -> bool:
    """True if ``name`` is ``<release stem>-<hex>.<ext>``, whatever the hex."""
    m, r = HASH_RE.search(name), HASH_RE.search(release_file)
    return bool(m and r) and name[:m.start()] == release_file[:r.start()]


def fetch_state_dict(url: str, file: str | None = None, weights: str | os.PathLike | None = None) -> dict:
    """State dict from a local file, the hub cache, or a (hash-checked) download."""
    file = file or url.rsplit("/", 1)[-1]
    weights = weights or find_local(file, weights_dir())
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
            raise WeightsError(missing_message(file, url, f"cannot download: {type(e).__name__}")) from None
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

