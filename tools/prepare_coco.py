"""Render COCO 2017's instances once into VOC-class masks (for `dataset=coco`).

    python tools/prepare_coco.py --coco-root data/coco

Writes <root>/voc_masks/<split>/<image stem>.png (palette PNGs, classes as in seg/data/coco.py) for
every image, then <root>/voc_masks/<split>.txt ("<stem> <selected area>" per image, which the dataset
uses for the 1000-pixel training filter). Several processes render; existing masks are kept, so an
interrupted run resumes, and the list is written last, so the dataset only uses finished splits.
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

from seg.data.base import DatasetError, require_path
from seg.data.coco import (
    CATEGORY_TO_CLASS,
    PREPARED_DIR,
    annotation_file,
    load_annotations,
    render_mask_file,
    select_annotations,
)

def prepare_split(root: Path, split: str, workers: int) -> int:
    """Render the masks of one split and write its list; return the number of images."""
    require_path(root / split, "COCO image folder")
    data = load_annotations(annotation_file(root, split))
    by_image = select_annotations(data)
    out = root / PREPARED_DIR / split
    out.mkdir(parents=True, exist_ok=True)
    done = {p.name for p in out.glob("*.png")}
    lines, jobs = [], []
    for info in sorted(data["images"], key=lambda i: i["id"]):
        anns = by_image.get(info["id"], [])
        stem = Path(info["file_name"]).stem
        lines.append(f"{stem} {sum(a['area'] for a in anns):.1f}\n")
        if f"{stem}.png" not in done:
            segs = [(a["segmentation"], CATEGORY_TO_CLASS[a["category_id"]]) for a in anns]
            jobs.append((out / f"{stem}.png", info["height"], info["width"], segs))
    del data, by_image
    print(f"{split}: {len(lines)} images, {len(lines) - len(jobs)} masks present, rendering {len(jobs)}")
    if jobs:
        with Pool(workers) if workers > 1 else nullcontext() as pool:
            results = pool.imap_unordered(render_mask_file, jobs, chunksize=32) if pool else map(render_mask_file, jobs)
            for _ in tqdm(results, total=len(jobs), desc=split):
                pass
    listing = root / PREPARED_DIR / f"{split}.txt"
    tmp = listing.with_suffix(".txt.tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, listing)
    print(f"wrote {listing}")
    return len(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coco-root", required=True, type=Path, help="folder holding annotations/, train2017/, val2017/")
    ap.add_argument("--splits", nargs="+", default=["train2017", "val2017"])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes")
    args = ap.parse_args(argv)
    try:
        require_path(args.coco_root, "COCO root")
        for split in args.splits:
            prepare_split(args.coco_root, split, args.workers)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
