"""Render COCO 2017's instances once into VOC-class masks (for `dataset=coco`).

    python tools/prepare_coco.py --coco-root data/coco

Writes <root>/voc_masks/<split>/<image stem>.png (palette PNGs, classes as in seg/data/coco.py) for
every image, then <root>/voc_masks/<split>.txt ("<stem> <selected area>" per image, which the dataset
uses for the 1000-pixel training filter). Several processes render; existing masks are kept, so an
interrupted run resumes, and the list is written last, so the dataset only uses finished splits.

Every selected annotation is checked before anything is rendered; a bad one stops the run with one
line naming the annotation, the image and the file (`--skip-bad` leaves such images out instead).

The same as `seg-prepare-coco ...` once the package is installed (`pip install .`); the code is in
seg/commands/prepare_coco.py.
"""

from seg.commands.prepare_coco import main, run  # noqa: F401  (main: for tests that load this file)

if __name__ == "__main__":
    run()
