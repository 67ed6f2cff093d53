"""seg/images.py, the one image reader: each kind of file, and the same pixels for training
(the datasets), the official benchmark and predict."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

import seg.images as images
from seg.config import DatasetConfig
from seg.data import DatasetError, build_dataset
from seg.data.base import read_mask as dataset_read_mask
from seg.data.base import write_mask
from seg.data.transforms import build_eval_transform
from seg.images import ImageReadError, read_image, read_image_and_mask, read_image_stored, read_mask

H, W = 40, 56  # stored size of the test images (multiples of 8: clean JPEG blocks)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _scaled(values) -> np.ndarray:
    """16-bit values as 8 bits, scaled and rounded: round(v * 255 / 65535)."""
    return np.rint(np.asarray(values, np.float64) * 255 / 65535).astype(np.uint8)


def _classes() -> np.ndarray:
    """A stored-orientation mask with two blocks in an asymmetric place (any turn moves them)."""
    mask = np.zeros((H, W), np.uint8)
    mask[0:16, 0:24] = 1
    mask[24:40, 40:56] = 2
    return mask


def _painted(mask: np.ndarray) -> np.ndarray:
    """RGB uint8 whose red channel marks class 1 and green class 2 (JPEG-proof: 8-aligned blocks)."""
    rgb = np.full((*mask.shape, 3), 40, np.uint8)
    rgb[mask == 1, 0] = 230
    rgb[mask == 2, 1] = 230
    return rgb


def _aligned(image: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the painted classes of `image` (HxWx3) are where `mask` has them."""
    red, green = image[..., 0] > 135, image[..., 1] > 135  # white (transparent) is neither
    return np.array_equal(red & ~green, mask == 1) and np.array_equal(green & ~red, mask == 2)


def _write_kinds(folder: Path) -> dict[str, np.ndarray]:
    """One file of each kind, all H x W as stored and painted after `_classes()`; returns what
    `read_image` must give for each (exact, or for lossy JPEGs the decoded file through PIL)."""
    folder.mkdir(parents=True, exist_ok=True)
    mask = _classes()
    rgb = _painted(mask)
    expected: dict[str, np.ndarray] = {}

    Image.fromarray(rgb).save(folder / "plain.png")
    expected["plain.png"] = rgb

    Image.fromarray(rgb).save(folder / "rotated.jpg", exif=_exif(6), quality=95)
    with Image.open(folder / "rotated.jpg") as img:
        expected["rotated.jpg"] = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))

    Image.fromarray(rgb).save(folder / "rotated8.png", exif=_exif(8))  # EXIF in a PNG (eXIf chunk)
    expected["rotated8.png"] = np.rot90(rgb, 1)

    gray16 = rgb.max(axis=2).astype(np.uint16) * 257 + 100  # not a multiple of 257: truncation would show
    Image.fromarray(gray16).save(folder / "gray16.png")  # mode I;16
    assert Image.open(folder / "gray16.png").mode == "I;16"
    expected["gray16.png"] = np.repeat(_scaled(gray16)[..., None], 3, axis=2)

    rgb16 = rgb.astype(np.uint16) * 257 + 200
    cv2.imwrite(str(folder / "rgb16.png"), rgb16[..., ::-1])  # 16-bit RGB (cv2 writes BGR)
    expected["rgb16.png"] = _scaled(rgb16)

    pal = Image.fromarray(mask, "P")
    pal.putpalette([40, 40, 40, 230, 40, 40, 40, 230, 40] + [0] * 759)
    pal.save(folder / "palette.png")
    expected["palette.png"] = rgb

    rgba = np.dstack([rgb, np.full((H, W), 255, np.uint8)])
    rgba[H - 8 :, :8, 3] = 0  # a transparent corner (background class): white
    Image.fromarray(rgba).save(folder / "rgba.png")
    expected["rgba.png"] = rgb.copy()
    expected["rgba.png"][H - 8 :, :8] = 255

    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(folder / "cmyk.jpg", quality=95)
    with Image.open(folder / "cmyk.jpg") as img:
        assert img.mode == "CMYK"
        expected["cmyk.jpg"] = np.asarray(img.convert("RGB"))

    gray = rgb.max(axis=2)  # classes 1 and 2 both bright: gray keeps only "painted or not"
    Image.fromarray(gray).save(folder / "gray.png")
    expected["gray.png"] = np.repeat(gray[..., None], 3, axis=2)
    return expected


