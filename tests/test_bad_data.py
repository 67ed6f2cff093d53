"""Bad input files end in one line naming the file (and the record) and what to do, never in a
traceback: split files, COCO annotation files and listings, samples that fail to load, in the main
process, in DataLoader workers and in the tools."""

from __future__ import annotations

import importlib.util
import json
import logging
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import exit_status
from data_samples import block_mask, random_image, write_voc
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from seg.config import CocoConfig, DatasetConfig
from seg.data import DatasetError, build_dataset
from seg.data.base import SegmentationDataset, read_split_file
from seg.data.coco import (
    PREPARED_DIR,
    decode_segmentation,
    load_annotations,
    read_listing,
    render_mask_file,
    rle_string_counts,
)
from seg.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
H, W = 20, 24
PERSON, CHAIR = 15, 9  # VOC classes of COCO categories 1 and 62
CLASSES = ["background", "thing"]


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- split files ---------------------------------------------------------------------------------


def _folder(root: Path, stems: list[str], split_text: bytes | None = None, h: int = 16, w: int = 16) -> Path:
    """A `dataset=folder` tree with images/ and masks/ (no split subfolders) and `train.txt`."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for k, s in enumerate(stems):
        Image.fromarray(random_image(h, w, k)).save(root / "images" / f"{s}.png")
        Image.fromarray((np.arange(h * w).reshape(h, w) % 2).astype(np.uint8)).save(root / "masks" / f"{s}.png")
    if split_text is not None:
        (root / "train.txt").write_bytes(split_text)
    return root


def _folder_cfg(root: Path, **kw) -> DatasetConfig:
    return DatasetConfig(name="folder", root=str(root), class_names=CLASSES, num_classes=2, **kw)


def test_split_file_not_utf8(tmp_path):
    _folder(tmp_path, ["a", "b"], "a\nb\nc\u00e9\n".encode("latin-1"))
    with pytest.raises(DatasetError) as e:
        build_dataset(_folder_cfg(tmp_path), "train")
    msg = _one_line(e)
    assert str(tmp_path / "train.txt") in msg and "line 3" in msg and "0xe9" in msg and "UTF-8" in msg


def test_split_file_binary_junk_and_utf16(tmp_path):
    split = tmp_path / "train.txt"
    split.write_bytes(b"a\n" + bytes(range(256)) * 4)
    with pytest.raises(DatasetError) as e:
        read_split_file(split)
    msg = _one_line(e)
    assert str(split) in msg and "NUL byte at line 2" in msg and "not a text file" in msg
    split.write_bytes("a\nb\n".encode("utf-16"))
    with pytest.raises(DatasetError, match=r"train\.txt is UTF-16.*UTF-8"):
        read_split_file(split)
    voc = write_voc(tmp_path / "voc", {"train": ["a"]})
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(DatasetError) as e:
        build_dataset(DatasetConfig(name="voc", root=str(tmp_path / "voc")), "train")
    assert "train.txt is not a text file" in _one_line(e)


def test_split_file_bom_spaces_and_pairs(tmp_path):
    _folder(tmp_path, ["a", "my photo", "b.v2"], "\ufeffa\r\nmy photo\n\nb.v2\n".encode("utf-8"))
    assert build_dataset(_folder_cfg(tmp_path), "train").names == ["a", "my photo", "b.v2"]
    split = tmp_path / "pairs.txt"
    split.write_text("/JPEGImages/x.jpg /SegmentationClassAug/x.png\nJPEGImages/y.jpg SegmentationClass/y.png\nz.jpg\n")
    assert read_split_file(split) == ["x", "y", "z"]
    folder = tmp_path / "dir"
    folder.mkdir()
    with pytest.raises(DatasetError) as e:
        read_split_file(folder)
    assert str(folder) in _one_line(e)


# --- COCO annotation files -----------------------------------------------------------------------


def _box(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _image(i: int, **kw) -> dict:
    return {"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W, **kw}


def _write_coco(
    root: Path,
    anns: list[dict],
    images: list[dict] | None = None,
    split: str = "val2017",
    text: str | bytes | None = None,
) -> Path:
    images = [_image(1)] if images is None else images
    for k, a in enumerate(anns):
        a.setdefault("id", 100 + k)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"instances_{split}.json"
    if text is None:
        text = json.dumps({"images": images, "annotations": anns, "categories": []})
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    (root / split).mkdir(exist_ok=True)
    for info in images:
        if isinstance(info.get("file_name"), str):
            Image.fromarray(random_image(H, W, 1)).save(root / split / info["file_name"])
    return path


def _coco_cfg(root: Path, **kw) -> DatasetConfig:
    return DatasetConfig(name="coco", root=str(root), train_split="train2017", val_split="val2017", **kw)


def _person(segmentation, **kw) -> dict:
    return {"image_id": 1, "category_id": 1, "segmentation": segmentation, "area": 100, "iscrowd": 0, **kw}


def test_short_polygon_part_is_left_out_with_a_warning(tmp_path, caplog):
    good = _box(2, 2, 12, 12)
    _write_coco(tmp_path, [_person([[5, 5, 6, 6], good, [1, 1]])])
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(_coco_cfg(tmp_path), "val")
    assert "left out 2 polygon parts" in caplog.text and "annotation 100 of image 1 (000000000001.jpg)" in caplog.text
    mask = ds[0][1]
    expected = decode_segmentation([good], H, W).astype(bool)
    assert (mask[expected] == PERSON).all() and (mask[~expected] == 0).all()


@pytest.mark.parametrize(
    "segmentation, says",
    [
        ([[1, 2, 3, 4]], "2 point(s) (4 numbers), fewer than 3"),
        ([[1, 2]], "1 point(s)"),
        ([], "empty list of polygons"),
        ([[1, 2, 3, 4, 5]], "2 point(s)"),
        ([[1, 2, 3, 4, 5, 6, 7]], "odd count of coordinates"),
        ([[1, 2, 1e12, 4, 5, 6]], "far outside"),  # pycocotools would allocate gigabytes / hang
        ([["1", "2", "3", "4", "5", "6"]], "something other than numbers"),
        ({"counts": [5, 1000], "size": [H, W]}, f"cover 1005 pixels, the {W}x{H} image has {H * W}"),
        ({"counts": [5, -5, 480], "size": [H, W]}, "negative run"),
        ({"counts": "0", "size": [H, W]}, "pixels"),  # pycocotools decodes it from garbage memory
        ({"counts": "\x7f\x7f", "size": [H, W]}, "not a valid RLE character"),
        ({"counts": [H * W]}, "has no 'size'"),
        ({"size": [H, W]}, "has no 'counts'"),
        ("polygon", "'segmentation' is a str"),
    ],
)
def test_bad_segmentation_is_one_line(tmp_path, segmentation, says):
    path = _write_coco(tmp_path, [_person(segmentation, id=7)])
    with pytest.raises(DatasetError) as e:
        build_dataset(_coco_cfg(tmp_path), "val")
    msg = _one_line(e)
    assert says in msg and "annotation 7 of image 1 (000000000001.jpg)" in msg and str(path) in msg


def test_nan_coordinates_do_not_hang(tmp_path):
    # json writes NaN; pycocotools loops forever on it.
    _write_coco(tmp_path, [_person([[1, 2, float("nan"), 4, 5, 6]])])
    with pytest.raises(DatasetError, match="NaN, infinite or huge"):
        build_dataset(_coco_cfg(tmp_path), "val")


def test_rle_size_differs_from_image(tmp_path):
    rle = mask_utils.encode(np.asfortranarray(np.ones((H + 1, W), np.uint8)))
    rle = {"counts": rle["counts"].decode(), "size": [H + 1, W]}
    path = _write_coco(tmp_path, [_person(rle, id=42)])
    with pytest.raises(DatasetError) as e:
        build_dataset(_coco_cfg(tmp_path), "val")
    msg = _one_line(e)
    assert "annotation 42 of image 1" in msg and f"[{H + 1}, {W}]" in msg and f"[{H}, {W}]" in msg
    assert str(path) in msg
    assert rle_string_counts(rle["counts"]) == [0, (H + 1) * W]


def test_missing_area_is_computed(tmp_path, caplog):
    # 10x10 and 5x5 person boxes without `area`: image 1 covers 125 pixels, image 2 only 25.
    anns = [
        {"image_id": 1, "category_id": 1, "segmentation": [_box(0, 0, 10, 10)]},
        {"image_id": 1, "category_id": 62, "segmentation": [_box(12, 12, 17, 17)]},
        {"image_id": 2, "category_id": 62, "segmentation": [_box(0, 0, 5, 5)]},
    ]
    _write_coco(tmp_path, anns, [_image(1), _image(2)], split="train2017")
    with caplog.at_level(logging.INFO):
        ds = build_dataset(_coco_cfg(tmp_path, coco=CocoConfig(min_pixels=100)), "train")
    assert ds.names == ["000000000001"] and "computed 'area' of 3 annotations" in caplog.text
    assert (ds[0][1] == CHAIR).sum() == 25 and (ds[0][1] == PERSON).sum() == 100


def test_bad_area_is_reported(tmp_path):
    _write_coco(tmp_path, [_person([_box(0, 0, 4, 4)], area="big", id=3)])
    with pytest.raises(DatasetError) as e:
        build_dataset(_coco_cfg(tmp_path), "val")
    assert "annotation 3 of image 1" in _one_line(e) and "'area' 'big'" in str(e.value)


@pytest.mark.parametrize("key", ["segmentation", "image_id", "category_id"])
def test_annotation_without_key(tmp_path, key):
    ann = _person([_box(0, 0, 4, 4)], id=9)
    del ann[key]
    path = _write_coco(tmp_path, [ann])
    with pytest.raises(DatasetError) as e:
        build_dataset(_coco_cfg(tmp_path), "val")
    msg = _one_line(e)
    assert "annotation 9" in msg and f"no '{key}'" in msg and str(path) in msg


@pytest.mark.parametrize("key", ["height", "width", "file_name", "id"])
def test_image_without_key(tmp_path, key):
    info = _image(5)
    del info[key]
    _write_coco(tmp_path, [], [_image(1), info])
    with pytest.raises(DatasetError) as e:
        build_dataset(_coco_cfg(tmp_path), "val")
    msg = _one_line(e)
    assert f"no '{key}'" in msg and ("image 5" in msg if key != "id" else "image #1" in msg)


def test_bad_image_records(tmp_path):
    _write_coco(tmp_path, [], [_image(1), _image(2, height=0)])
    with pytest.raises(DatasetError, match=r"image 2 \(000000000002\.jpg\) has 'height' 0"):
        build_dataset(_coco_cfg(tmp_path), "val")
    _write_coco(tmp_path, [], [_image(1), {**_image(2), "file_name": "000000000001.png"}])
    with pytest.raises(DatasetError, match=r"file stem '000000000001' of image 1"):
        build_dataset(_coco_cfg(tmp_path), "val")


@pytest.mark.parametrize(
    "text, says",
    [
        ('{"images": [], "annotations": [', "not valid JSON: Expecting value at line 1 column 32"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "not UTF-8 JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "hold a JSON list"),
        ('{"images": []}', "have no 'annotations'"),
        ('{"images": {}, "annotations": []}', "have a dict as 'images'"),
        ("[" * 100000 + "]" * 100000, "not valid JSON"),
    ],
)
def test_invalid_json_is_one_line(tmp_path, text, says):
    path = _write_coco(tmp_path, [], text=text)
    with pytest.raises(DatasetError) as e:
        build_dataset(_coco_cfg(tmp_path), "val")
    msg = _one_line(e)
    assert says in msg and str(path) in msg


def test_skip_bad_leaves_out_images_with_bad_annotations(tmp_path, caplog):
    anns = [_person([[1, 2, 3, 4]], id=5), {**_person([_box(0, 0, 4, 4)]), "image_id": 2}]
    _write_coco(tmp_path, anns, [_image(1), _image(2), {"id": 3, "file_name": "x.jpg"}])
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(_coco_cfg(tmp_path, skip_bad=True), "val")
    assert ds.names == ["000000000002"]
    assert "skipped 2 images with bad records or annotations" in caplog.text
    assert "image 3 has no 'height'" in caplog.text


def test_file_names_with_spaces_round_trip(tmp_path, caplog):
    images = [{**_image(1), "file_name": "my photo 1.png"}, _image(2)]
    anns = [_person([_box(0, 0, 12, 12)], area=144), {**_person([_box(0, 0, 9, 9)], area=81), "image_id": 2}]
    _write_coco(tmp_path, anns, images, split="train2017")
    tool = _tool("prepare_coco")
    assert exit_status(tool.main, ["--coco-root", str(tmp_path), "--splits", "train2017", "--workers", "1"]) == 0
    listing = tmp_path / PREPARED_DIR / "train2017.txt"
    assert read_listing(listing) == [("my photo 1", 144.0), ("000000000002", 81.0)]
    ds = build_dataset(_coco_cfg(tmp_path, coco=CocoConfig(min_pixels=100)), "train")
    assert ds.prepared and ds.names == ["my photo 1"]
    assert ds.image_paths[0].name == "my photo 1.png" and (ds[0][1] == PERSON).sum() == 144
    # A listing written before (stems without spaces) still reads; a damaged one is one line.
    listing.write_text("000000000002 81.0\n\nmy photo 1 144.0\n")
    assert build_dataset(_coco_cfg(tmp_path, coco=CocoConfig(min_pixels=100)), "train").names == ["my photo 1"]
    listing.write_text("000000000002 81.0\nmy photo 1 lots\n")
    with pytest.raises(DatasetError) as e:
        build_dataset(_coco_cfg(tmp_path), "train")
    assert str(listing) in _one_line(e) and "line 2" in str(e.value) and "prepare_coco" in str(e.value)
    listing.write_bytes(b"000000000002 81.0\n\xff\xfe\n")
    with pytest.raises(DatasetError, match=r"not UTF-8 text: byte 0xff at line 2"):
        build_dataset(_coco_cfg(tmp_path), "train")


def test_prepare_coco_reports_bad_annotation(tmp_path, capsys):
    path = _write_coco(tmp_path, [_person([[1, 2, 3, 4]], id=11)])
    tool = _tool("prepare_coco")
    assert exit_status(tool.main, ["--coco-root", str(tmp_path), "--splits", "val2017", "--workers", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "annotation 11 of image 1" in err[0]
    assert str(path) in err[0] and not (tmp_path / PREPARED_DIR / "val2017.txt").exists()
    # --skip-bad: the image is left out of the list.
    assert exit_status(tool.main, ["--coco-root", str(tmp_path), "--splits", "val2017", "--skip-bad"]) == 0
    assert read_listing(tmp_path / PREPARED_DIR / "val2017.txt") == []


def test_prepare_coco_subprocess_one_line(tmp_path):
    _write_coco(tmp_path, [_person([_box(0, 0, 4, 4)]), _person("nonsense", id=12)])
    proc = subprocess.run(
        [
            sys.executable,
            "tools/prepare_coco.py",
            "--coco-root",
            str(tmp_path),
            "--workers",
            "2",
            "--splits",
            "val2017",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "annotation 12 of image 1" in last and "instances_val2017.json" in last


def test_render_mask_file_names_the_image(tmp_path, monkeypatch):
    import seg.data.coco as coco

    def boom(*_):
        raise IndexError("index 7 is out of bounds\nfor axis 0")

    monkeypatch.setattr(coco, "render_mask", boom)
    with pytest.raises(DatasetError) as e:
        render_mask_file((tmp_path / "m.png", H, W, [], "image 3 (x.jpg)"))
    assert "image 3 (x.jpg)" in _one_line(e) and "IndexError: index 7 is out of bounds for axis 0" in str(e.value)


def test_load_annotations_reads_bom(tmp_path):
    path = _write_coco(tmp_path, [], text="\ufeff" + json.dumps({"images": [], "annotations": []}))
    assert load_annotations(path) == {"images": [], "annotations": []}


# --- samples that fail to load -------------------------------------------------------------------


class _Failing(SegmentationDataset):
    """Two samples; reading sample 0's mask fails the way a third-party reader does."""

    def __init__(self, root: Path, error: BaseException, **kw) -> None:
        _folder(root, ["a", "b"])
        super().__init__(
            ["a", "b"],
            [root / "images" / f"{s}.png" for s in "ab"],
            [root / "masks" / f"{s}.png" for s in "ab"],
            CLASSES,
            **kw,
        )
        self.error = error

    def read_mask(self, index: int) -> np.ndarray:
        if index == 0:
            raise self.error
        return super().read_mask(index)


