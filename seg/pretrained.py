"""The official DeepLab MobileNetV2 releases, by name: downloaded once, verified, converted once.

    from seg import from_pretrained
    model = from_pretrained("mobilenetv2_coco_voc_trainaug")      # a Segmenter in eval mode

    python tools/train.py train.init_from=pretrained:mobilenetv2_coco_voc_trainaug ...
    python -m seg.pretrained                                      # the table of releases

Files live in a cache folder (`~/.cache/seg/pretrained`, or `$SEG_CACHE_DIR`, or `cache_dir=`):
`downloads/<file name>` holds the released file as published, `converted/<name>.pt` this project's
checkpoint made from it. A machine without internet works too: put the released file at the path
the error names and it is used (checked against its published SHA-256 where that is known).
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Optional

from seg.errors import SegError
from seg.files import file_sha256, write_atomically

if TYPE_CHECKING:
    from seg.models.segmenter import Segmenter

PathLike = str | os.PathLike

DEFAULT_CACHE = Path("~/.cache/seg/pretrained")
CACHE_ENV = "SEG_CACHE_DIR"
PREFIX = "pretrained:"  # train.init_from=pretrained:NAME

_CHUNK = 1 << 20
_TIMEOUT_S = 60  # per socket operation, not the whole download: a stalled server fails, a slow one does not


class PretrainedError(SegError, ValueError):
    """An unknown release name, a download that failed or did not match its published checksum."""


@dataclass(frozen=True)
class Release:
    """One official release: where it is published, how to check it, what it is."""

    name: str
    url: str
    sha256: Optional[str]  # full hex digest of the published file; None where no one has recorded it
    file_name: str
    kind: Literal["archive", "tflite"]
    depth_multiplier: float
    output_stride: int  # as the published figure was evaluated (tflite: the one built into the file)
    published: str  # the published figure and where it was published
    description: str
    num_classes: int = 21
    input_size: Optional[int] = None  # tflite files have a fixed input; the archives take any size


_ZOO = "TF DeepLab model zoo"
_QUANT = "TF DeepLab quantize.md"

RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release(
            name="mobilenetv2_coco_voc_trainaug",
            url="http://download.tensorflow.org/models/deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz",
            sha256=None,
            file_name="deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz",
            kind="archive",
            depth_multiplier=1.0,
            output_stride=16,
            published=(
                f"75.32% mIoU VOC 2012 val, OS16 single scale; 77.33% at OS8, scales 0.5:0.25:1.75 + flip ({_ZOO})"
            ),
            description="MobileNetV2 + image-level head; ImageNet -> COCO -> VOC 2012 train_aug",
        ),
        Release(
            name="mobilenetv2_coco_voc_trainval",
            url="http://download.tensorflow.org/models/deeplabv3_mnv2_pascal_trainval_2018_01_29.tar.gz",
            sha256=None,
            file_name="deeplabv3_mnv2_pascal_trainval_2018_01_29.tar.gz",
            kind="archive",
            depth_multiplier=1.0,
            output_stride=8,
            published=f"80.25% mIoU VOC 2012 test, OS8, scales 0.5:0.25:1.75 + flip ({_ZOO})",
            description="MobileNetV2 + image-level head; ImageNet -> COCO -> VOC 2012 train_aug + trainval",
        ),
        Release(
            name="mobilenetv2_dm05_coco_voc_trainaug",
            url="http://download.tensorflow.org/models/deeplabv3_mnv2_dm05_pascal_trainaug_2018_10_01.tar.gz",
            sha256=None,
            file_name="deeplabv3_mnv2_dm05_pascal_trainaug_2018_10_01.tar.gz",
            kind="archive",
            depth_multiplier=0.5,
            output_stride=16,
            published=f"70.19% mIoU VOC 2012 val, OS16 single scale ({_ZOO})",
            description="MobileNetV2 x0.5 + image-level head; ImageNet -> COCO -> VOC 2012 train_aug",
        ),
        Release(
            name="mobilenetv2_dm05_coco_voc_trainval",
            url="http://download.tensorflow.org/models/deeplabv3_mnv2_dm05_pascal_trainval_2018_10_01.tar.gz",
            sha256=None,
            file_name="deeplabv3_mnv2_dm05_pascal_trainval_2018_10_01.tar.gz",
            kind="archive",
            depth_multiplier=0.5,
            output_stride=8,
            published=f"71.83% mIoU VOC 2012 test, OS8 single scale ({_ZOO})",
            description="MobileNetV2 x0.5 + image-level head; ImageNet -> COCO -> VOC 2012 train_aug + trainval",
        ),
        Release(
            name="deeplabv3_257_mv_gpu",
            url="https://storage.googleapis.com/download.tensorflow.org/models/tflite/gpu/deeplabv3_257_mv_gpu.tflite",
            sha256="68a539782c2c6a72f8aac3724600124a85ed977162b44e84cbae5db717c933c6",
            file_name="deeplabv3_257_mv_gpu.tflite",
            kind="tflite",
            depth_multiplier=0.5,
            output_stride=8,
            input_size=257,
            published="no mIoU published (TF Lite's GPU-delegate segmentation sample)",
            description="TF Lite float32, MobileNetV2 x0.5 + image-level head, 257x257 input, batch norm folded",
        ),
        Release(
            name="deeplabv3_mnv2_dm05_pascal_quant",
            url="https://github.com/google-coral/test_data/raw/master/deeplabv3_mnv2_dm05_pascal_quant.tflite",
            sha256="0470d2a782aa54eeeb99d32e7b6b3fb7722905c7c4f5d26bd957ec861366d48b",
            file_name="deeplabv3_mnv2_dm05_pascal_quant.tflite",
            kind="tflite",
            depth_multiplier=0.5,
            output_stride=16,
            input_size=513,
            published=f"69.65% mIoU VOC 2012 val, OS16 single scale, 8-bit ({_QUANT})",
            description="Coral TF Lite uint8 (quantization-aware trained), MobileNetV2 x0.5, 513x513 input",
        ),
        Release(
            name="deeplabv3_mnv2_pascal_quant",
            url="https://github.com/google-coral/test_data/raw/master/deeplabv3_mnv2_pascal_quant.tflite",
            sha256=None,
            file_name="deeplabv3_mnv2_pascal_quant.tflite",
            kind="tflite",
            depth_multiplier=1.0,
            output_stride=16,
            input_size=513,
            published=f"74.26% mIoU VOC 2012 val, OS16 single scale, 8-bit ({_QUANT})",
            description="Coral TF Lite uint8 (quantization-aware trained), MobileNetV2, 513x513 input",
        ),
    )
}


def get_release(name: str) -> Release:
    """The release called `name`; an unknown name is one line listing the known ones."""
    release = RELEASES.get(name)
    if release is None:
        close = difflib.get_close_matches(name, RELEASES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise PretrainedError(f"unknown pretrained model {name!r}{hint}; known: {', '.join(RELEASES)}")
    return release


def cache_root(cache_dir: Optional[PathLike] = None) -> Path:
    """The cache folder: `cache_dir` if given, else `$SEG_CACHE_DIR`, else ~/.cache/seg/pretrained."""
    chosen = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(chosen).expanduser()


def downloaded_path(release: Release, cache_dir: Optional[PathLike] = None) -> Path:
    """Where the released file is kept (and where a user may put it by hand)."""
    return cache_root(cache_dir) / "downloads" / release.file_name


def converted_path(name: str, cache_dir: Optional[PathLike] = None) -> Path:
    """Where this project's checkpoint of release `name` is kept."""
    return cache_root(cache_dir) / "converted" / f"{name}.pt"


