"""Install Imagenette2 (fast.ai's 10-class subset of ImageNet) in the layout ``data=imagenette`` expects.

    python scripts/get_imagenette.py                          # download the full-size archive, check its md5
    python scripts/get_imagenette.py --size 320px --out data/imagenette2-320
    python scripts/get_imagenette.py imagenette2.tgz          # an archive downloaded by hand (md5 checked)

Writes ``<out>/train/<wnid>/*.JPEG`` and ``<out>/val/<wnid>/*.JPEG``; then train with
``IMAGENETTE_ROOT=<out> make reproduce-imagenette`` (or ``DATA_ROOT=<out>``). The URLs and md5 sums are
torchvision's (``torchvision.datasets.Imagenette._ARCHIVES``: one home for the published checksums); an
archive of another origin needs ``--md5`` (its own sum). Every image is kept as distributed: the suite
resizes at load time (the val split is the same 3,925 ImageNet photos at every size).
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from torchvision.datasets import Imagenette

ARCHIVES = Imagenette._ARCHIVES          # size -> (url, md5)
WNIDS = sorted(Imagenette._WNID_TO_CLASS)  # the 10 ImageNet wnids


class Fail(Exception):
    pass


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, folder: Path) -> Path:
    from torchvision.datasets.utils import download_url
    try:
        download_url(url, str(folder))           # progress bar; the md5 is checked by the caller
    except OSError as e:
        raise Fail(f"cannot download {url} ({e.__class__.__name__}: {getattr(e, 'reason', e)}); download it by "
                   "hand and pass the file: python scripts/get_imagenette.py /path/to/archive.tgz") from None
    return folder / Path(url).name


def check(archive: Path, expected: str) -> None:
    got = md5(archive)
    if got != expected.lower():
        raise Fail(f"md5 mismatch for {archive}: got {got}, expected {expected} (a damaged download, or an archive "
                   "of another size: pass --size, or --md5 for an archive of another origin)")


def install(archive: Path, out: Path) -> str:
    """Unpack ``archive`` (``<top>/train|val/<wnid>/``) into ``out/train|val/<wnid>/``."""
    if out.exists() and any(out.iterdir()):
        raise Fail(f"{out} exists and is not empty")
    if not tarfile.is_tarfile(archive):
        raise Fail(f"{archive} is not a tar archive")
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(archive) as t:
            t.extractall(tmp, filter="data")     # refuses absolute paths, '..' and links out of the folder
        tops = [d.parent for d in Path(tmp).rglob("train") if d.is_dir() and (d.parent / "val").is_dir()]
        if not tops:
            raise Fail(f"{archive} holds no train/ and val/ folders (expected imagenette2/train/<wnid>/)")
        counts = {}
        for split in ("train", "val"):
            src = tops[0] / split
            found = sorted(p.name for p in src.iterdir() if p.is_dir())
            if found != WNIDS:
                raise Fail(f"{archive}: {split}/ holds {found[:4]}..., not the 10 Imagenette wnids {WNIDS[:2]}...")
            counts[split] = sum(1 for _ in src.rglob("*.JPEG"))
        out.mkdir(parents=True, exist_ok=True)
        for split in ("train", "val"):
            shutil.move(str(tops[0] / split), str(out / split))
    return f"installed Imagenette2 in {out}: {counts['train']} train and {counts['val']} val images"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", help="an archive file (default: download --size)")
    ap.add_argument("--size", choices=sorted(ARCHIVES), default="full")
    ap.add_argument("--md5", help="expected md5 of the archive (default: the published one of --size)")
    ap.add_argument("--out", type=Path, default=Path("data/imagenette2"))
    args = ap.parse_args(argv)
    url, published = ARCHIVES[args.size]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(args.source) if args.source else download(url, Path(tmp))
            if not archive.is_file():
                raise Fail(f"{archive} is not a file")
            check(archive, args.md5 or published)
            print(install(archive, args.out))
    except Fail as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
