"""`tools/predict.py`: segment an image or a folder of images with a checkpoint (fast path) or an
exported model; writes NAME.png (VOC-palette class indices) and NAME_overlay.jpg per image.

Images are read as a person would see them: EXIF orientation applied; grayscale, palette and
16-bit images turned into 8-bit RGB; transparent pixels composited over white. A file that is not
a readable image is reported in one line and the rest of the folder is still processed.

Predict never writes among its inputs (an output folder that is, or lies in, the input folder, or
that holds an input, is refused), never replaces an existing file unless predict.overwrite=true,
checks all of this before the first write, and writes each file atomically. Memory stays bounded
for any image size: the full-size image is held once as uint8, the labels as uint8, and everything
full-size beyond that (labels from logits, overlay, PNG and JPEG encoding) works in strips of rows.
"""

from __future__ import annotations

import errno
import os
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from omegaconf import DictConfig
from PIL import ExifTags, Image, UnidentifiedImageError

from seg.errors import SegError
from seg.files import FileClashError, make_folder, overwrite_key, same_or_inside, write_atomically
from seg.viz import JPEG_MAX_SIDE, save_overlay_jpeg, save_palette_png


class ImageReadError(SegError, ValueError):
    """A file that cannot be read as an image."""


class PredictError(SegError, ValueError):
    """Predict cannot start: missing input, or not exactly one of checkpoint / model."""


# Pixels per strip of rows when a decoded image is turned into RGB (the PIL strip and its
# conversions: a few tens of MB at most).
_STRIP_PIXELS = 1 << 22

# EXIF orientation -> the array view that shows the image upright (as ImageOps.exif_transpose).
_ORIENTATIONS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],  # flip left-right
    3: lambda a: a[::-1, ::-1],  # rotate 180
    4: lambda a: a[::-1],  # flip top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transpose
    6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse
    8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
}


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
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info)
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


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image at `path` as RGB uint8 HxWx3, upright (EXIF orientation applied).

    Raises ImageReadError, naming the file, for anything that is not a readable image.
    Memory: the result (3 bytes a pixel), plus while reading PIL's decoded image (4 bytes a pixel
    for RGB; none for a large RGB or gray JPEG, decoded directly), plus one strip.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large photos are fine
            with Image.open(path) as img:
                rgb = _read_jpeg_direct(img, path)
                if rgb is None:
                    img.load()
                    rgb = _to_rgb(img)
                orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
            del img  # the decoded image goes before the upright copy is made
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image (unknown or unsupported file format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path}: image too large to decode safely ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageReadError(f"{path}: cannot read image ({exc})") from None
    upright = _ORIENTATIONS.get(orientation)
    return rgb if upright is None else np.ascontiguousarray(upright(rgb))