def test_each_kind_of_file(tmp_path):
    expected = _write_kinds(tmp_path)
    for name, want in expected.items():
        got = read_image(tmp_path / name)
        assert got.dtype == np.uint8 and got.flags.c_contiguous and got.shape == want.shape, name
        assert np.array_equal(got, want), name
    assert read_image(tmp_path / "rotated.jpg").shape == (W, H, 3)  # orientation 6: shown W x H
    # read_image_stored: the stored pixels, and the orientation to apply.
    stored, orientation = read_image_stored(tmp_path / "rotated8.png")
    assert orientation == 8 and np.array_equal(stored, expected["plain.png"])


def test_exif_orientations_as_pil_shows_them(tmp_path, monkeypatch):
    rgb = np.random.default_rng(0).integers(0, 256, (13, 21, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.png"  # lossless: exact comparison
        Image.fromarray(rgb).save(path, exif=_exif(orientation))
        with Image.open(path) as img:
            want = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        assert np.array_equal(read_image(path), want), orientation
        mask = rgb[..., 0]  # masks turn with the same table
        assert np.array_equal(images.orient(mask, orientation), want[..., 0]), orientation
    # The large-JPEG path (OpenCV) turns the same way.
    path = tmp_path / "o6.jpg"
    Image.fromarray(rgb).save(path, exif=_exif(6), quality=95)
    through_pil = read_image(path)
    monkeypatch.setattr(images, "_DIRECT_JPEG_PIXELS", 0)
    assert np.array_equal(read_image(path), through_pil)
    # An invalid orientation value is ignored.
    Image.fromarray(rgb).save(tmp_path / "bad.png", exif=_exif(42))
    assert np.array_equal(read_image(tmp_path / "bad.png"), rgb)


def test_sixteen_bits_scale_not_truncate(tmp_path):
    values = np.array([[0, 255, 256, 383, 511, 32896, 65000, 65535]], np.uint16)
    want = _scaled(values)
    assert want.tolist() == [[0, 1, 1, 1, 2, 128, 253, 255]]
    Image.fromarray(values).save(tmp_path / "g.png")  # I;16 PNG
    Image.fromarray(values).save(tmp_path / "g.tif")  # I;16 TIFF
    for name in ("g.png", "g.tif"):
        got = read_image(tmp_path / name)
        assert np.array_equal(got, np.repeat(want[..., None], 3, axis=2)), name
    colour = np.stack([values, values[:, ::-1], np.full_like(values, 511)], axis=2)
    for name in ("c.png", "c.tif"):  # 16-bit RGB: PIL alone would keep the high byte (511 -> 1)
        cv2.imwrite(str(tmp_path / name), colour[..., ::-1])
        assert np.array_equal(read_image(tmp_path / name), _scaled(colour)), name
    # 16-bit RGBA: over white, at 16-bit precision.
    alpha = np.array([[65535, 0, 32768, 65535, 0, 65535, 16384, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([colour, alpha])[..., [2, 1, 0, 3]])
    a = alpha[..., None] / 65535
    want = np.rint((colour / 65535 * a + (1 - a)) * 255).astype(np.uint8)
    assert np.array_equal(read_image(tmp_path / "a.png"), want)


def test_alpha_palette_gray_and_bilevel(tmp_path):
    rgba = np.array([[[200, 100, 0, 255], [200, 100, 0, 0], [200, 100, 0, 128]]], np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    got = read_image(tmp_path / "rgba.png").astype(int)
    assert got[0, 0].tolist() == [200, 100, 0] and got[0, 1].tolist() == [255, 255, 255]
    over_white = 255 + (rgba[0, 2, :3].astype(float) - 255) * 128 / 255
    assert np.abs(got[0, 2] - over_white).max() <= 1
    Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png")[0, :2].tolist() == [[200] * 3, [255] * 3]
    pal = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    pal.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 759)
    pal.save(tmp_path / "p.png", transparency=1)  # palette index 1 transparent
    assert read_image(tmp_path / "p.png").tolist() == [[[10, 20, 30], [255, 255, 255], [70, 80, 90]]]
    Image.fromarray(np.array([[0, 10, 20]], np.uint8)).save(tmp_path / "lt.png", transparency=0)
    assert read_image(tmp_path / "lt.png")[0, :, 0].tolist() == [255, 10, 20]
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "bits.png")  # mode 1
    assert read_image(tmp_path / "bits.png").tolist() == [[[255] * 3, [0] * 3]]


def test_the_same_in_strips(tmp_path, monkeypatch):
    expected = _write_kinds(tmp_path)
    whole = {name: read_image(tmp_path / name) for name in expected}
    monkeypatch.setattr(images, "_STRIP_PIXELS", 7)  # one row a strip
    for name in expected:
        assert np.array_equal(read_image(tmp_path / name), whole[name]), name


def test_unreadable_files_name_the_file(tmp_path):
    Image.fromarray(_painted(_classes())).save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(_painted(_classes())).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((H, W, 3), 511, np.uint16))
    data = (tmp_path / "deep.png").read_bytes()
    (tmp_path / "cut16.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("not an image")
    for name in ("cut.jpg", "cut.png", "cut16.png", "notes.txt", "missing.png"):
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)
    from seg.predict import ImageReadError as predict_error

    assert predict_error is ImageReadError  # still importable from its old place


def test_masks_are_class_ids(tmp_path):
    ids = np.array([[0, 1, 2, 255]], np.uint8)
    write_mask(tmp_path / "p.png", ids)  # palette PNG: indices, never colours
    Image.fromarray(ids).save(tmp_path / "l.png")
    Image.fromarray(ids.astype(np.uint16)).save(tmp_path / "i16.png")
    for name in ("p.png", "l.png", "i16.png"):
        got = read_mask(tmp_path / name)
        assert got.dtype == np.uint8 and np.array_equal(got, ids), name
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match=r"big\.png has values outside \[0, 255\]: \[300\]"):
        read_mask(tmp_path / "big.png")
    Image.fromarray(_painted(_classes())).save(tmp_path / "rgb.png")
    with pytest.raises(ImageReadError, match=r"rgb\.png has mode RGB"):
        read_mask(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match=r"rgb\.png has mode RGB.*data/README\.md"):
        dataset_read_mask(tmp_path / "rgb.png")  # the datasets' errors stay DatasetError


def _folder_dataset(root: Path) -> dict[str, np.ndarray]:
    """dataset=folder, split "val": every kind of image, each with the stored-orientation mask."""
    expected = _write_kinds(root / "images" / "val")
    (root / "masks" / "val").mkdir(parents=True)
    for name in expected:
        write_mask(root / "masks" / "val" / f"{Path(name).stem}.png", _classes())
    return expected


def _folder_cfg(root: Path, **kw) -> DatasetConfig:
    return DatasetConfig(name="folder", root=str(root), num_classes=3, class_names=["bg", "a", "b"], **kw)


def test_training_and_prediction_see_the_same_pixels(tmp_path):
    from seg.predict import read_image as predict_read_image

    _folder_dataset(tmp_path)
    ds = build_dataset(_folder_cfg(tmp_path), "val", build_eval_transform())
    assert len(ds) == 9
    raw = build_dataset(_folder_cfg(tmp_path), "val")
    for i, (path, name) in enumerate(zip(ds.image_paths, ds.names)):
        image, mask = ds[i]
        image = image.permute(1, 2, 0).numpy()
        assert image.dtype == np.uint8
        assert np.array_equal(image, predict_read_image(path)), name  # what predict sees
        assert np.array_equal(raw[i][0], image), name
        mask = mask.numpy()
        assert mask.shape == image.shape[:2], name
        if name.startswith("gray"):  # gray keeps only "painted or not"
            assert np.array_equal(image[..., 0] > 135, mask > 0), name
        else:
            assert _aligned(image, mask), name  # the mask turned with its image
    rotated = ds.names.index("rotated")
    assert ds[rotated][1].shape == (W, H)
    assert np.array_equal(ds[rotated][1].numpy(), np.rot90(_classes(), -1))
    assert np.array_equal(ds[ds.names.index("rotated8")][1].numpy(), np.rot90(_classes(), 1))


def test_a_mask_drawn_on_the_upright_image_is_refused(tmp_path):
    root = tmp_path / "data"
    (root / "images" / "val").mkdir(parents=True)
    (root / "masks" / "val").mkdir(parents=True)
    mask = _classes()
    Image.fromarray(_painted(mask)).save(root / "images" / "val" / "a.jpg", exif=_exif(6), quality=95)
    write_mask(root / "masks" / "val" / "a.png", np.rot90(mask, -1))  # upright, not as stored
    ds = build_dataset(_folder_cfg(root), "val")
    with pytest.raises(DatasetError, match=r"a\.png.*EXIF orientation 6.*stored pixels"):
        ds[0]
    with pytest.raises(ImageReadError, match=r"a\.png.*EXIF orientation 6.*stored pixels"):
        read_image_and_mask(root / "images" / "val" / "a.jpg", root / "masks" / "val" / "a.png")
    skipping = build_dataset(_folder_cfg(root, skip_bad=True), "val")
    with pytest.raises(DatasetError, match="no readable sample"):
        skipping[0]


def test_voc_and_coco_masks_turn_with_their_images(tmp_path):
    # VOC: SegmentationClass PNGs follow the JPEG's stored pixels.
    voc = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    mask = _classes()
    Image.fromarray(_painted(mask)).save(voc / "JPEGImages" / "a.jpg", exif=_exif(6), quality=95)
    write_mask(voc / "SegmentationClass" / "a.png", mask)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    image, got = build_dataset(DatasetConfig(name="voc", root=str(tmp_path / "voc")), "val")[0]
    assert image.shape == (W, H, 3) and np.array_equal(got, np.rot90(mask, -1)) and _aligned(image, got)
    assert np.array_equal(image, read_image(voc / "JPEGImages" / "a.jpg"))
    # The official benchmark's reader agrees.
    both = read_image_and_mask(voc / "JPEGImages" / "a.jpg", voc / "SegmentationClass" / "a.png")
    assert np.array_equal(both[0], image) and np.array_equal(both[1], got)

    # COCO: annotations (and their width / height) are in stored pixels; rendered, then turned.
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "val2017").mkdir()
    Image.fromarray(_painted(mask)).save(coco / "val2017" / "000000000001.jpg", exif=_exif(6), quality=95)
    box = [[0, 0, 24, 0, 24, 16, 0, 16]]  # class 1's block: x 0..24, y 0..16; COCO category 5 = VOC 1
    data = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "height": H, "width": W}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "segmentation": box, "area": 384, "iscrowd": 0}],
        "categories": [{"id": 5, "name": "airplane"}],
    }
    (coco / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    cfg = DatasetConfig(name="coco", root=str(coco), train_split="train2017", val_split="val2017")
    image, got = build_dataset(cfg, "val")[0]
    want = np.rot90(np.where(mask == 1, 1, 0).astype(np.uint8), -1)
    assert image.shape == (W, H, 3) and np.array_equal(got, want)
    assert np.array_equal(image[..., 0] > 135, want == 1)