def download(release: Release, cache_dir: Optional[PathLike] = None) -> Path:
    """The released file in the cache, downloaded only when it is not already there and sound.

    A file already in `downloads/` (an earlier download, or one put there by hand) is used without
    any network access when it matches the published SHA-256 (or when none is known). Otherwise the
    file is fetched into a temporary beside it, checked, and renamed into place: an interrupted or
    corrupt download never leaves a file that looks complete.
    """
    target = downloaded_path(release, cache_dir)
    expected = release.sha256.lower() if release.sha256 else None
    stale = None
    if target.is_file():
        got = file_sha256(target) if expected else None
        if got == expected:
            return target
        # A damaged or wrong file: replaced by a good download, named if the download fails.
        stale = f"; the file there now has sha256 {got}, not the published {expected}"
    write_atomically(target, lambda tmp: _fetch(release.url, tmp, target, expected, stale or ""))
    return target


def _fetch(url: str, tmp: Path, target: Path, expected: Optional[str], stale: str) -> None:
    """Stream `url` into `tmp`, with a progress bar when the size is known; raise before the rename
    (so `tmp` is discarded) when the transfer fails or the bytes are not the published ones."""
    from tqdm import tqdm

    def offline(reason: object) -> PretrainedError:
        return PretrainedError(f"cannot download {url} ({reason}): download it by hand and put it at {target}{stale}")

    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(tmp, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name, disable=total is None
            ) as bar:
                while chunk := _read(response, offline):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    except PretrainedError:
        raise
    except urllib.error.HTTPError as exc:
        raise offline(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise offline(exc.reason) from None
    except (http.client.HTTPException, TimeoutError, ConnectionError, ValueError) as exc:
        # ValueError: a malformed URL (urllib's "unknown url type").
        raise offline(str(exc) or type(exc).__name__) from None
    if total is not None and size != total:
        raise offline(f"the transfer stopped after {size} of {total} bytes")
    got = digest.hexdigest()
    if expected and got != expected:
        raise PretrainedError(
            f"{url} does not match its published checksum: expected sha256 {expected}, got {got} ({size} bytes); "
            "the download was discarded"
        )


def _read(response: http.client.HTTPResponse, offline: Callable[[object], PretrainedError]) -> bytes:
    # Errors while reading come from the network, not the disk: said as a failed download.
    try:
        return response.read(_CHUNK)
    except (OSError, http.client.HTTPException) as exc:
        raise offline(str(exc) or type(exc).__name__) from None


def pretrained_checkpoint(name: str, cache_dir: Optional[PathLike] = None, url: Optional[str] = None) -> Path:
    """This project's checkpoint of release `name`: downloaded and converted on the first call,
    the cached file on later ones. `url` fetches the release from a mirror instead of its own URL."""
    release = get_release(name)
    target = converted_path(name, cache_dir)
    if target.is_file():
        return target  # written atomically, so a file there is a whole one
    if url:
        release = replace(release, url=url)
    source = download(release, cache_dir)

    # Imported here: the converter brings flatbuffer / protobuf readers that `import seg` should not pay for.
    from seg.engine.checkpoint import save_checkpoint
    from seg.models.official import convert_source

    state = convert_source(source, output_stride=release.output_stride)
    state["provenance"] = {**(state.get("provenance") or {}), "release": release.name, "url": release.url}
    save_checkpoint(target, state)
    return target


def from_pretrained(name: str, cache_dir: Optional[PathLike] = None, url: Optional[str] = None) -> Segmenter:
    """The segmenter of release `name`, in eval mode (downloaded and converted once, then cached).
    It takes images normalised by its own `normalize` (the release's pixel scaling)."""
    from seg.engine.checkpoint import load_segmenter

    model, _ = load_segmenter(pretrained_checkpoint(name, cache_dir, url))
    return model.eval()


def resolve_init_from(value: str, cache_dir: Optional[PathLike] = None) -> str:
    """`pretrained:NAME` -> the path of that release's converted checkpoint; anything else unchanged."""
    if not value.startswith(PREFIX):
        return value
    return str(pretrained_checkpoint(value[len(PREFIX) :].strip(), cache_dir))


def describe_releases() -> str:
    """The releases as a markdown table."""
    rows = [
        "| name | kind | depth multiplier | output stride | published | URL |",
        "|---|---|---|---|---|---|",
    ]
    for r in RELEASES.values():
        kind = r.kind if r.input_size is None else f"{r.kind} ({r.input_size}x{r.input_size})"
        rows.append(
            f"| `{r.name}` | {kind} | {float(r.depth_multiplier)} | {r.output_stride} | {r.published} | <{r.url}> |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(describe_releases())
