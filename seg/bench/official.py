"""`tools/benchmark.py official`: the official DeepLab TF Lite files, run as published on LiteRT,
against our conversion of each (`seg.models.official.convert_source`) on PyTorch, its ONNX export
on ONNX Runtime and (with litert-torch installed) its TF Lite exports on LiteRT, fp32 and int8, on
real PASCAL VOC images. The int8 export is calibrated on the benchmark's own images, all the real
ones there are: its agreement is an upper bound for unseen images.

Every image is fed as the official apps feed it: the whole image stretched to the file's input
size (bilinear, `cv2.resize` INTER_LINEAR on the uint8 RGB image); each runtime's class map comes
back to the image size with nearest neighbour. Reported per file and runtime: pixel accuracy and
mIoU over the images with ground truth (one confusion matrix over all of them, seg/metrics.py),
and the fraction of pixels whose class equals the official runtime's, over every image (those
without ground truth too).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import torch

from seg.bench.timing import output_dir
from seg.errors import ConfigError

log = logging.getLogger(__name__)

# The published files this task knows (../shared/fixtures/official/README.md), in table order.
OFFICIAL_FILES = ("deeplabv3_257_mv_gpu.tflite", "deeplabv3_mnv2_dm05_pascal_quant.tflite")
IGNORE_INDEX = 255
RUNTIMES = {  # key -> table name; the first is the reference of the agreement
    "litert": "LiteRT (official file)",
    "pytorch": "PyTorch (converted)",
    "onnx": "ONNX Runtime fp32 (our export)",
    # with litert-torch installed (pip install ".[tflite]"): the round trip back to TF Lite
    "tflite_fp32": "LiteRT fp32 (our TF Lite export)",
    "tflite_int8": "LiteRT int8 (our TF Lite export)",
}
TFLITE_RUNTIMES = ("tflite_fp32", "tflite_int8")


def _litert_torch_installed() -> bool:
    try:
        import litert_torch  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Sample:
    name: str
    image_path: Path
    mask_path: Optional[Path]  # None: no ground truth (agreement only)


def find_samples(voc_roots: list[str], extra_images: list[str]) -> list[Sample]:
    """Every VOC image with its ground truth under each root's VOCdevkit/VOC2012 (a
    SegmentationClass/*.png whose JPEGImages/*.jpg is there), then the extra images; a missing
    root or image is skipped with a logged line."""
    samples: list[Sample] = []
    for root in voc_roots:
        voc = Path(root) / "VOCdevkit" / "VOC2012"
        masks = sorted((voc / "SegmentationClass").glob("*.png"))
        if not masks:
            log.warning("benchmark.official.voc_root: no %s/SegmentationClass/*.png, skipped", voc)
        for mask in masks:
            image = voc / "JPEGImages" / f"{mask.stem}.jpg"
            if image.is_file():
                samples.append(Sample(mask.stem, image, mask))
    for extra in extra_images:
        if Path(extra).is_file():
            samples.append(Sample(Path(extra).stem, Path(extra), None))
        else:
            log.warning("benchmark.official.extra_images: %s: no such file, skipped", extra)
    names: dict[str, int] = {}
    for s in samples:  # the same id under two roots: keep both, told apart by their path
        names[s.name] = names.get(s.name, 0) + 1
    for s in samples:
        if names[s.name] > 1:
            s.name = str(s.image_path)
    return samples


class _Runtimes:
    """One official file on the runtimes: uint8 RGB image at the input size -> class map. With
    `calibration` (uint8 RGB images), also our TF Lite exports of the conversion, fp32 and int8
    calibrated on them, stretched to the input size as they are fed (same signature as ONNX: raw
    bytes NHWC in, logits out)."""

    def __init__(self, path: Path, work: Path, threads: int, calibration: Optional[list[np.ndarray]] = None) -> None:
        from seg.engine.checkpoint import load_segmenter, save_checkpoint
        from seg.export.common import ExportWrapper
        from seg.export.onnx import OnnxRunner, export_onnx
        from seg.export.tflite import TFLiteRunner, official_tflite_metadata
        from seg.fastpath import fold_batchnorm
        from seg.models.official import convert_source

        self.litert = TFLiteRunner(path, threads=threads)
        meta = official_tflite_metadata(path, self.litert.interpreter)
        self.height, self.width = int(meta["input"]["height"]), int(meta["input"]["width"])
        self.raw_input = bool(meta["normalization"]["included"])  # uint8 bytes go in
        self.mean = np.float32(meta["normalization"]["mean"][0])
        self.std = np.float32(meta["normalization"]["std"][0])
        self.official_kind = meta["output"]["kind"]  # logits or labels

        checkpoint = work / f"{path.stem}.pt"
        save_checkpoint(checkpoint, convert_source(path))
        self.model, stored = load_segmenter(checkpoint)
        self.output_stride = int(stored.model.output_stride)
        self.num_classes = int(stored.model.num_classes)
        onnx_path = work / f"{path.stem}.onnx"
        exportable = ExportWrapper(fold_batchnorm(self.model), include_preprocessing=True).eval()
        sample = torch.zeros(1, self.height, self.width, 3, dtype=torch.uint8)
        export_onnx(exportable, onnx_path, sample)  # static size, uint8 RGB NHWC in, logits out
        self.onnx = OnnxRunner(onnx_path, threads=threads)
        self.tflite: dict[str, Any] = {}
        if calibration is not None:
            from seg.export.tflite import TFLiteRunner, export_tflite

            nhwc = ExportWrapper(fold_batchnorm(self.model), include_preprocessing=True, channels_last=True).eval()
            fp32_path, int8_path = work / f"{path.stem}.ours.tflite", work / f"{path.stem}.ours.int8.tflite"
            size = (self.width, self.height)
            batches = [cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)[None] for image in calibration]
            self.tflite["tflite_fp32"] = TFLiteRunner(export_tflite(nhwc, fp32_path, sample), threads)
            self.tflite["tflite_int8"] = TFLiteRunner(export_tflite(nhwc, int8_path, sample, batches), threads)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The [H, W] class map of each runtime for one uint8 RGB [H, W, 3] input."""
        batch = np.ascontiguousarray(x[None])
        official = self.litert(batch if self.raw_input else (batch.astype(np.float32) - self.mean) / self.std)[0]
        with torch.inference_mode():
            logits = self.model(self.model.normalize(torch.from_numpy(batch).permute(0, 3, 1, 2)))
        maps = {
            "litert": official.argmax(-1) if self.official_kind == "logits" else official,
            "pytorch": logits[0].argmax(0).numpy(),
            "onnx": self.onnx(batch)[0].argmax(0),
        }
        for key, runner in self.tflite.items():
            maps[key] = runner(batch)[0].argmax(-1)
        return maps


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.2f}%"


def format_official_table(result: dict[str, Any]) -> str:
    lines = [
        "| model file | runtime | pixel accuracy | mIoU | agreement with official |",
        "|---|---|---:|---:|---:|",
    ]
    for name, entry in result["models"].items():
        for key, row in entry["runtimes"].items():
            agreement = "reference" if key == "litert" else _percent(row["agreement"])
            lines.append(
                f"| {name} | {RUNTIMES[key]} | {_percent(row['pixel_accuracy'])} | {_percent(row['miou'])} | "
                f"{agreement} |"
            )
    return "\n".join(lines)


def benchmark_official(cfg) -> dict[str, Any]:
    """Each official file in `benchmark.official.models_dir` on LiteRT, PyTorch (converted) and
    ONNX Runtime (our fp32 export of the conversion) on the VOC images under
    `benchmark.official.voc_root` and the `extra_images`: pixel accuracy, mIoU and agreement with
    the official runtime; `official.md` and `official.json` in `benchmark.official.output_dir`."""
    from tqdm import tqdm

    from seg.images import read_image, read_image_and_mask
    from seg.metrics import ConfusionMatrix

    o, threads = cfg.benchmark.official, int(cfg.benchmark.threads)
    models_dir = Path(o.models_dir)
    files = [models_dir / name for name in OFFICIAL_FILES if (models_dir / name).is_file()]
    if not files:
        raise ConfigError(
            f"benchmark.official.models_dir={o.models_dir}: none of the official files is there "
            f"({', '.join(OFFICIAL_FILES)})"
        )
    for name in OFFICIAL_FILES:
        if not (models_dir / name).is_file():
            log.warning("benchmark.official: %s not in %s, skipped", name, models_dir)
    samples = find_samples(list(o.voc_root), list(o.extra_images))
    if not samples:
        raise ConfigError(
            f"benchmark.official.voc_root={list(o.voc_root)}, extra_images={list(o.extra_images)}: no image found"
        )
    out_dir = output_dir(cfg.benchmark.official.output_dir, "benchmark.official.output_dir")
    torch.set_num_threads(threads)
    # The reader of training and predict (seg/images.py): EXIF orientation applied to image and mask alike.
    images: list[np.ndarray] = []
    masks: list[Optional[np.ndarray]] = []
    for s in samples:
        if s.mask_path is None:
            image, mask = read_image(s.image_path), None
        else:
            image, mask = read_image_and_mask(s.image_path, s.mask_path)
        images.append(image)
        masks.append(mask)

    result: dict[str, Any] = {
        "task": "official",
        "threads": threads,
        "images": [
            {"name": s.name, "path": str(s.image_path), "size": list(img.shape[:2]), "ground_truth": m is not None}
            for s, img, m in zip(samples, images, masks)
        ],
        "ground_truth_images": sum(m is not None for m in masks),
        "models": {},
    }
    tflite = bool(o.tflite) and _litert_torch_installed()
    if o.tflite and not tflite:
        log.warning('benchmark.official: litert-torch not installed (pip install ".[tflite]"): no TF Lite export rows')
    keys = [key for key in RUNTIMES if tflite or key not in TFLITE_RUNTIMES]
    with tempfile.TemporaryDirectory(prefix="seg-official-") as tmp:
        for path in files:
            print(f"converting {path.name} and exporting it to ONNX{' and TF Lite' if tflite else ''} ...", flush=True)
            # int8 calibration: the benchmark's own images, all the real ones there are.
            runtimes = _Runtimes(path, Path(tmp), threads, images if tflite else None)
            matrices = {key: ConfusionMatrix(runtimes.num_classes, IGNORE_INDEX) for key in keys}
            same = {key: 0 for key in keys}
            per_image: dict[str, dict[str, float]] = {key: {} for key in keys}
            per_image_accuracy: dict[str, dict[str, float]] = {key: {} for key in keys}
            pixels = 0
            bar = tqdm(list(zip(samples, images, masks)), desc=path.name, unit="img", dynamic_ncols=True)
            for sample, image, mask in bar:
                height, width = image.shape[:2]
                x = cv2.resize(image, (runtimes.width, runtimes.height), interpolation=cv2.INTER_LINEAR)
                maps = {
                    key: cv2.resize(labels.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
                    for key, labels in runtimes.run(x).items()
                }
                pixels += height * width
                for key, labels in maps.items():
                    agree = int((labels == maps["litert"]).sum())
                    same[key] += agree
                    per_image[key][sample.name] = agree / (height * width)
                    if mask is not None:
                        matrices[key].update(torch.from_numpy(labels), torch.from_numpy(mask))
                        valid = mask != IGNORE_INDEX
                        hits = int((labels[valid] == mask[valid]).sum())
                        per_image_accuracy[key][sample.name] = hits / max(int(valid.sum()), 1)
            rows = {}
            for key in keys:
                metrics = matrices[key].compute()
                scored = result["ground_truth_images"] > 0
                rows[key] = {
                    "runtime": RUNTIMES[key],
                    "pixel_accuracy": metrics["pixel_accuracy"] if scored else None,
                    "miou": metrics["miou"] if scored else None,
                    "per_class_iou": [None if v != v else v for v in metrics["per_class_iou"]],  # NaN: class absent
                    "confusion_matrix": metrics["confusion_matrix"],
                    "agreement": same[key] / pixels,
                    "mean_image_agreement": float(np.mean(list(per_image[key].values()))),
                    "per_image_agreement": per_image[key],
                    "per_image_pixel_accuracy": per_image_accuracy[key],
                }
            result["models"][path.name] = {
                "path": str(path),
                "input_size": [runtimes.height, runtimes.width],
                "output_stride": runtimes.output_stride,
                "official_input": "uint8 RGB bytes" if runtimes.raw_input else "float32 (pixel - 128) / 128",
                "official_output": runtimes.official_kind,
                "runtimes": rows,
            }
    table = format_official_table(result)
    header = (
        f"{len(samples)} images ({result['ground_truth_images']} with ground truth: pixel accuracy and mIoU over "
        f"them, one confusion matrix); each stretched to the file's input size (bilinear), class maps back "
        f"with nearest; agreement: pixels of the official runtime's class, over all images; {threads} threads"
    )
    paths = {"table": out_dir / "official.md", "json": out_dir / "official.json"}
    result["files"] = {k: str(v) for k, v in paths.items()}
    paths["table"].write_text(header + "\n\n" + table + "\n")
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{header}\n\n{table}\n\nwrote {paths['table']}, {paths['json']}")
    return result
