"""Render COCO 2017's instances once into VOC-class masks (for `dataset=coco`).

    seg-prepare-coco --coco-root data/coco

From a checkout: `python tools/prepare_coco.py ...`, the same. Writes
<root>/voc_masks/<split>/<image stem>.png (palette PNGs, classes as in seg/data/coco.py) for every
image, then <root>/voc_masks/<split>.txt ("<stem> <selected area>" per image, which the dataset uses
for the 1000-pixel training filter). Several processes render; existing masks are kept, so an
interrupted run resumes, and the list is written last, so the dataset only uses finished splits.

Every selected annotation is checked before anything is rendered; a bad one stops the run with one
line naming the annotation, the image and the file (`--skip-bad` leaves such images out instead).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import nullcontext
from multiprocessing import Pool
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from seg.cli import environment_error, one_line_errors
from seg.data.base import DatasetError, require_path
from seg.data.coco import (
    PREPARED_DIR,
    annotation_file,
    index_annotations,
    load_annotations,
    render_mask_file,
    write_listing,
)


def prepare_split(root: Path, split: str, workers: int, skip_bad: bool = False) -> int:
    """Render the masks of one split and write its list; return the number of images."""
    require_path(root / split, "COCO image folder")
    path = annotation_file(root, split)
    images = index_annotations(load_annotations(path), path, skip_bad=skip_bad)
    out = root / PREPARED_DIR / split
    out.mkdir(parents=True, exist_ok=True)
    done = {p.name for p in out.glob("*.png")}
    jobs = [
        (out / f"{img.stem}.png", img.height, img.width, img.annotations, f"image {img.id} ({img.file_name}) of {path}")
        for img in images
        if f"{img.stem}.png" not in done
    ]
    print(f"{split}: {len(images)} images, {len(images) - len(jobs)} masks present, rendering {len(jobs)}")
    if jobs:
        with Pool(workers) if workers > 1 else nullcontext() as pool:
            results = pool.imap_unordered(render_mask_file, jobs, chunksize=32) if pool else map(render_mask_file, jobs)
            for _ in tqdm(results, total=len(jobs), desc=split):
                pass
    listing = root / PREPARED_DIR / f"{split}.txt"
    write_listing(listing, images)
    print(f"wrote {listing}")
    return len(images)


@one_line_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coco-root", required=True, type=Path, help="folder holding annotations/, train2017/, val2017/")
    ap.add_argument("--splits", nargs="+", default=["train2017", "val2017"])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes")
    ap.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out images with bad annotations (with a counted warning) instead of stopping",
    )
    args = ap.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        require_path(args.coco_root, "COCO root")
        for split in args.splits:
            prepare_split(args.coco_root, split, args.workers, args.skip_bad)
    except OSError as e:  # writing masks or the list: full disk and permissions are said by one_line_errors
        if environment_error(e) is None:
            raise DatasetError(f"{e.filename if e.filename is not None else args.coco_root}: {e.strerror or e}") from e
        raise
    return 0


def run() -> None:
    """`seg-prepare-coco`."""
    sys.exit(main())


if __name__ == "__main__":
    run()
