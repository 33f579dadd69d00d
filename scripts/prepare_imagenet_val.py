"""Sort a flat ILSVRC2012 val folder (ILSVRC2012_val_00000001.JPEG, ...) into <wnid>/ folders.

    python scripts/prepare_imagenet_val.py /data/imagenet/val --labels LABELS [--symlink] [--dry-run]

LABELS may be any of:
* ``val_labels.txt``: lines ``<filename> <wnid>``;
* ``LOC_val_solution.csv`` (Kaggle): ``ImageId,PredictionString`` where the first token is the wnid;
* the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one ILSVRC2012_ID 1..1000 per line, for
  images 1..50000 in order) together with ``--meta devkit/data/meta.mat``, which maps ILSVRC2012_ID -> wnid
  (the devkit's ID order is *not* the sorted-wnid class order; needs scipy to read the .mat file).
Files are moved (default) or symlinked to their originals (``--symlink``).
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from pathlib import Path


def read_labels(path: Path, meta: Path | None) -> dict[str, str]:
    """{file stem: wnid}."""
    text = path.read_text().splitlines()
    if path.suffix == ".csv":
        rows = csv.DictReader(text)
        return {r["ImageId"]: r["PredictionString"].split()[0] for r in rows}
    first = text[0].split() if text else []
    if len(first) == 1 and first[0].isdigit():          # devkit ground truth: IDs in image order
        if meta is None:
            raise SystemExit("prepare_imagenet_val: devkit ground truth needs --meta devkit/data/meta.mat")
        id_to_wnid = devkit_ids(meta)
        return {f"ILSVRC2012_val_{i:08d}": id_to_wnid[int(line)] for i, line in enumerate(text, 1) if line.strip()}
    out = {}
    for line in text:
        if line.strip():
            name, wnid = line.split()[:2]
            out[Path(name).stem] = wnid
    return out


def devkit_ids(meta: Path) -> dict[int, str]:
    from scipy.io import loadmat  # only needed for this format
    synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
    return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("val_dir", type=Path)
    ap.add_argument("--labels", type=Path, required=True)
    ap.add_argument("--meta", type=Path, help="devkit meta.mat (for ILSVRC2012_validation_ground_truth.txt)")
    ap.add_argument("--symlink", action="store_true", help="link instead of moving")
    ap.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    args = ap.parse_args(argv)
    if not args.val_dir.is_dir() or not args.labels.is_file():
        print(f"prepare_imagenet_val: {args.val_dir if not args.val_dir.is_dir() else args.labels} not found",
              file=sys.stderr)
        return 1
    labels = read_labels(args.labels, args.meta)
    files = sorted(p for p in args.val_dir.iterdir() if p.is_file() and p.suffix.upper() == ".JPEG")
    missing = [p.name for p in files if p.stem not in labels]
    if missing:
        print(f"prepare_imagenet_val: no label for {len(missing)} files (e.g. {missing[0]})", file=sys.stderr)
        return 1
    for p in files:
        dst = args.val_dir / labels[p.stem] / p.name
        if args.dry_run:
            print(f"{'link' if args.symlink else 'move'} {p} -> {dst}")
            continue
        dst.parent.mkdir(exist_ok=True)
        if args.symlink:
            os.symlink(p.resolve(), dst)
        else:
            shutil.move(str(p), dst)
    print(f"{'would sort' if args.dry_run else 'sorted'} {len(files)} images into "
          f"{len({labels[p.stem] for p in files})} wnid folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
