"""Build VOC 2012's 10,582-image `train_aug` split with SBD's masks (for `dataset=voc_aug`).

    python tools/prepare_voc.py --voc-root data/voc --sbd-root data/sbd

Converts SBD's `cls/<id>.mat` files into palette PNGs in VOC2012/SegmentationClassAug/ (only for
train_aug images that VOC itself does not annotate), writes ImageSets/Segmentation/train_aug.txt and
checks the counts: 1,464 train / 1,449 val / 10,582 train_aug. Already converted masks are kept, so an
interrupted run resumes where it stopped. See data/README.md for the downloads and the layout.

The same as `seg-prepare-voc ...` once the package is installed (`pip install .`); the code is in
seg/commands/prepare_voc.py.
"""

from seg.commands.prepare_voc import main, run  # noqa: F401  (main: for tests that load this file)

if __name__ == "__main__":
    run()
