"""Build VOC 2012's 10,582-image `train_aug` split with SBD's masks (for `dataset=voc_aug`).

    seg-prepare-voc --voc-root data/voc --sbd-root data/sbd

From a checkout: `python tools/prepare_voc.py ...`, the same. Converts SBD's `cls/<id>.mat` files
into palette PNGs in VOC2012/SegmentationClassAug/ (only for train_aug images that VOC itself does
not annotate), writes ImageSets/Segmentation/train_aug.txt and checks the counts: 1,464 train /
1,449 val / 10,582 train_aug. Already converted masks are kept, so an interrupted run resumes where
it stopped. See data/README.md for the downloads and the layout.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from multiprocessing import Pool
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from seg.cli import environment_error, one_line_errors
from seg.data.base import DatasetError, read_split_file
from seg.data.voc import (
    EXPECTED_COUNTS,
    convert_sbd_mask,
    find_sbd_root,
    find_voc_root,
    split_file,
    train_aug_ids,
)


def _sbd_ids(sbd: Path) -> list[str]:
    lists = [sbd / "train.txt", sbd / "val.txt"]
    if all(p.is_file() for p in lists):
        return [n for p in lists for n in read_split_file(p)]
    return sorted(p.stem for p in (sbd / "cls").glob("*.mat"))


def prepare(voc_root: Path, sbd_root: Path, workers: int) -> dict[str, int]:
    """Convert the missing masks and write train_aug.txt; return the split counts."""
    voc = find_voc_root(voc_root)
    sbd = find_sbd_root(sbd_root)
    train = read_split_file(split_file(voc, "train"))
    val = read_split_file(split_file(voc, "val"))
    ids = train_aug_ids(train, val, _sbd_ids(sbd))

    voc_masks = {p.stem for p in (voc / "SegmentationClass").glob("*.png")}
    out = voc / "SegmentationClassAug"
    done = {p.stem for p in out.glob("*.png")} if out.is_dir() else set()
    jobs = [(sbd / "cls" / f"{i}.mat", out / f"{i}.png") for i in ids if i not in voc_masks and i not in done]
    missing = [m for m, _ in jobs if not m.is_file()]
    if missing:
        raise DatasetError(f"SBD mask not found: {missing[0]} ({len(missing)} missing, see data/README.md)")
    no_image = [i for i in ids if not (voc / "JPEGImages" / f"{i}.jpg").is_file()]
    if no_image:
        raise DatasetError(
            f"image not found: {voc / 'JPEGImages' / (no_image[0] + '.jpg')} "
            f"({len(no_image)} missing; SBD's images are all in VOC 2012's JPEGImages)"
        )

    print(f"{len(ids)} train_aug images: {len(ids) - len(jobs)} masks present, converting {len(jobs)}")
    if jobs:
        out.mkdir(exist_ok=True)
        with Pool(workers) if workers > 1 else nullcontext() as pool:
            results = pool.imap_unordered(convert_sbd_mask, jobs, chunksize=16) if pool else map(convert_sbd_mask, jobs)
            for _ in tqdm(results, total=len(jobs), desc="SBD .mat -> png"):
                pass
    listing = split_file(voc, "train_aug")
    tmp = listing.with_suffix(".txt.tmp")
    tmp.write_text("".join(i + "\n" for i in ids), encoding="utf-8")
    os.replace(tmp, listing)
    print(f"wrote {listing}")
    return {"train": len(train), "val": len(val), "train_aug": len(ids)}


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--voc-root", required=True, type=Path, help="folder holding VOCdevkit/ (or VOC2012 itself)")
    ap.add_argument("--sbd-root", required=True, type=Path, help="SBD's benchmark_RELEASE/ (or its dataset/)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes converting .mat files")
    ap.add_argument("--skip-count-check", action="store_true", help="accept split sizes other than the official")
    args = ap.parse_args(argv)
    try:
        counts = prepare(args.voc_root, args.sbd_root, args.workers)
    except OSError as e:  # writing masks or the list: full disk and permissions are said by one_line_errors
        if environment_error(e) is None:
            raise DatasetError(f"{e.filename if e.filename is not None else args.voc_root}: {e.strerror or e}") from e
        raise
    ok = True
    for split, expected in EXPECTED_COUNTS.items():
        good = counts[split] == expected
        ok &= good
        print(f"{split:>10}: {counts[split]:>6} images (expected {expected}){'' if good else '  <-- MISMATCH'}")
    if not ok and not args.skip_count_check:
        raise DatasetError(
            "split sizes differ from VOC 2012 + SBD's; is a download incomplete? (--skip-count-check accepts them)"
        )
    return 0


def run() -> None:
    """`seg-prepare-voc`."""
    sys.exit(main())


if __name__ == "__main__":
    run()
