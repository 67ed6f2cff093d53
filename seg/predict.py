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

`predict.input` may also be a glob pattern, a video file (told by its content: NAME_overlay.mp4 and,
with predict.save_frames, NAME/frame_NNNNNN.png) or a webcam index (a live window where a display
exists, else written as a video). Images and frames go to the model predict.batch_size at a time;
with predict.tile, images larger than a tile are segmented at full resolution by a sliding window
(seg/export/runtime.py). A progress bar runs over the images (and each video's frames), and the
last line gives images/s (frames/s).
"""

from __future__ import annotations

import errno
import glob
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from seg.errors import SegError
from seg.files import FileClashError, make_folder, overwrite_key, same_or_inside, write_atomically
from seg.images import ImageReadError, read_image  # noqa: F401  (ImageReadError: importable from here too)
from seg.viz import JPEG_MAX_SIDE, ImageWriteError, overlay, save_overlay_jpeg, save_palette_png


class PredictError(SegError, ValueError):
    """Predict cannot start: missing input, or not exactly one of checkpoint / model."""


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


# Suffixes of the video files predict names in its messages; videos are told by their content.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
# ISO-BMFF brands of still images (HEIF, AVIF), which share MP4's container.
_STILL_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


class VideoReadError(SegError, ValueError):
    """A video file (or a webcam) from which no frame can be read."""


def _video_container(path: Path) -> bool:
    """Whether the file starts as a video container does: MP4 / QuickTime (an `ftyp`, `moov`,
    `mdat`, `free`, `skip` or `wide` box; not a HEIF / AVIF still), AVI (RIFF....AVI ), or Matroska
    / WebM (EBML). FFmpeg alone would also read some text files as a video (its tty demuxer)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    if head[4:8] == b"ftyp":
        return head[8:12] not in _STILL_BRANDS
    return (
        head[4:8] in (b"moov", b"mdat", b"free", b"skip", b"wide")
        or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
        or head[:4] == b"\x1a\x45\xdf\xa3"
    )


def is_video(path: Path) -> bool:
    """Whether `path` is a video, by its content: a video container whose first frame OpenCV
    (cv2.VideoCapture) decodes; the suffix plays no part."""
    if not _video_container(path):
        return False
    import cv2

    capture = cv2.VideoCapture(os.fspath(path))
    try:
        return bool(capture.isOpened() and capture.read()[0])
    finally:
        capture.release()


@dataclass
class Inputs:
    """What `predict.input` names: files (images, videos, others to report), or a webcam."""

    root: Path  # output names are the files' paths under this folder (for a single file: its name)
    files: list[Path]
    folder: bool = False  # root is the input folder: predict writes nothing inside it
    webcam: Optional[int] = None  # a webcam index (no files)


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob pattern before its first wildcard ('photos/**/*.jpg' -> photos)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def find_inputs(spec: Union[str, int, os.PathLike]) -> Inputs:
    """`predict.input` as files: an existing file or folder (recursively, `list_inputs`), else a
    webcam index (digits only, e.g. 0), else a glob pattern (`**` spans folders; hidden files are
    left out), whose output names are the paths under the pattern's fixed folder part."""
    text = os.fspath(spec) if not isinstance(spec, int) else str(spec)
    path = Path(text)
    if path.is_dir():
        return Inputs(path, list_inputs(path), folder=True)
    if path.exists():
        return Inputs(path, [path])
    if text.strip().isdigit():
        return Inputs(Path("."), [], webcam=int(text))
    if glob.has_magic(text):
        files = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
        if not files:
            raise PredictError(f"input={text}: no file matches this pattern")
        return Inputs(_glob_root(text), files)
    return Inputs(path, list_inputs(path))  # says that the input is not found


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


def video_output_paths(output: Path, stem: str) -> tuple[Path, Path]:
    """The overlay video, and the folder of per-frame masks (predict.save_frames), predict writes
    for a video or a webcam whose output name is `stem`."""
    return output / f"{stem}_overlay.mp4", output / stem


def frame_path(frames: Path, index: int) -> Path:
    return frames / f"frame_{index:06d}.png"


_FRAME_NAME = re.compile(r"frame_\d{6}\.png")


def check_no_clash(root: Path, files: list[Path], output: Path, folder: bool = True) -> None:
    """Refuse (FileClashError) an output folder that is, or lies in, the input folder, or that holds
    an input file: predict never writes among the files it reads. `folder=False` (a glob's files):
    `root` is only where output names start, and only the files themselves are protected."""
    out = output.resolve()
    if folder and root.is_dir() and same_or_inside(out, root):
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


def plan_outputs(
    files: list[Path],
    root: Path,
    output: Path,
    overwrite: bool = False,
    videos: Optional[set[Path]] = None,
    save_frames: bool = False,
    folder: bool = True,
    streams: tuple[str, ...] = (),
) -> dict[Path, str]:
    """The output name of each input that opens as an image or is one of `videos`, after every check
    that comes before a write: no clash between inputs and outputs (`check_no_clash`; `folder`: see
    there), no file predict would write that exists already (unless `overwrite`; for a video's
    frame masks, any frame_NNNNNN.png in its folder), and never an input file or a folder as a
    target. `streams`: output names of webcams, checked as videos."""
    check_no_clash(root, files, output, folder)
    videos = videos or set()
    taken: set[str] = set(streams)
    stems = {file: _output_stem(file, root, taken) for file in files if file in videos or _opens_as_image(file)}
    inputs = {file.resolve() for file in files}
    video_stems = [stem for file, stem in stems.items() if file in videos] + list(streams)
    targets = [path for file, stem in stems.items() if file not in videos for path in output_paths(output, stem)]
    targets += [video_output_paths(output, stem)[0] for stem in video_stems]
    frame_folders = [video_output_paths(output, stem)[1] for stem in video_stems] if save_frames else []
    input_tree = root.resolve() if folder and root.is_dir() else None
    for target in targets + frame_folders:  # only a link inside the output folder could lead there
        resolved = target.resolve()
        if resolved in inputs or (input_tree is not None and same_or_inside(resolved, input_tree)):
            what = "an input file" if resolved in inputs else "inside the input folder"
            raise FileClashError(
                f"{target} leads to {resolved}, {what}: predict never writes over its inputs (not even with "
                "predict.overwrite=true); choose another output folder"
            )
    for frames in frame_folders:
        held = next((file for file in inputs if frames.resolve() in file.parents), None)
        if held is not None:
            raise FileClashError(
                f"{frames} holds the input {held}: predict never writes among its inputs; choose another output folder"
            )
        masks = (output / f"{stem}.png" for file, stem in stems.items() if file not in videos)
        clash = next((mask for mask in masks if mask.parent == frames and _FRAME_NAME.fullmatch(mask.name)), None)
        if clash is not None:
            raise FileClashError(
                f"{clash}, the mask of an input image, would be among the frame masks in {frames}: "
                "rename that image or predict it separately"
            )
    existing = []
    for target in targets:
        if target.is_dir():
            raise FileClashError(
                f"{target} is a folder, where predict would write a file: choose another output folder"
            )
        if target.exists() or target.is_symlink():
            existing.append(target)
    for frames in frame_folders:
        if frames.exists() and not frames.is_dir():
            raise FileClashError(
                f"{frames} is a file, where predict would make the folder of a video's frame masks: choose "
                "another output folder"
            )
        found = sorted(f for f in frames.iterdir() if _FRAME_NAME.fullmatch(f.name)) if frames.is_dir() else []
        existing += found
        targets += found
    if existing and not overwrite:
        raise FileClashError(
            f"{existing[0]} already exists ({len(existing)} of the {len(targets)} files predict would write in "
            f"output={output} exist already): refusing to overwrite them; choose another output folder, or set "
            f"{overwrite_key('predict.output')}=true to replace them"
        )
    return stems


def resolve_device(device: str) -> str:
    """`predict.device` as a torch device: auto -> cuda when available, else cpu; cuda without a
    GPU is refused in one line."""
    import torch

    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device[5:]) if device.startswith("cuda:") else 0
        if index >= count:
            found = f"{count} CUDA device(s)" if count else f"no CUDA device (torch {torch.__version__})"
            raise PredictError(f"predict.device={device}: {found} here; use predict.device=cpu or auto")
    return device


