import numpy as np
import pytest
from PIL import Image

from seg.data.classes import VOC_CLASSES, voc_palette
from seg.viz import colorize, confusion_matrix_figure, image_grid, overlay, save_confusion_matrix_png, save_palette_png


def mask(h=12, w=16, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 21, size=(h, w)).astype(np.uint8)
    m[0, :] = 255
    return m


def test_colorize_uses_voc_palette():
    m = mask()
    rgb = colorize(m)
    assert rgb.shape == (12, 16, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, voc_palette()[m])
    assert tuple(colorize(np.array([[1, 255]], np.uint8))[0, 0]) == (128, 0, 0)
    assert tuple(colorize(np.array([[1, 255]], np.uint8))[0, 1]) == (224, 224, 192)


def test_palette_png_round_trip(tmp_path):
    m = mask()
    path = tmp_path / "2007_000032.png"
    save_palette_png(m, path)
    img = Image.open(path)
    assert img.mode == "P"
    np.testing.assert_array_equal(np.asarray(img), m)
    pal = np.array(img.getpalette()[: 256 * 3], dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(pal, voc_palette())
    save_palette_png(m.astype(np.int64), path)  # argmax output is int64
    np.testing.assert_array_equal(np.asarray(Image.open(path)), m)


def test_overlay_blends_except_ignore():
    m = mask()
    image = np.full((12, 16, 3), 100, np.uint8)
    out = overlay(image, m, alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], image[0])  # ignore row untouched
    expected = np.rint(0.5 * 100 + 0.5 * voc_palette()[m[1:]].astype(float)).astype(np.uint8)
    np.testing.assert_array_equal(out[1:], expected)
    with pytest.raises(ValueError):
        overlay(image[:5], m)


def test_confusion_png_written(tmp_path):
    rng = np.random.default_rng(0)
    n = len(VOC_CLASSES)
    mat = rng.integers(0, 50, size=(n, n)) + np.eye(n, dtype=int) * 500
    mat[3] = 0  # a class with no ground-truth pixels must not divide by zero
    path = tmp_path / "confusion.png"
    save_confusion_matrix_png(mat.tolist(), VOC_CLASSES, path)
    img = Image.open(path)
    img.load()
    assert img.size[0] > 400 and img.size[1] > 400
    fig = confusion_matrix_figure(mat, VOC_CLASSES, normalize=True)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "ground truth" and ax.get_xlabel() == "prediction"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(VOC_CLASSES)
    data = ax.images[0].get_array()
    np.testing.assert_allclose(np.asarray(data).sum(axis=1)[[0, 1, 5]], 1.0)
    assert np.asarray(data)[3].sum() == 0
    with pytest.raises(ValueError):
        confusion_matrix_figure(mat[:5, :5], VOC_CLASSES)


def test_image_grid_layout():
    images = [np.zeros((12, 16, 3), np.uint8), np.zeros((10, 8, 3), np.uint8)]
    gts = [mask(), mask(10, 8, 1)]
    preds = [mask(seed=2), mask(10, 8, 3)]
    grid = image_grid(images, gts, preds, pad=2)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[:2] == (2 * (12 + 2) + 2, 3 * (16 + 2) + 2)
    np.testing.assert_array_equal(grid[2:14, 2 + 18 : 2 + 18 + 16], colorize(gts[0]))
    np.testing.assert_array_equal(grid[16:26, 2 + 36 : 2 + 36 + 8], colorize(preds[1]))
