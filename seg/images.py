"""The one image reader: training and validation datasets, evaluation, int8 calibration, the
benchmarks and predict all read image files here, so they all see the same pixels.

`read_image(path)` gives RGB uint8 HxWx3, upright:

- EXIF orientation (JPEG, PNG, TIFF, WebP) is applied, as `PIL.ImageOps.exif_transpose` does: the
  image as a person sees it. Datasets too: VOC's and COCO's masks (and masks made by tools that
  ignore EXIF) are aligned with the *stored* pixels, so a dataset reads the stored pixels and the
  orientation (`read_image_stored`), checks its mask against the stored size, and turns image and
  mask the same way (`orient`); a mask with the size of the upright image instead is refused with
  a message saying so (`upright_mask_note`). The mask file's own EXIF is never used.
- 16-bit images are scaled to 8 bits (round(v * 255 / 65535)), not truncated: grayscale (`I;16`)
  through PIL, colour (16-bit RGB / RGBA PNG and TIFF, which PIL would cut to their high byte)
  through OpenCV. 32-bit integer and float grayscale are scaled by their range (0..65535, or
  0..255 / 0..1 when all values fit).
- Palette images: their colours. Grayscale and 1-bit: the gray value in all three channels.
  CMYK (and YCbCr, ...) JPEGs: PIL's conversion to RGB.
- Transparency (RGBA, LA, PA, palette or grayscale with a transparent colour): composited over
  white, as the image looks on a page; transparent pixels do not keep whatever colour they hide.
- Large images stay memory-bounded: besides the result, the decoder's image and one strip of rows
  (a large 8-bit RGB or gray JPEG is decoded by OpenCV straight into the result).

A file that is missing, not an image, truncated or too large to decode safely raises
`ImageReadError` naming the file. `read_mask(path)` gives a class mask as uint8 HxW: palette PNGs
as their palette indices (never through colours), grayscale masks as their values.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from seg.errors import SegError

__all__ = [
    "ImageReadError",
    "orient",
    "pil_to_rgb",
    "read_image",
    "read_image_and_mask",
    "read_image_stored",
    "read_mask",
    "upright_mask_note",
]


class ImageReadError(SegError, ValueError):
    """A file that cannot be read as an image (or as a class mask)."""


# Pixels per strip of rows when a decoded image is turned into RGB (the PIL strip and its
# conversions: a few tens of MB at most).
_STRIP_PIXELS = 1 << 22

# EXIF orientation -> the array view that shows the image upright (as ImageOps.exif_transpose).
# For HxWxC images and HxW masks alike (swapaxes(0, 1) transposes both).
_ORIENTATIONS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],  # flip left-right
    3: lambda a: a[::-1, ::-1],  # rotate 180
    4: lambda a: a[::-1],  # flip top-bottom
    5: lambda a: a.swapaxes(0, 1),  # transpose
    6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),  # transverse
    8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
}
# The orientations that swap width and height.
_SWAPS_AXES = (5, 6, 7, 8)


def _strip_to_rgb(img: Image.Image) -> Callable[[Image.Image], np.ndarray]:
    """The function that turns one strip (a crop) of `img` into RGB uint8 (h x w x 3, or h x w x 1
    for gray, which broadcasts), the same for every strip of the image."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # 16-bit (and 32-bit) grayscale: PIL's convert would clip at 255, so scale by hand; the
        # scale depends on the whole image's maximum.
        top_value = max(img.getextrema()[1], 0)
        top = 65535.0 if img.mode.startswith("I;16") or top_value > 255 else 255.0
        if img.mode == "F" and top_value <= 1.0:
            top = 1.0

        def gray(strip: Image.Image) -> np.ndarray:
            arr = np.asarray(strip).astype(np.float64)
            return np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)[..., None]

        return gray
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:  # transparent pixels composited over white

        def composite(strip: Image.Image) -> np.ndarray:
            rgba = strip.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))

        return composite
    return lambda strip: np.asarray(strip.convert("RGB"))


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL image as RGB uint8 HxWx3, converted in strips of rows: besides the decoded image,
    only the result and one strip are ever held."""
    width, height = img.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    convert = _strip_to_rgb(img)
    rows = max(1, _STRIP_PIXELS // max(width, 1))
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        out[r0:r1] = convert(img.crop((0, r0, width, r1)))
    return out


# Above this many pixels, an 8-bit RGB or gray JPEG is decoded by OpenCV straight into the 3-byte
# array (pixel for pixel what PIL decodes), not first into PIL's 4-byte-a-pixel image.
_DIRECT_JPEG_PIXELS = 1 << 24


def _read_jpeg_direct(img: Image.Image, path: str | os.PathLike) -> Optional[np.ndarray]:
    """A large 8-bit RGB or gray JPEG decoded by OpenCV as RGB (before EXIF orientation); None
    when the file is not such a JPEG, or may be truncated (PIL then reads it, and refuses a
    truncated file, which OpenCV would fill with gray)."""
    if img.format != "JPEG" or img.mode not in ("RGB", "L") or img.width * img.height <= _DIRECT_JPEG_PIXELS:
        return None
    import cv2

    with open(path, "rb") as f:
        f.seek(-2, os.SEEK_END)
        if f.read(2) != b"\xff\xd9":  # no end-of-image marker at the end
            return None
    shape = (img.height, img.width, 3)
    try:  # OpenCV >= 4.11: decoded as RGB into an array of ours, with no copy on the way
        rgb = cv2.imread(os.fspath(path), np.empty(shape, dtype=np.uint8),
                         cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)  # fmt: skip
    except (AttributeError, TypeError, cv2.error):  # older: BGR, swapped in place
        rgb = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if rgb is not None:
            rgb = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB, dst=rgb)
    return rgb if rgb is not None and rgb.shape == shape else None


def _is_deep_colour(img: Image.Image) -> bool:
    """Whether `img` (opened, not yet loaded) is a 16-bit-a-channel colour image that PIL would
    decode to 8 bits by keeping each value's high byte (16-bit RGB / RGBA / gray+alpha PNG, TIFF)."""
    if img.mode not in ("RGB", "RGBA"):
        return False
    for tile in img.tile:
        args = tile[3]
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
        if isinstance(rawmode, str) and ";16" in rawmode:
            return True
    return False