@pytest.mark.parametrize(
    "error",
    [
        struct.error("unpack requires a buffer of 4 bytes"),
        SyntaxError("broken PNG file\n  (chunk)"),
        KeyError("tRNS"),
        ValueError(""),
    ],
)
def test_any_load_error_becomes_one_line(tmp_path, error):
    ds = _Failing(tmp_path, error)
    with pytest.raises(DatasetError) as e:
        ds[0]
    msg = _one_line(e)
    assert "sample 'a'" in msg and e.value.__cause__ is error
    assert str(tmp_path / "images" / "a.png") in msg and str(tmp_path / "masks" / "a.png") in msg
    assert type(error).__name__ in msg
    if isinstance(error, struct.error):
        assert "struct.error: unpack" in msg  # the module says which "error"


def test_memory_error_is_not_disguised(tmp_path):
    with pytest.raises(MemoryError):
        _Failing(tmp_path, MemoryError())[0]


def test_skip_bad_skips_any_load_error(tmp_path, caplog):
    ds = _Failing(tmp_path, struct.error("bad"), skip_bad=True)
    with caplog.at_level(logging.WARNING):
        image, mask = ds[0]
    assert image.shape == (16, 16, 3) and ds.num_skipped == 1 and "skipped bad sample a" in caplog.text


