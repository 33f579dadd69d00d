"""pytorchcv (osmr/imgclsmob) ImageNet weights in this project's models, without pytorchcv itself.

The COMP6248 report's baselines started from pytorchcv's weights (``ptcv_get_model(name, pretrained=True)``,
pytorchcv 0.0.45; see docs/report_protocol.md). pytorchcv's networks compute the same function as ours, with
other parameter names and three differences that the mapping or a variant absorbs:

* CBAM spatial gate: pytorchcv stacks ``[max_c(x); mean_c(x)]``, ours ``[mean_c(x); max_c(x)]``: the 7x7
  conv's two input channels are swapped by the mapping. Its channel MLP is ``nn.Linear`` (with bias), ours
  1x1 convs (with bias): reshaped. Gate order (channel, then spatial, on bn3's output, before the residual
  sum), BN in the spatial gate and the stride in the 3x3 conv (``conv1_stride=False``) are the same.
* ResNet-50: pytorchcv's ``resnet50`` strides the first 1x1 conv of a stage (``conv1_stride=True``, the
  original Caffe ResNet); torchvision's strides the 3x3 conv. ``pytorchcv_variant`` moves the stride.
  (pytorchcv's ``resnet50b`` would match torchvision; the report used ``resnet50``.)
* The final pool is ``AvgPool2d(7)``, ours adaptive: the same at 224x224 (pytorchcv's only input size).

``pytorchcv_to_ours(sd, arch)`` is a pure function of the state dict; ``pytorchcv_model(arch, ...)`` builds
our model (``*_pytorchcv`` in the registry) and loads a release file (local path or download).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from pathlib import Path
from urllib.error import URLError

import torch
import torch.nn as nn

from .registry import create_model, register_model
from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..errors import WeightsError
from .weights import _unwrap, find_local, hub_checkpoint_dir, missing_message, weights_dir

__all__ = ["ARCHS", "PYTORCHCV_CFGS", "PYTORCHCV_LATEST_CFGS", "pytorchcv_to_ours", "pytorchcv_variant",
           "fetch_pytorchcv_state_dict", "load_pytorchcv_weights", "pytorchcv_model"]

ARCHS = ("cbam_resnet50", "resnet50", "densenet121", "densenet169")
REPO_URL = "https://github.com/osmr/imgclsmob"
# our registered builder for each pytorchcv name, and the name of its classifier
OUR_NAME = {"cbam_resnet50": "cbam_resnet50", "resnet50": "resnet50",
            "densenet121": "densenet121", "densenet169": "densenet169"}
HEAD = {"cbam_resnet50": "fc", "resnet50": "fc", "densenet121": "classifier", "densenet169": "classifier"}


def _cfg(arch: str, error: str, sha1: str, tag: str, pytorchcv: str) -> dict:
    """pytorchcv's release naming (models/common/model_store.py, get_model_file): the file is
    '<name>-<error>-<sha1[:8]>.pth', shipped zipped at <repo>/releases/download/<tag>/<file>.zip."""
    file = f"{arch}-{error}-{sha1[:8]}.pth"
    return dict(arch=arch, file=file, url=f"{REPO_URL}/releases/download/{tag}/{file}.zip", sha1=sha1,
                release_tag=tag, error=error, pytorchcv=pytorchcv, num_classes=1000, input_size=(3, 224, 224),
                crop_pct=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD)


# What ptcv_get_model(name, pretrained=True) fetched with pytorchcv 0.0.45, the version the report's
# notebooks installed (pytorchcv-0.0.45 wheel, model_store.py _model_sha1 table); the CBAM file is also in
# sb_Cbamresnet50_2.ipynb's download log.
PYTORCHCV_CFGS = {
    "cbam_resnet50": _cfg("cbam_resnet50", "0605", "a1172fe679622224dcc88c00020936ad381806fb", "v0.0.125", "0.0.45"),
    "resnet50": _cfg("resnet50", "0658", "828686d7a4b0bef906d7bcc115efd894fc5c1e0a", "v0.0.147", "0.0.45"),
    "densenet121": _cfg("densenet121", "0704", "cf90d1394d197fde953f57576403950345bd0a66", "v0.0.314", "0.0.45"),
    "densenet169": _cfg("densenet169", "0719", "271391051775ba9bbf458a6bd77af4b3007dc892", "v0.0.3", "0.0.45"),
}
# What pytorchcv 0.0.74 fetches (models/common/model_metainfos.csv); same architectures and keys.
PYTORCHCV_LATEST_CFGS = {
    "cbam_resnet50": _cfg("cbam_resnet50", "0505", "d8cf8488efb97afecd6b3287a3ca9fa093fc3127", "v0.0.537", "0.0.74"),
    "resnet50": _cfg("resnet50", "0633", "b00d1c8e52aa7a2badc705b1545aaf6ccece6ce9", "v0.0.329", "0.0.74"),
    "densenet121": _cfg("densenet121", "0704", "cf90d1394d197fde953f57576403950345bd0a66", "v0.0.314", "0.0.74"),
    "densenet169": _cfg("densenet169", "0629", "44974a17309bb378e97c8f70f96f961ffbf9458d", "v0.0.406", "0.0.74"),
}
RELEASES = {"report": PYTORCHCV_CFGS, "latest": PYTORCHCV_LATEST_CFGS}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"no pytorchcv mapping for '{arch}'; supported: {', '.join(ARCHS)}")


# ---------------------------------------------------------------- key mapping (pure)
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_RESNET_RULES = [  # (pytorchcv pattern, our template); stage s -> layer s, unit u -> block u-1
    (r"features\.init_block\.conv\.conv\.weight", "conv1.weight"),
    (rf"features\.init_block\.conv\.bn\.{_BN}", "bn1.{0}"),
    (r"features\.stage(\d)\.unit(\d+)\.body\.conv(\d)\.conv\.weight", "layer{0}.{1-}.conv{2}.weight"),
    (rf"features\.stage(\d)\.unit(\d+)\.body\.conv(\d)\.bn\.{_BN}", "layer{0}.{1-}.bn{2}.{3}"),
    (r"features\.stage(\d)\.unit(\d+)\.identity_conv\.conv\.weight", "layer{0}.{1-}.downsample.0.weight"),
    (rf"features\.stage(\d)\.unit(\d+)\.identity_conv\.bn\.{_BN}", "layer{0}.{1-}.downsample.1.{2}"),
    (r"features\.stage(\d)\.unit(\d+)\.cbam\.ch_gate\.mlp\.fc(\d)\.(weight|bias)",
     "layer{0}.{1-}.cbam.channel.fc{2}.{3}"),
    (r"features\.stage(\d)\.unit(\d+)\.cbam\.sp_gate\.conv\.conv\.weight", "layer{0}.{1-}.cbam.spatial.conv.weight"),
    (rf"features\.stage(\d)\.unit(\d+)\.cbam\.sp_gate\.conv\.bn\.{_BN}", "layer{0}.{1-}.cbam.spatial.bn.{2}"),
    (r"output\.(weight|bias)", "fc.{0}"),
]
_DENSENET_RULES = [  # stage s -> denseblock s; trans s (s >= 2) -> transition s-1
    (r"features\.init_block\.conv\.weight", "features.conv0.weight"),
    (rf"features\.init_block\.bn\.{_BN}", "features.norm0.{0}"),
    (r"features\.stage(\d)\.unit(\d+)\.conv(\d)\.conv\.weight",
     "features.denseblock{0}.denselayer{1}.conv{2}.weight"),
    (rf"features\.stage(\d)\.unit(\d+)\.conv(\d)\.bn\.{_BN}", "features.denseblock{0}.denselayer{1}.norm{2}.{3}"),
    (r"features\.stage(\d)\.trans\d\.conv\.conv\.weight", "features.transition{0-}.conv.weight"),
    (rf"features\.stage(\d)\.trans\d\.conv\.bn\.{_BN}", "features.transition{0-}.norm.{1}"),
    (rf"features\.post_activ\.bn\.{_BN}", "features.norm5.{0}"),
    (r"output\.(weight|bias)", "classifier.{0}"),
]
RULES = {"cbam_resnet50": _RESNET_RULES, "resnet50": _RESNET_RULES[:6] + _RESNET_RULES[-1:],
         "densenet121": _DENSENET_RULES, "densenet169": _DENSENET_RULES}
_FIELD = re.compile(r"\{(\d)(-?)\}")


def _rename(key: str, rules) -> str | None:
    for pattern, template in rules:
        m = re.fullmatch(pattern, key)
        if m:
            groups = m.groups()
            return _FIELD.sub(lambda f: str(int(groups[int(f.group(1))]) - 1) if f.group(2)
                              else groups[int(f.group(1))], template)
    return None


def pytorchcv_to_ours(sd: dict, arch: str) -> dict:
    """Rename (and where the layouts differ, reshape) a pytorchcv state dict for our model of ``arch``.

    Pure: no model is built and pytorchcv is not imported. Raises WeightsError on a key it does not know
    (e.g. a state dict of another architecture). ``num_batches_tracked`` may be absent (old files):
    BatchNorm then starts it at 0, as for any pre-0.4.1 checkpoint.
    """
    _check_arch(arch)
    rules, out, unknown = RULES[arch], {}, []
    for key, value in _unwrap(dict(sd)).items():
        new = _rename(key, rules)
        if new is None:
            unknown.append(key)
            continue
        if ".cbam.channel.fc" in new and new.endswith(".weight"):
            value = value.reshape(*value.shape, 1, 1)  # Linear [out, in] -> 1x1 conv [out, in, 1, 1]
        elif new.endswith(".cbam.spatial.conv.weight"):
            value = value.flip(1)  # pytorchcv stacks [max; mean], ours [mean; max]
        out[new] = value
    if unknown:
        raise WeightsError(f"not a pytorchcv {arch} state dict: unknown keys {unknown[:4]}")
    return out


# ---------------------------------------------------------------- architecture variant
def pytorchcv_variant(model: nn.Module, arch: str) -> nn.Module:
    """Make our ``arch`` model compute pytorchcv's function (in place; keys and shapes unchanged).

    resnet50: each stage's first bottleneck strides its 1x1 conv1 instead of the 3x3 conv2. The other
    archs already agree once the weights are mapped.
    """
    _check_arch(arch)
    if arch == "resnet50":
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            block = layer[0]
            if block.conv2.stride != (1, 1):
                block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    return model


# ---------------------------------------------------------------- release files
_RELEASE_NAME = re.compile(r"^(?P<arch>.+)-(?P<error>\d{4})-(?P<sha1>[0-9a-f]{8})\.pth(?:\.zip)?$")


def _read(path: Path) -> bytes:
    """The .pth bytes of a release file, zipped (as released: '<file>.pth.zip') or not. (A torch.save file
    is a zip archive too, with a '<name>/data.pkl' member: that one is read as it is.)"""
    if path.suffix == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = [n for n in zf.namelist() if not n.startswith("__MACOSX/") and not n.endswith("/")]
            if any(n.endswith("/data.pkl") for n in members):
                return path.read_bytes()
            if len(members) != 1:
                raise WeightsError(f"{path}: expected one file in the zip, found {members[:4]}")
            return zf.read(members[0])
    return path.read_bytes()


def _load_bytes(data: bytes, where) -> dict:
    try:
        return _unwrap(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    except WeightsError:
        raise
    except Exception as e:  # truncated file, not a torch file
        raise WeightsError(f"cannot read {where}: {type(e).__name__}: {e}") from None


def fetch_pytorchcv_state_dict(arch: str, weights: str | os.PathLike | None = None, release: str = "report",
                               cfg: dict | None = None) -> dict:
    """pytorchcv-keyed state dict from a local file (``.pth`` or the released ``.pth.zip``), the torch hub
    cache, or a download of ``cfg['url']``.

    A file named like a pytorchcv release of ``arch`` ('<arch>-<error>-<hex8>.pth[.zip]') claims that its
    .pth has that sha1 prefix (pytorchcv's convention; not sha256 as for torch.hub files): it is checked.
    """
    _check_arch(arch)
    cfg = cfg or RELEASES[release][arch]
    if not weights:  # $BAGNET_WEIGHTS_DIR: the release file (or its .zip), else a file named like a release of arch
        weights = (find_local(cfg["file"], weights_dir()) or find_local(cfg["file"] + ".zip", weights_dir())
                   or find_local(cfg["file"], weights_dir(), pattern=f"{arch}-[0-9][0-9][0-9][0-9]-*.pth*"))
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        data = _read(path)
        m = _RELEASE_NAME.match(path.name)
        if m and m.group("arch") == arch and not hashlib.sha1(data).hexdigest().startswith(m.group("sha1")):
            raise WeightsError(f"{path}: sha1 does not match the hash in its name (pytorchcv release: {cfg['file']})")
        return _load_bytes(data, path)
    cached = hub_checkpoint_dir() / cfg["file"]
    if cached.is_file():
        data = cached.read_bytes()
        if hashlib.sha1(data).hexdigest() == cfg["sha1"]:
            return _load_bytes(data, cached)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        zip_path = cached.with_name(cached.name + ".zip")
        # no hash_prefix: torch.hub's is a sha256 of the downloaded file, pytorchcv publishes the sha1 of the .pth
        # inside the zip (checked below, as pytorchcv's own loader does)
        torch.hub.download_url_to_file(cfg["url"], str(zip_path), progress=True)
        data = _read(zip_path)
        zip_path.unlink()
    except (URLError, OSError, ConnectionError) as e:
        raise WeightsError(missing_message(cfg["file"], cfg["url"], f"cannot download: {type(e).__name__}",
                                           alt=f" (or the downloaded {cfg['file']}.zip)")) from None
    if hashlib.sha1(data).hexdigest() != cfg["sha1"]:
        raise WeightsError(f"{cfg['url']}: downloaded file has sha1 {hashlib.sha1(data).hexdigest()[:8]}, "
                           f"expected {cfg['sha1'][:8]}")
    cached.write_bytes(data)
    return _load_bytes(data, cached)


def load_pytorchcv_weights(model: nn.Module, arch: str, weights: str | os.PathLike | dict | None = None,
                           release: str = "report", cfg: dict | None = None) -> nn.Module:
    """Map a pytorchcv state dict (a dict, a file, or the release) onto our ``arch`` model and load it:
    every key must match; a head of another size than 1000 is left as initialised."""
    _check_arch(arch)
    sd = weights if isinstance(weights, dict) else fetch_pytorchcv_state_dict(arch, weights, release, cfg)
    sd = pytorchcv_to_ours(sd, arch)
    head = HEAD[arch] + "."
    own = model.state_dict()
    head_resized = any(k.startswith(head) and own[k].shape != v.shape for k, v in sd.items() if k in own)
    if head_resized:
        sd = {k: v for k, v in sd.items() if not k.startswith(head)}
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatch outside the head
        raise WeightsError(f"pytorchcv {arch} weights do not fit {type(model).__name__}: "
                           f"{str(e).splitlines()[-1].strip()}") from None
    if head_resized:
        missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise WeightsError(f"pytorchcv {arch} weights do not fit {type(model).__name__}: missing {missing[:4]}, "
                           f"unexpected {list(unexpected)[:4]}")
    return model


def pytorchcv_model(arch: str, num_classes: int = 1000, pretrained: bool = False, weights: str | None = None,
                    release: str = "report", **kwargs) -> nn.Module:
    """Our ``arch`` model computing pytorchcv's function; with ``pretrained``/``weights`` its ImageNet weights.
    With ``num_classes != 1000`` the head is a fresh ``Linear(in, num_classes)``, as the report's notebooks set."""
    _check_arch(arch)
    model = pytorchcv_variant(create_model(OUR_NAME[arch], num_classes=num_classes, pretrained=False, **kwargs), arch)
    if pretrained or weights:
        load_pytorchcv_weights(model, arch, weights, release)
    return model


def _register(arch: str):
    def fn(num_classes: int = 1000, pretrained: bool = False, weights: str | None = None,
           release: str = "report", **kwargs) -> nn.Module:
        return pytorchcv_model(arch, num_classes=num_classes, pretrained=pretrained, weights=weights,
                               release=release, **kwargs)
    fn.__name__ = f"{arch}_pytorchcv"
    fn.__doc__ = (f"{arch} computing pytorchcv's function; ``pretrained=True`` loads pytorchcv's ImageNet weights "
                  f"({PYTORCHCV_CFGS[arch]['file']}; release='latest': {PYTORCHCV_LATEST_CFGS[arch]['file']}).")
    return register_model(fn, default_cfg=lambda release="report", **_: (
        PYTORCHCV_CFGS if release == "report" else PYTORCHCV_LATEST_CFGS)[arch])


for _arch in ARCHS:
    globals()[f"{_arch}_pytorchcv"] = _register(_arch)