def build_predictor(cfg: DictConfig) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The image -> labels function for `checkpoint=` or `model=`, and a line describing it. The
    function also has `predict_batch(images) -> labels` (several images a forward where it can)."""
    check_model_args(cfg)
    p = cfg.predict
    tile_size = int(p.tile_size) if p.tile else None
    if p.model:
        from seg.export.runtime import load_exported

        providers = list(p.providers) if p.providers else None
        predictor = load_exported(p.model, p.threads, p.max_size, providers, tile_size, p.tile_overlap)
        meta = predictor.meta
        height, width = meta["input"]["height"], meta["input"].get("width") or meta["input"]["height"]
        size = f"{height}x{width}" if height else "dynamic size"
        notes = ""
        active = getattr(predictor.runner, "providers", None)
        if providers and active is not None:
            fell_back = [name for name in providers if name not in active]
            notes += f", on {', '.join(active)}" + (f" ({', '.join(fell_back)} failed to start)" if fell_back else "")
        if predictor.tile is not None:
            notes += f", {predictor.tile[0]}x{predictor.tile[1]} tiles"
        if p.batch_size > 1 and not predictor.batchable:
            notes += ", one image a run (its batch size is fixed)"
        if meta.get("official"):  # a TF Lite file with no metadata of ours (read from the file)
            uint8 = ", uint8 input" if meta["normalization"]["included"] else ""
            return predictor, f"model {p.model} (official TF Lite, {size}{uint8}, {meta['output']['kind']}{notes})"
        int8 = ", int8" if meta.get("quantize") else ""
        return predictor, f"model {p.model} ({meta['format']}{int8}, {size}{notes})"
    import torch

    from seg.engine.checkpoint import load_segmenter
    from seg.export.runtime import TorchPredictor
    from seg.fastpath import fast_model

    device = resolve_device(p.device)
    if p.threads:
        torch.set_num_threads(int(p.threads))
    model, stored = load_segmenter(cfg.checkpoint)
    model = model.to(device)
    # On a GPU the fast path folds batch norm and runs channels_last but leaves the graph unfrozen
    # (TorchScript's freezing prepacks for oneDNN, the CPU library).
    model = fast_model(model, freeze=device == "cpu") if p.fast else model
    mode = "fast path" if p.fast else "eager"
    tiles = f", {tile_size}x{tile_size} tiles" if tile_size else ""
    batch = f", batch {p.batch_size}" if p.batch_size > 1 else ""
    predictor = TorchPredictor(model, p.max_size, device, tile_size, p.tile_overlap, p.batch_size)
    return predictor, f"checkpoint {cfg.checkpoint} ({mode}, {device}{tiles}{batch})"


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
    if p.providers and not (p.model and sniff_model_file(p.model) in ("onnx", None)):
        what = f"not to {p.model}" if p.model else "not to a checkpoint (it runs on predict.device)"
        raise PredictError(f"predict.providers: ONNX Runtime's execution providers apply to an .onnx model, {what}")
    if p.model and str(p.device).startswith("cuda"):
        raise PredictError(
            f"predict.device={p.device} applies to checkpoint=: an exported ONNX model runs where "
            "predict.providers says, e.g. predict.providers=[CUDAExecutionProvider,CPUExecutionProvider]"
        )
    if p.providers:
        from seg.export.onnx import check_providers

        check_providers(list(p.providers))
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


def _batch_function(predictor: Callable[[np.ndarray], np.ndarray]) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """The predictor's `predict_batch`, or one image at a time for a plain function."""
    batch = getattr(predictor, "predict_batch", None)
    return batch if batch is not None else (lambda images: [predictor(image) for image in images])


