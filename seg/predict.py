"""`tools/predict.py`: segment an image or a folder of images with a checkpoint (fast path) or an
exported model; writes NAME.png (VOC-palette class indices) and NAME_overlay.jpg per image.

Images are read as a person would see them: EXIF orientation applied; grayscale, palette and
16-bit images turned into 8-bit RGB; transparent pixels composited over white. A file that is not
a readable image is reported in one line and the rest of the folder is still processed.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import DictConfig
from PIL import Image, ImageOps, UnidentifiedImageError

from seg.errors import SegError
from seg.viz import overlay, save_palette_png


class ImageReadError(SegError, ValueError):
    """A file that cannot be read as an image."""


class PredictError(SegError, ValueError):
    """Predict cannot start: missing input, or not exactly one of checkpoint / model."""


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL image as RGB uint8 HxWx3."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # 16-bit (and 32-bit) grayscale: PIL's convert would clip at 255, so scale by hand.
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(img.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image at `path` as RGB uint8 HxWx3, upright (EXIF orientation applied).

    Raises ImageReadError, naming the file, for anything that is not a readable image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large photos are fine
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image (unknown or unsupported file format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path}: image too large to decode safely ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageReadError(f"{path}: cannot read image ({exc})") from None


def list_inputs(path: str | os.PathLike) -> list[Path]:
    """A file, or every non-hidden file under a folder (recursively, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PredictError(f"input not found: {path}")
    return sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))


def _output_stem(file: Path, root: Path, taken: set[str]) -> str:
    """Output name: the path under the input folder without its suffix (a.jpg -> a); a second file
    with the same stem keeps its suffix (a.png -> a_png)."""
    rel = file.relative_to(root) if root.is_dir() else Path(file.name)
    stem = str(rel.with_suffix(""))
    if stem in taken:
        stem = f"{stem}_{rel.suffix.lstrip('.')}"
    taken.add(stem)
    return stem


def build_predictor(cfg: DictConfig) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The image -> labels function for `checkpoint=` or `model=`, and a line describing it."""
    p = cfg.predict
    if bool(cfg.checkpoint) == bool(p.model):
        raise PredictError("give exactly one of checkpoint=PATH (a training checkpoint) or model=FILE (an exported model)")
    if p.model:
        from seg.export.runtime import load_exported

        predictor = load_exported(p.model, p.threads, p.max_size)
        meta = predictor.meta
        size = meta["input"]["height"]
        return predictor, (f"model {p.model} ({meta['format']}{', int8' if meta.get('quantize') else ''}, "
                           f"{f'{size}x{size}' if size else 'dynamic size'})")
    import torch

    from seg.engine.checkpoint import load_segmenter
    from seg.export.runtime import TorchPredictor
    from seg.fastpath import fast_model

    if p.threads:
        torch.set_num_threads(int(p.threads))
    model, stored = load_segmenter(cfg.checkpoint)
    model = fast_model(model) if p.fast else model
    mode = "fast path" if p.fast else "eager"
    return TorchPredictor(model, stored.model.normalization, p.max_size), f"checkpoint {cfg.checkpoint} ({mode})"


def predict_files(
    predictor: Callable[[np.ndarray], np.ndarray], files: list[Path], root: Path, output: Path, alpha: float = 0.5,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Predict each file; unreadable files are reported (one line each) and skipped."""
    output.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    done, skipped = 0, 0
    for file in files:
        try:
            image = read_image(file)
        except ImageReadError as exc:
            log(f"skipped {exc}")
            skipped += 1
            continue
        start = time.perf_counter()
        labels = predictor(image)
        seconds = time.perf_counter() - start
        stem = _output_stem(file, root, taken)
        mask_path = output / f"{stem}.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        save_palette_png(labels, mask_path)
        Image.fromarray(overlay(image, labels, alpha)).save(output / f"{stem}_overlay.jpg", quality=90)
        log(f"{file} -> {mask_path} ({image.shape[1]}x{image.shape[0]}, {1000 * seconds:.0f} ms)")
        done += 1
    return {"images": done, "skipped": skipped}


def run_predict(cfg: DictConfig, log: Callable[[str], None] = print) -> dict[str, int]:
    """`tools/predict.py`: everything under `predict.input` into `predict.output`."""
    p = cfg.predict
    if not p.input or not p.output:
        raise PredictError("input=IMAGE_OR_DIR and output=DIR are required")
    predictor, what = build_predictor(cfg)
    root = Path(p.input)
    files = list_inputs(root)
    log(f"predicting {len(files)} file(s) with {what}")
    counts = predict_files(predictor, files, root, Path(p.output), p.alpha, log)
    log(f"{counts['images']} image(s) written to {p.output}" + (f", {counts['skipped']} skipped" if counts["skipped"] else ""))
    return counts
