"""Install 15-Scene in the layout bagnet.data expects, from a downloaded archive or a URL.

    python scripts/get_scene15.py scene_categories.zip --out data/scene15
    python scripts/get_scene15.py https://host/scene_categories.zip --sha256 <hex> --out data/scene15

Accepts zip or tar(.gz) archives of the original flat release (``scene_categories/<class>/*.jpg``) or of a
train/test copy (``train/<class>/``, ``test/<class>/``); class folders named like the CS143 copy
(Bedroom, Suburb, Coast, ...) are renamed to the original names. Writes ``<out>/<class>/`` (flat) or
``<out>/train|test/<class>/``. Downloads are checked against ``--sha256`` (required: no checksum of the
original release is recorded here, and its historical URL, ORIGINAL_URL, is no longer reliably online).
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

ORIGINAL_URL = "https://www-cvr.ai.uiuc.edu/ponce_grp/data/scene_categories/scene_categories.zip"
CLASSES = ["bedroom", "CALsuburb", "industrial", "kitchen", "livingroom", "MITcoast", "MITforest", "MIThighway",
           "MITinsidecity", "MITmountain", "MITopencountry", "MITstreet", "MITtallbuilding", "PARoffice", "store"]
ALIASES = {"bedroom": "bedroom", "suburb": "CALsuburb", "industrial": "industrial", "kitchen": "kitchen",
           "livingroom": "livingroom", "coast": "MITcoast", "forest": "MITforest", "highway": "MIThighway",
           "insidecity": "MITinsidecity", "mountain": "MITmountain", "opencountry": "MITopencountry",
           "street": "MITstreet", "tallbuilding": "MITtallbuilding", "office": "PARoffice", "store": "store"}
ALIASES.update({c.lower(): c for c in CLASSES})


class Fail(Exception):
    pass


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, expected: str | None) -> Path:
    if not expected:
        raise Fail(f"refusing to download {url} without --sha256 (no checksum of it is recorded here)")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(dest, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        raise Fail(f"cannot download {url} ({e.__class__.__name__}: {getattr(e, 'reason', e)}); download it "
                   "by hand and pass the file instead") from None
    got = sha256(dest)
    if got != expected.lower():
        raise Fail(f"sha256 mismatch for {url}: got {got}, expected {expected}")
    return dest


def extract(archive: Path, into: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if Path(name).is_absolute() or ".." in Path(name).parts:
                    raise Fail(f"unsafe path {name!r} in {archive}")
            z.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")
    else:
        raise Fail(f"{archive} is neither a zip nor a tar archive")


def class_dirs(d: Path) -> dict[str, Path]:
    """{canonical class: folder} if d holds the 15 class folders, else {}."""
    found = {ALIASES.get(p.name.lower()): p for p in d.iterdir() if p.is_dir()}
    found.pop(None, None)
    return found if len(found) == 15 else {}


def find_layout(top: Path) -> tuple[str, dict]:
    for d in [top, *sorted(p for p in top.rglob("*") if p.is_dir())]:
        if (d / "train").is_dir() and (d / "test").is_dir():
            tr, te = class_dirs(d / "train"), class_dirs(d / "test")
            if tr and te:
                return "train/test", {"train": tr, "test": te}
        flat = class_dirs(d)
        if flat:
            return "flat", {"": flat}
    raise Fail(f"no 15-Scene class folders (flat or train/test) found in the archive; expected e.g. "
               f"scene_categories/<class>/*.jpg with classes {', '.join(CLASSES)}")


def install(archive: Path, out: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        extract(archive, Path(tmp))
        layout, parts = find_layout(Path(tmp))
        if out.exists() and any(out.iterdir()):
            raise Fail(f"{out} exists and is not empty")
        n = 0
        for split, dirs in parts.items():
            for cls, src in dirs.items():
                dst = out / split / cls
                dst.mkdir(parents=True, exist_ok=True)
                for f in sorted(src.iterdir()):
                    if f.is_file() and f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                        shutil.copy2(f, dst / f.name)
                        n += 1
    return f"installed 15-Scene ({layout} layout, {n} images) in {out}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", default=ORIGINAL_URL, help="archive file or http(s) URL")
    ap.add_argument("--out", type=Path, default=Path("data/scene15"))
    ap.add_argument("--sha256", help="expected sha256 of the archive (required for downloads; checked for files)")
    args = ap.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.source.startswith(("http://", "https://")):
                archive = download(args.source, Path(tmp) / "scene15.archive", args.sha256)
            else:
                archive = Path(args.source)
                if not archive.is_file():
                    raise Fail(f"{archive} not found")
                if args.sha256 and sha256(archive) != args.sha256.lower():
                    raise Fail(f"sha256 mismatch for {archive}")
            print(install(archive, args.out))
    except Fail as e:
        print(f"get_scene15: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
