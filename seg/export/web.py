"""`export.format=web`: a self-contained folder that runs the exported segmenter in a web page.

    index.html, app.js, style.css   the page (seg/web/): choose, drop or film an image, see the classes
    model.onnx                      the ONNX model: uint8 RGB NHWC in, normalisation inside (int8 by default)
    model.onnx.json                 its metadata: class names, palette, normalisation, input size, checks
    ort/                            ONNX Runtime Web, copied in from the onnxruntime-web npm package:
                                    ort.wasm.min.js + ort-wasm-simd-threaded.mjs/.wasm (WebAssembly),
                                    ort.webgpu.min.js + ort-wasm-simd-threaded.asyncify.mjs/.wasm (WebGPU)

Nothing is loaded from the internet when the page runs. Its WebAssembly backend uses threads only in a
cross-origin isolated page, which seg/serve.py (`python tools/serve.py DIR`) makes with the COOP/COEP
headers; any static server that sends them does as well.

The page computes the mask as `tools/predict.py` does with a static-size model (seg/export/runtime.py):
the image scaled down to fit the input (OpenCV's area interpolation, never up), padded bottom/right
with the mean colour, the output cropped back and resized to the image (labels: nearest; logits:
bilinear before the argmax).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Optional

from seg.export.common import ExportError, write_metadata
from seg.files import FileClashError, make_folder, require_writable, same_or_inside

WEB_SOURCES = Path(__file__).resolve().parents[1] / "web"  # seg/web: the page, package.json, node_modules/
APP_FILES = ("index.html", "app.js", "style.css")
MODEL_NAME = "model.onnx"
ORT_FOLDER = "ort"
# The ONNX Runtime Web builds the page loads, one or the other: WebAssembly alone (its plain wasm runs
# ~1.5x faster on the CPU than the builds instrumented for WebGPU), and the WebGPU bundle with its native
# WebGPU execution provider (WebAssembly too: the fallback when a WebGPU session fails). Not the JSEP
# bundle (ort.min.js): its WebGPU backend computes our int8 QDQ models wrongly (80% of the pixels agree
# with ONNX Runtime in Python, measured; the native provider: 99.7%, fp32 on either 100%).
ORT_WASM_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
ORT_WEBGPU_FILES = ("ort.webgpu.min.js", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
ORT_FILES = ORT_WASM_FILES + ORT_WEBGPU_FILES
ORT_DIST_ENV = "SEG_ORT_WEB_DIST"  # another onnxruntime-web dist/ folder than seg/web/node_modules's


def npm_hint() -> str:
    """The command that installs onnxruntime-web beside the page: `npm ci --prefix seg/web` from the
    repository (the folder's path as seen from here otherwise, e.g. in an installed package)."""
    relative = os.path.relpath(WEB_SOURCES)
    return f"npm ci --prefix {relative if not relative.startswith('..') else WEB_SOURCES}"


def pinned_ort_web_version() -> Optional[str]:
    """The onnxruntime-web version seg/web/package.json pins."""
    try:
        return json.loads((WEB_SOURCES / "package.json").read_text())["dependencies"]["onnxruntime-web"]
    except (OSError, ValueError, KeyError):
        return None


def ort_web_dist() -> Path:
    """onnxruntime-web's dist/ folder: $SEG_ORT_WEB_DIST, else seg/web/node_modules/onnxruntime-web/dist.
    ExportError in one line when a file the page needs is not there."""
    configured = os.environ.get(ORT_DIST_ENV)
    dist = Path(configured) if configured else WEB_SOURCES / "node_modules" / "onnxruntime-web" / "dist"
    missing = [name for name in ORT_FILES if not (dist / name).is_file()]
    if missing:
        where = f"${ORT_DIST_ENV}={configured}" if configured else str(dist)
        version = pinned_ort_web_version()
        named = ", ".join(missing) if len(missing) <= 2 else f"{missing[0]} and {len(missing) - 1} more"
        raise ExportError(
            f"export.format=web needs ONNX Runtime Web's files ({named} not in {where}): run "
            f"`{npm_hint()}` (or set {ORT_DIST_ENV} to the dist/ folder of onnxruntime-web"
            f"{' ' + version if version else ''})"
        )
    return dist


def ort_web_version(dist: Path) -> Optional[str]:
    """The version of the onnxruntime-web package whose dist/ this is (its package.json)."""
    try:
        return str(json.loads((dist.parent / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def check_web_sources() -> None:
    missing = [name for name in APP_FILES if not (WEB_SOURCES / name).is_file()]
    if missing:
        raise ExportError(f"the web page's files are missing from {WEB_SOURCES}: {', '.join(missing)}")


def default_web_path(checkpoint: Path, int8: bool) -> Path:
    """Beside the checkpoint: best-web-int8/ or best-web-fp32/."""
    return checkpoint.with_name(f"{checkpoint.stem}-web-{'int8' if int8 else 'fp32'}")


def _is_web_export(folder: Path) -> bool:
    """Whether `folder` holds an earlier web export (and nothing to lose by replacing it)."""
    try:
        meta = json.loads((folder / f"{MODEL_NAME}.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("format") == "web" and (folder / "index.html").is_file()


def check_web_destination(path: Path, checkpoint: Path, overwrite: bool) -> None:
    """A new folder; an existing one only with `export.overwrite=true` and only when it holds an
    earlier web export (or nothing); never one holding the checkpoint."""
    if same_or_inside(checkpoint, path) or same_or_inside(path, checkpoint):
        raise FileClashError(
            f"export.path={path} would write over the checkpoint being exported ({checkpoint}): choose another "
            "export.path"
        )
    if path.exists():
        if not path.is_dir():
            raise FileClashError(f"export.path={path} is a file: the web export writes a folder; choose another one")
        if not overwrite:
            raise FileClashError(
                f"{path} already exists: refusing to overwrite this folder; choose another export.path, or set "
                "export.overwrite=true to replace it"
            )
        if any(path.iterdir()) and not _is_web_export(path):
            raise FileClashError(
                f"export.path={path} is a folder that does not hold a web export: refusing to replace it, even with "
                "export.overwrite=true; choose another export.path"
            )
    require_writable(path / "index.html", "export.path")


def write_web_app(path: Path, model: Path, metadata: dict[str, Any], dist: Path) -> None:
    """Assemble the folder beside `path` and move it into place: `path` is either the earlier folder
    or the whole new one, never half of it."""
    check_web_sources()
    path = Path(path)
    make_folder(path.parent)
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    tmp = path.with_name(f".{path.name}.{token}.tmp")
    old = path.with_name(f".{path.name}.{token}.old")
    try:
        tmp.mkdir()
        for name in APP_FILES:
            shutil.copyfile(WEB_SOURCES / name, tmp / name)
        shutil.copyfile(model, tmp / MODEL_NAME)
        write_metadata(tmp / MODEL_NAME, metadata)
        (tmp / ORT_FOLDER).mkdir()
        for name in ORT_FILES:
            shutil.copyfile(dist / name, tmp / ORT_FOLDER / name)
        license_file = dist.parent / "LICENSE"
        if license_file.is_file():
            shutil.copyfile(license_file, tmp / ORT_FOLDER / "LICENSE")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def folder_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20