def _opens_as_image(path: Path) -> bool:
    """Whether PIL recognises `path` as an image (its header only; nothing is decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path):
                return True
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError, EOFError):
        return False


def list_inputs(path: str | os.PathLike) -> list[Path]:
    """A file, or every non-hidden file under a folder (recursively, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PredictError(f"input not found: {path}")
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def _output_stem(file: Path, root: Path, taken: set[str]) -> str:
    """Output name: the path under the input folder without its suffix (a.jpg -> a); a second file
    with the same stem keeps its suffix (a.png -> a_png), and a number if that is taken too."""
    rel = file.relative_to(root) if root.is_dir() else Path(file.name)
    stem = str(rel.with_suffix(""))
    if stem in taken:
        stem = f"{stem}_{rel.suffix.lstrip('.')}"
    base, n = stem, 2
    while stem in taken:
        stem, n = f"{base}_{n}", n + 1
    taken.add(stem)
    return stem


def output_paths(output: Path, stem: str) -> tuple[Path, Path]:
    """The mask and the overlay predict writes for an image whose output name is `stem`."""
    return output / f"{stem}.png", output / f"{stem}_overlay.jpg"


def check_no_clash(root: Path, files: list[Path], output: Path) -> None:
    """Refuse (FileClashError) an output folder that is, or lies in, the input folder, or that holds
    an input file: predict never writes among the files it reads."""
    out = output.resolve()
    if root.is_dir() and same_or_inside(out, root):
        where = "is the input folder" if out == root.resolve() else f"lies inside the input folder {root}"
        raise FileClashError(
            f"output={output} {where}: predict never writes among its inputs; choose an output folder outside {root}"
        )
    for file in files:
        resolved = file.resolve()
        if resolved == out:
            raise FileClashError(f"output={output} is the input image {file}: choose an output folder for the masks")
        if out in resolved.parents:
            raise FileClashError(
                f"input {file} lies inside the output folder output={output}: predict never writes among its "
                "inputs; choose an output folder that holds no input"
            )
    if output.exists() and not output.is_dir():
        raise FileClashError(f"output={output} exists and is not a folder: choose a folder for the masks")


def plan_outputs(files: list[Path], root: Path, output: Path, overwrite: bool = False) -> dict[Path, str]:
    """The output name of each input that opens as an image, after every check that comes before a
    write: no clash between inputs and outputs (`check_no_clash`), no file predict would write that
    exists already (unless `overwrite`), and never an input file or a folder as a target."""
    check_no_clash(root, files, output)
    taken: set[str] = set()
    stems = {file: _output_stem(file, root, taken) for file in files if _opens_as_image(file)}
    inputs = {file.resolve() for file in files}
    targets = [path for stem in stems.values() for path in output_paths(output, stem)]
    input_tree = root.resolve() if root.is_dir() else None
    for target in targets:  # only a link inside the output folder could lead there
        resolved = target.resolve()
        if resolved in inputs or (input_tree is not None and same_or_inside(resolved, input_tree)):
            what = "an input file" if resolved in inputs else "inside the input folder"
            raise FileClashError(
                f"{target} leads to {resolved}, {what}: predict never writes over its inputs (not even with "
                "predict.overwrite=true); choose another output folder"
            )
    existing = []
    for target in targets:
        if target.is_dir():
            raise FileClashError(
                f"{target} is a folder, where predict would write a file: choose another output folder"
            )
        if target.exists() or target.is_symlink():
            existing.append(target)
    if existing and not overwrite:
        raise FileClashError(
            f"{existing[0]} already exists ({len(existing)} of the {len(targets)} files predict would write in "
            f"output={output} exist already): refusing to overwrite them; choose another output folder, or set "
            f"{overwrite_key('predict.output')}=true to replace them"
        )
    return stems


def build_predictor(cfg: DictConfig) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The image -> labels function for `checkpoint=` or `model=`, and a line describing it."""
    check_model_args(cfg)
    p = cfg.predict
    if p.model:
        from seg.export.runtime import load_exported

        predictor = load_exported(p.model, p.threads, p.max_size)
        meta = predictor.meta
        height, width = meta["input"]["height"], meta["input"].get("width") or meta["input"]["height"]
        size = f"{height}x{width}" if height else "dynamic size"
        if meta.get("official"):  # a TF Lite file with no metadata of ours (read from the file)
            uint8 = ", uint8 input" if meta["normalization"]["included"] else ""
            return predictor, f"model {p.model} (official TF Lite, {size}{uint8}, {meta['output']['kind']})"
        return predictor, f"model {p.model} ({meta['format']}{', int8' if meta.get('quantize') else ''}, {size})"
    import torch

    from seg.engine.checkpoint import load_segmenter
    from seg.export.runtime import TorchPredictor
    from seg.fastpath import fast_model

    if p.threads:
        torch.set_num_threads(int(p.threads))
    model, stored = load_segmenter(cfg.checkpoint)
    model = fast_model(model) if p.fast else model
    mode = "fast path" if p.fast else "eager"
    return TorchPredictor(model, p.max_size), f"checkpoint {cfg.checkpoint} ({mode})"


def check_model_args(cfg: DictConfig) -> None:
    """Exactly one of checkpoint= and model=, each given the kind of file it takes (told from the
    file's bytes; nothing is loaded)."""
    from seg.export.common import metadata_path
    from seg.export.runtime import EXPORTED_FORMATS, refuse_checkpoint, sniff_model_file

    p = cfg.predict
    if bool(cfg.checkpoint) == bool(p.model):
        raise PredictError(
            "give exactly one of checkpoint=PATH (a training checkpoint) or model=FILE (an exported model)"
        )
    if p.model:
        refuse_checkpoint(p.model)
        return
    kind = sniff_model_file(cfg.checkpoint)
    if kind in EXPORTED_FORMATS or (kind is None and metadata_path(cfg.checkpoint).is_file()):
        what = f" ({EXPORTED_FORMATS[kind]})" if kind else ""
        raise PredictError(
            f"{cfg.checkpoint} is an exported model{what}, not a training checkpoint: pass it as model={cfg.checkpoint}"
        )


def _overlay_into(image: np.ndarray, labels: np.ndarray, alpha: float, path: Path) -> None:
    """The overlay JPEG, built in the image's own memory (the image is not needed afterwards)."""
    save_overlay_jpeg(image, labels, path, alpha, 90, reuse_image=True)


def predict_files(
    predictor: Callable[[np.ndarray], np.ndarray],
    files: list[Path],
    root: Path,
    output: Path,
    alpha: float = 0.5,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
    stems: Optional[dict[Path, str]] = None,
) -> dict[str, int]:
    """Predict each file; unreadable files are reported (one line each) and skipped.

    Every output path is checked before the first write (`plan_outputs`; `stems` is its result
    when already computed), and every file is written atomically. A large image is handled in
    strips of rows: it is held once as uint8, with its uint8 labels; its overlay is built in its
    own memory."""
    if stems is None:
        stems = plan_outputs(files, root, output, overwrite)
    make_folder(output)
    done, skipped = 0, 0
    for file in files:
        try:
            image = read_image(file)
        except ImageReadError as exc:
            log(f"skipped {exc}")
            skipped += 1
            continue
        if file not in stems:  # it did not open as an image when the outputs were checked
            log(f"skipped {file}: it changed while predicting (not an image when predict started)")
            skipped += 1
            continue
        height, width = image.shape[:2]
        start = time.perf_counter()
        labels = predictor(image)
        seconds = time.perf_counter() - start
        mask_path, overlay_path = output_paths(output, stems[file])
        write_atomically(mask_path, partial(save_palette_png, labels))
        if max(height, width) <= JPEG_MAX_SIDE:
            # The image is not needed after this: the overlay is built in its memory.
            write_atomically(overlay_path, partial(_overlay_into, image, labels, alpha))
        else:
            log(f"no overlay for {file}: JPEG allows at most {JPEG_MAX_SIDE} pixels a side")
        del image, labels  # before the next image is read
        log(f"{file} -> {mask_path} ({width}x{height}, {1000 * seconds:.0f} ms)")
        done += 1
    return {"images": done, "skipped": skipped}


def run_predict(cfg: DictConfig, log: Callable[[str], None] = print) -> dict[str, int]:
    """`tools/predict.py`: everything under `predict.input` into `predict.output`.

    Everything that could stop the run is checked before the model loads and before anything is
    written: the model arguments, the input, clashes between inputs and outputs, existing outputs."""
    p = cfg.predict
    if not p.input or not p.output:
        raise PredictError("input=IMAGE_OR_DIR and output=DIR are required")
    check_model_args(cfg)
    root, output = Path(p.input), Path(p.output)
    files = list_inputs(root)
    stems = plan_outputs(files, root, output, bool(p.overwrite))
    if output.is_dir() and not os.access(output, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "permission denied", str(output))
    predictor, what = build_predictor(cfg)
    log(f"predicting {len(files)} file(s) with {what}")
    counts = predict_files(predictor, files, root, output, p.alpha, log, bool(p.overwrite), stems)
    log(
        f"{counts['images']} image(s) written to {p.output}"
        + (f", {counts['skipped']} skipped" if counts["skipped"] else "")
    )
    return counts