def test_transform_error_names_the_sample(tmp_path):
    def transform(image, mask):
        raise RuntimeError("OpenCV(4.10) error: (-215:Assertion failed)\n!ssize.empty() in function 'resize'")

    with pytest.raises(DatasetError) as e:
        _Failing(tmp_path, KeyError("x"), transform=transform)[1]
    msg = _one_line(e)
    assert "cannot transform sample 'b'" in msg and "16x16" in msg and "!ssize.empty()" in msg

    def misconfigured(image, mask):
        raise ConfigError("train.crop_size=0 must be positive")

    with pytest.raises(ConfigError, match=r"^train\.crop_size=0 must be positive$"):  # not the sample's fault
        _Failing(tmp_path, KeyError("x"), transform=misconfigured)[1]


def test_worker_error_is_one_line(tmp_path):
    loader = DataLoader(_Failing(tmp_path, struct.error("unpack requires a buffer")), batch_size=1, num_workers=1)
    with pytest.raises(DatasetError) as e:
        next(iter(loader))
    msg = _one_line(e)
    assert msg.endswith("(in DataLoader worker process 0)") and "struct.error" in msg
    assert "sample 'a'" in msg and "unpack requires a buffer" in msg and "Traceback" not in msg


@pytest.mark.slow
def test_unreadable_image_in_workers_of_train_py(tmp_path):
    root = tmp_path / "data"
    for split, stems in {"train": ["a", "b"], "val": ["c"]}.items():
        for k, s in enumerate(stems):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(random_image(40, 40, k)).save(root / "images" / split / f"{s}.jpg")
            Image.fromarray(block_mask(40, 40, 1)).save(root / "masks" / split / f"{s}.png")
    bad = root / "images" / "train" / "b.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "tools/train.py",
                "dataset=folder",
                "model.backbone.pretrained=null",
                f"dataset.root={root}",
                "dataset.num_workers=2",
                "train.max_iters=2",
                "train.warmup_iters=0",
                "train.batch_size=2",
                "train.crop_size=32",
                "train.eval_every=0",
                "train.checkpoint_every=0",
                f"hydra.run.dir={tmp_path / 'run'}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"tools/train.py did not exit after a worker's error; its stderr ended: {err[-300:]!r}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(bad) in last and "DataLoader worker process" in last