def _read_deep_colour(path: str | os.PathLike, size: tuple[int, int]) -> Optional[np.ndarray]:
    """A 16-bit colour image decoded by OpenCV and scaled to RGB uint8 in strips (alpha composited
    over white); None when OpenCV cannot decode it to 16-bit values of the expected size."""
    import cv2

    width, height = size
    try:
        deep = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)  # as stored: no EXIF turn, BGR(A)
    except cv2.error:  # e.g. beyond OpenCV's own pixel limit
        return None
    if deep is None or deep.dtype != np.uint16 or deep.ndim != 3 or deep.shape[:2] != (height, width):
        return None
    if deep.shape[2] not in (3, 4):
        return None
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, _STRIP_PIXELS // max(width, 1))
    for r0 in range(0, height, rows):
        strip = deep[r0 : r0 + rows].astype(np.float64) * (1.0 / 65535.0)
        rgb = strip[..., 2::-1]
        if strip.shape[2] == 4:
            alpha = strip[..., 3:]
            rgb = rgb * alpha + (1.0 - alpha)
        out[r0 : r0 + rows] = np.clip(np.rint(rgb * 255.0), 0, 255)
    return out


def _orientation(img: Image.Image) -> int:
    """The image's EXIF orientation, 1 (as stored) when it has none or an invalid one."""
    value = img.getexif().get(ExifTags.Base.Orientation, 1)
    return value if isinstance(value, int) and value in _ORIENTATIONS else 1


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """`array` (HxWxC image or HxW mask, as stored) turned as EXIF `orientation` says, so that it
    shows upright; C-contiguous. Orientation 1 (or an unknown one) returns `array` itself."""
    upright = _ORIENTATIONS.get(orientation)
    return array if upright is None else np.ascontiguousarray(upright(array))