def _progress(total: Optional[int], unit: str, desc: str, enabled: bool):  # -> tqdm
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def _frames(capture, first: np.ndarray, size: tuple[int, int], max_frames: Optional[int]) -> Iterator[np.ndarray]:
    """The frames of an open capture (BGR, `first` already read), all at `size` (w, h), at most
    `max_frames`."""
    import cv2

    frame, count = first, 0
    while max_frames is None or count < max_frames:
        if frame.ndim == 2 or frame.shape[2] != 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR if frame.ndim == 2 else cv2.COLOR_BGRA2BGR)
        if (frame.shape[1], frame.shape[0]) != size:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        yield np.ascontiguousarray(frame)
        count += 1
        if max_frames is not None and count >= max_frames:
            return  # no frame read beyond the last one wanted
        ok, frame = capture.read()
        if not ok:
            return


def _batches(items: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _open_capture(source: Union[Path, int]):  # -> cv2.VideoCapture
    import cv2

    return cv2.VideoCapture(source if isinstance(source, int) else os.fspath(source))


def _capture_fps(capture) -> float:
    import cv2

    fps = capture.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps == fps and 0 < fps <= 1000 else 30.0  # unknown (0, NaN) or absurd: 30


def predict_video(
    predictor: Callable[[np.ndarray], np.ndarray],
    source: Union[Path, int],
    stem: str,
    output: Path,
    alpha: float = 0.5,
    batch_size: int = 1,
    save_frames: bool = False,
    max_frames: Optional[int] = None,
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> int:
    """Segment a video file (or a webcam index) frame by frame: writes `<stem>_overlay.mp4` (the
    overlay, same fps and size, codec mp4v) and with `save_frames` `<stem>/frame_NNNNNN.png`, the
    mask of each frame; stops at the stream's end or after `max_frames`. Returns the frames done.

    The video is written atomically (a run stopped half way leaves no half file), except that a
    webcam stopped by Ctrl-C keeps what was recorded up to then. Raises VideoReadError when no frame
    can be read."""
    import cv2

    webcam = isinstance(source, int)
    name = f"webcam {source}" if webcam else str(source)
    predict_batch = _batch_function(predictor)
    overlay_path, frames = video_output_paths(output, stem)
    capture = _open_capture(source)
    done = 0
    try:
        ok, first = capture.read() if capture.isOpened() else (False, None)
        if not ok:
            raise VideoReadError(f"{name}: cannot read a frame from it (not a video OpenCV can decode)")
        size = (first.shape[1], first.shape[0])
        fps = _capture_fps(capture)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not webcam else 0
        total = min(count, max_frames) if count > 0 and max_frames else (count if count > 0 else max_frames)
        if save_frames:
            make_folder(frames)

        def write(tmp: Path) -> None:
            nonlocal done
            writer = cv2.VideoWriter(os.fspath(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
            if not writer.isOpened():
                raise ImageWriteError(f"cannot write {overlay_path}: OpenCV cannot encode mp4v video here")
            bar = _progress(total, "frame", Path(stem).name, progress)
            try:
                for batch in _batches(_frames(capture, first, size, max_frames), batch_size):
                    rgb = [cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) for frame in batch]
                    for frame, image, labels in zip(batch, rgb, predict_batch(rgb)):
                        if save_frames:
                            mask = frame_path(frames, done)
                            if not overwrite and (mask.exists() or mask.is_symlink()):
                                raise FileClashError(
                                    f"{mask} already exists: refusing to overwrite it; set "
                                    f"{overwrite_key('predict.output')}=true to replace it"
                                )
                            write_atomically(mask, partial(save_palette_png, labels))
                        overlay(image, labels, alpha, out=frame[..., ::-1])  # BGR, in the frame's memory
                        writer.write(frame)
                        done += 1
                        bar.update(1)
            except KeyboardInterrupt:
                if not webcam or done == 0:
                    raise
                log(f"stopped by Ctrl-C after {done} frame(s) of {name}")
            finally:
                bar.close()
                writer.release()

        write_atomically(overlay_path, write)
    finally:
        capture.release()
    return done


def has_display() -> bool:
    """Whether a window can be shown: OpenCV built with a GUI (not opencv-python-headless) and, on
    Linux, an X11 or Wayland display."""
    import cv2

    gui = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    if gui is None or gui.group(1).upper() == "NONE":
        return False
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def show_webcam(
    predictor: Callable[[np.ndarray], np.ndarray],
    index: int,
    alpha: float = 0.5,
    max_frames: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> int:
    """The webcam's overlay live in a window until q or Esc (or Ctrl-C, the window closed, the
    stream's end, `max_frames`); nothing is written. Returns the frames shown."""
    import cv2

    window = f"seg: webcam {index} (q or Esc quits)"
    capture = _open_capture(index)
    shown = 0
    try:
        if not capture.isOpened():
            raise VideoReadError(f"webcam {index}: cannot open it")
        cv2.namedWindow(window, cv2.WINDOW_NORMAL)
        while max_frames is None or shown < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            overlay(rgb, predictor(rgb), alpha, out=frame[..., ::-1])
            cv2.imshow(window, frame)
            shown += 1
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27) or cv2.getWindowProperty(window, cv2.WND_PROP_VISIBLE) < 1:
                break
    except KeyboardInterrupt:
        log(f"stopped by Ctrl-C after {shown} frame(s)")
    finally:
        capture.release()
        cv2.destroyAllWindows()
    if shown == 0:
        raise VideoReadError(f"webcam {index}: cannot read a frame from it")
    return shown


def predict_files(
    predictor: Callable[[np.ndarray], np.ndarray],
    files: list[Path],
    root: Path,
    output: Path,
    alpha: float = 0.5,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
    stems: Optional[dict[Path, str]] = None,
    videos: Optional[set[Path]] = None,
    batch_size: int = 1,
    save_frames: bool = False,
    max_frames: Optional[int] = None,
    progress: bool = False,
    folder: bool = True,
) -> dict[str, Union[int, float]]:
    """Predict each file; unreadable files are reported (one line each) and skipped. Images go to
    the predictor `batch_size` at a time; `videos` (see `is_video`) through `predict_video`.

    Every output path is checked before the first write (`plan_outputs`; `stems` is its result
    when already computed), and every file is written atomically. A large image is handled in
    strips of rows: it is held once as uint8, with its uint8 labels; its overlay is built in its
    own memory (a batch holds `batch_size` images).

    Returns counts: `images` (images and video frames segmented), `skipped` (files), and with
    videos `videos` and `frames`; plus the seconds they took (`image_seconds`, `frame_seconds`)."""
    videos = videos or set()
    if stems is None:
        stems = plan_outputs(files, root, output, overwrite, videos, save_frames, folder)
    make_folder(output)
    predict_batch = _batch_function(predictor)
    counts: dict[str, Union[int, float]] = {"images": 0, "skipped": 0}
    image_seconds, frame_seconds, frames_done, videos_done = 0.0, 0.0, 0, 0
    pending: list[tuple[Path, np.ndarray]] = []
    bar = _progress(sum(file not in videos for file in files), "img", "predict", progress and len(videos) < len(files))

    def flush() -> None:
        if not pending:
            return
        start = time.perf_counter()
        labels = predict_batch([image for _, image in pending])
        ms = 1000 * (time.perf_counter() - start) / len(pending)
        for k, (file, image) in enumerate(pending):
            height, width = image.shape[:2]
            mask_path, overlay_path = output_paths(output, stems[file])
            write_atomically(mask_path, partial(save_palette_png, labels[k]))
            if max(height, width) <= JPEG_MAX_SIDE:
                # The image is not needed after this: the overlay is built in its memory.
                write_atomically(overlay_path, partial(_overlay_into, image, labels[k], alpha))
            else:
                log(f"no overlay for {file}: JPEG allows at most {JPEG_MAX_SIDE} pixels a side")
            pending[k] = (file, None)  # type: ignore[assignment]  # each image goes once written
            labels[k] = None  # type: ignore[call-overload]
            del image
            log(f"{file} -> {mask_path} ({width}x{height}, {ms:.0f} ms)")
            counts["images"] += 1
            bar.update(1)
        pending.clear()

    try:
        for file in files:
            if file in videos and file in stems:
                flush()
                start = time.perf_counter()
                try:
                    done = predict_video(predictor, file, stems[file], output, alpha, batch_size, save_frames,
                                         max_frames, overwrite, progress, log)  # fmt: skip
                except VideoReadError as exc:
                    log(f"skipped {exc}")
                    counts["skipped"] += 1
                    continue
                frame_seconds += time.perf_counter() - start
                log(f"{file} -> {video_output_paths(output, stems[file])[0]} ({done} frame(s))")
                frames_done, videos_done = frames_done + done, videos_done + 1
                continue
            start = time.perf_counter()
            try:
                image = read_image(file)
            except ImageReadError as exc:
                why = str(exc)
                if file.suffix.lower() in VIDEO_SUFFIXES:
                    why = f"{file}: not a video OpenCV can decode, nor an image"
                log(f"skipped {why}")
                counts["skipped"] += 1
                bar.update(1)
                continue
            if file not in stems:  # it did not open as an image when the outputs were checked
                log(f"skipped {file}: it changed while predicting (not an image when predict started)")
                counts["skipped"] += 1
                bar.update(1)
                continue
            pending.append((file, image))
            del image  # held by the batch only, until written
            if len(pending) >= batch_size:
                flush()
            image_seconds += time.perf_counter() - start
        start = time.perf_counter()
        flush()
        image_seconds += time.perf_counter() - start
    finally:
        bar.close()
    counts["images"] += frames_done
    if videos_done:
        counts.update(videos=videos_done, frames=frames_done)
    counts.update(image_seconds=image_seconds, frame_seconds=frame_seconds)
    return counts


def _rate(count: int, seconds: float, unit: str) -> str:
    return f"{count / seconds:.1f} {unit}/s" if seconds > 0 and count else f"0 {unit}/s"


_REQUIRED = "input= (an image, a folder, a glob pattern, a video or a webcam index) and output=DIR are required"


def run_predict(cfg: DictConfig, log: Callable[[str], None] = print) -> dict[str, int]:
    """`tools/predict.py`: everything `predict.input` names (an image, a folder, a glob pattern, a
    video, a webcam index) into `predict.output`.

    Everything that could stop the run is checked before the model loads and before anything is
    written: the model arguments, the input, clashes between inputs and outputs, existing outputs.
    Returns `images` (images and video frames segmented: the tool exits 1 when none was) and
    `skipped` (files reported and left out), plus `videos` and `frames` when videos ran."""
    if log is print:  # lines above the progress bar, not through it
        from tqdm import tqdm

        log = tqdm.write
    p = cfg.predict
    if p.input is None or str(p.input) == "":
        raise PredictError(_REQUIRED)
    check_model_args(cfg)
    source = find_inputs(p.input)
    display = False
    if source.webcam is not None:
        display = has_display() if p.display is None else bool(p.display)
    if not p.output and not display:
        raise PredictError(_REQUIRED)
    output = Path(p.output) if p.output else Path(".")
    overwrite, save_frames = bool(p.overwrite), bool(p.save_frames)
    max_frames = int(p.max_frames) if p.max_frames else None
    if source.webcam is not None and display:
        predictor, what = build_predictor(cfg)
        log(f"webcam {source.webcam} with {what}: a live window, q or Esc quits (nothing is written)")
        start = time.perf_counter()
        shown = show_webcam(predictor, source.webcam, p.alpha, max_frames, log)
        log(f"{shown} frame(s) shown ({_rate(shown, time.perf_counter() - start, 'frames')})")
        return {"images": shown, "skipped": 0, "frames": shown}
    stream = f"webcam{source.webcam}" if source.webcam is not None else None
    videos = {file for file in source.files if not _opens_as_image(file) and is_video(file)}
    stems = plan_outputs(source.files, source.root, output, overwrite, videos, save_frames, source.folder,
                         (stream,) if stream else ())  # fmt: skip
    if output.is_dir() and not os.access(output, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "permission denied", str(output))
    predictor, what = build_predictor(cfg)
    if stream is not None:
        until = (
            f"after {max_frames} frame(s)" if max_frames else "the stream ends or Ctrl-C (or set predict.max_frames)"
        )
        log(f"webcam {source.webcam} with {what}: no display, writing {output} until {until}")
        make_folder(output)
        start = time.perf_counter()
        try:
            done = predict_video(predictor, source.webcam, stream, output, p.alpha, p.batch_size, save_frames,
                                 max_frames, overwrite, bool(p.progress), log)  # fmt: skip
        except KeyboardInterrupt:  # before the first frame was written: nothing kept
            log("stopped by Ctrl-C before any frame was written")
            return {"images": 0, "skipped": 0, "frames": 0}
        rate = _rate(done, time.perf_counter() - start, "frames")
        log(f"{done} frame(s) of webcam {source.webcam} written to {video_output_paths(output, stream)[0]} ({rate})")
        return {"images": done, "skipped": 0, "frames": done}
    log(f"predicting {len(source.files)} file(s) with {what}")
    counts = predict_files(predictor, source.files, source.root, output, p.alpha, log, overwrite, stems, videos,
                           p.batch_size, save_frames, max_frames, bool(p.progress), source.folder)  # fmt: skip
    image_seconds, frame_seconds = counts.pop("image_seconds"), counts.pop("frame_seconds")
    frames = int(counts.get("frames", 0))
    images = int(counts["images"]) - frames
    rate = f" ({_rate(images, image_seconds, 'images')})" if images else ""
    parts = [f"{images} image(s) written to {output}{rate}"]
    if "videos" in counts:
        parts.append(f"{frames} frame(s) of {counts['videos']} video(s) ({_rate(frames, frame_seconds, 'frames')})")
    if counts["skipped"]:
        parts.append(f"{counts['skipped']} skipped")
    log(", ".join(parts))
    return counts  # type: ignore[return-value]