def read_image_stored(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The image at `path` as RGB uint8 HxWx3 in its stored pixel order, and its EXIF orientation
    (1..8; `orient(image, orientation)` shows it upright).

    Raises ImageReadError, naming the file, for anything that is not a readable image.
    Memory: the result (3 bytes a pixel), plus while reading PIL's decoded image (4 bytes a pixel
    for RGB; none for a large RGB or gray JPEG, decoded directly), plus one strip. 16-bit colour:
    PIL's decoded image first (it checks the file), then OpenCV's 16-bit one (6-8 bytes a pixel).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large photos are fine
            with Image.open(path) as img:
                size = img.size
                deep = False
                rgb = _read_jpeg_direct(img, path)
                if rgb is None:
                    deep = _is_deep_colour(img)
                    img.load()  # decodes (and checks) the whole file, 16-bit colour too
                    if not deep:
                        rgb = _to_rgb(img)
                orientation = _orientation(img)
            del img  # the decoded image goes before anything else is made
            if deep:  # PIL keeps the high byte of 16-bit colour: OpenCV reads the values whole
                rgb = _read_deep_colour(path, size)
                if rgb is None:  # a kind OpenCV does not decode: PIL's 8 bits, rather than nothing
                    with Image.open(path) as img:
                        img.load()
                        rgb = _to_rgb(img)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image (unknown or unsupported file format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path}: image too large to decode safely ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageReadError(f"{path}: cannot read image ({exc})") from None
    return rgb, orientation


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image at `path` as RGB uint8 HxWx3, upright (EXIF orientation applied); see the module
    docstring for what each kind of file becomes. Raises ImageReadError naming the file."""
    rgb, orientation = read_image_stored(path)
    return orient(rgb, orientation)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """An image already open in PIL as RGB uint8 HxWx3, upright, by the rules `read_image` applies
    to files (a 16-bit colour image opened by PIL has lost its low bytes already)."""
    img.load()
    return orient(_to_rgb(img), _orientation(img))


# Modes of class masks: palette indices or gray values (16-bit ones are checked to fit in uint8).
MASK_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "1")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Class indices as uint8 HxW, in the file's stored pixel order.

    Palette ('P') PNGs, as VOC ships them, are read as their palette indices, never as colours;
    grayscale ('L', 'I;16', 'I', '1') masks as their values. Raises ImageReadError naming the file
    for an unreadable file, a colour image, or values outside 0..255.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # a large image's mask
            with Image.open(path) as img:
                img.load()
                mode = img.mode
                mask = np.array(img)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot read mask {path}: {e}") from None
    if mode not in MASK_MODES:
        raise ImageReadError(
            f"mask {path} has mode {mode}: expected a palette or grayscale PNG of class indices "
            "(colour masks must be converted to indices first)"
        )
    if mask.dtype != np.uint8:
        # 16-bit masks are fine as long as their values fit.
        big = np.unique(mask[(mask < 0) | (mask > 255)])
        if big.size:
            raise ImageReadError(f"mask {path} has values outside [0, 255]: {big[:10].tolist()}")
        mask = mask.astype(np.uint8)
    return mask


def upright_mask_note(image_shape: tuple[int, ...], mask_shape: tuple[int, ...], orientation: int) -> str:
    """For an image (stored shape) and a mask whose sizes differ: a note when the mask has the size
    of the image as shown upright (EXIF orientation swaps width and height), else ''."""
    if orientation not in _SWAPS_AXES or tuple(mask_shape[:2]) != (image_shape[1], image_shape[0]):
        return ""
    return (
        f"; the image has EXIF orientation {orientation} and the mask has the size of the image as shown "
        "upright, but masks must be aligned with the image's stored pixels (as VOC's and COCO's are; the "
        "image's orientation is applied to both): turn the mask back, or save the image upright without its "
        "EXIF orientation (PIL.ImageOps.exif_transpose)"
    )


def read_image_and_mask(image_path: str | os.PathLike, mask_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """An image and its class mask, both upright: the mask is aligned with the image's stored
    pixels, and the image's EXIF orientation is applied to both (see the module docstring).
    Raises ImageReadError naming the files when one cannot be read or their sizes differ."""
    image, orientation = read_image_stored(image_path)
    mask = read_mask(mask_path)
    if mask.shape != image.shape[:2]:
        note = upright_mask_note(image.shape, mask.shape, orientation)
        raise ImageReadError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}, its image {Path(image_path)} is "
            f"{image.shape[1]}x{image.shape[0]} (WxH, as stored){note}"
        )
    return orient(image, orientation), orient(mask, orientation)
