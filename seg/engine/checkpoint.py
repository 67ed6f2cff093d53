"""Checkpoints that hold only tensors and plain containers, written atomically.

Loading always uses ``torch.load(..., weights_only=True)``, so a checkpoint can never run code. The
price is that everything saved must be a tensor, a number, a string, None or a container of those;
``save_checkpoint`` checks this up front so a bad entry fails at save time, not at resume time.
"""

from __future__ import annotations

import collections
import errno
import io
import os
import pickle
import pickletools
import random
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml

from seg.errors import DiskFullError, SegError, UnsafeFileError

PathLike = str | os.PathLike

# Types torch's weights_only unpickler accepts that a training state actually uses.
_LEAF_TYPES = (
    torch.Tensor,
    torch.nn.Parameter,
    str,
    bytes,
    int,
    float,
    bool,
    type(None),
    torch.dtype,
    torch.device,
    torch.Size,
)
_CONTAINER_TYPES = (dict, collections.OrderedDict, list, tuple)


class CheckpointError(SegError, RuntimeError):
    """A checkpoint is missing or cannot be read."""


def _check_plain(obj: Any, where: str = "state") -> None:
    t = type(obj)
    if t in _LEAF_TYPES:
        return
    if t in (dict, collections.OrderedDict):
        for k, v in obj.items():
            _check_plain(k, f"{where} key {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if t in _CONTAINER_TYPES:
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} has type {t.__module__}.{t.__qualname__}; checkpoints may hold only tensors, "
        "numbers, strings, None and dict/list/tuple of those (convert numpy values with .tolist() "
        "or torch.from_numpy)"
    )


def save_checkpoint(path: PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: temp file in the same dir, fsync, ``os.replace``.

    A crash or error mid-write leaves any previous file at ``path`` untouched; a full disk raises
    DiskFullError naming the file.
    """
    _check_plain(state)
    path = Path(path)
    # Serialised in memory first: torch's zip writer reports a failed file write as an opaque
    # RuntimeError, while a plain write of the bytes says ENOSPC (checkpoints here are megabytes).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory so os.replace is a rename within one filesystem (atomic on POSIX).
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"no space left on device writing {path} ({len(data) / 2**20:.1f} MB); any previous {path.name} is "
                "intact: free some space and run again (a training run continues with train.resume=auto)"
            ) from None
        raise
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    _fsync_dir(path.parent)


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once at import so no file created by another
    # thread (e.g. an event writer) can ever see the temporary value.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not supported on every OS/filesystem, hence best effort.
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (always ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found (no such file): {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing a file
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses pickled classes and functions and the opcodes that would call them:
        # a well-formed pickle that it refuses is unsafe, not damaged.
        imports = _pickle_imports(path)
        if imports is None:
            raise _corrupt(path, e) from None
        foreign = [name for name in imports if not name.startswith(_TORCH_GLOBALS)]
        what = f"a pickled {foreign[0]}" if foreign else "pickled objects other than tensors and plain values"
        raise UnsafeFileError(
            f"refusing to load {path}: it holds {what}, which could run code when loaded; checkpoints "
            "of this project hold only tensors and plain values. Use a checkpoint written by this project "
            "(or re-save the tensors you trust with seg.engine.checkpoint.save_checkpoint)"
        ) from None
    except Exception as e:  # torch reports damage as RuntimeError, EOFError, struct.error, ...
        raise _corrupt(path, e) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, not a dict; it was not written by save_checkpoint"
        )
    return state


# Globals every torch.save file imports (tensor rebuilding, storages, ordered dicts).
_TORCH_GLOBALS = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.slice", "builtins.bytearray")


def _pickle_imports(path: Path) -> Optional[list[str]]:
    """The globals a checkpoint's pickle imports (module.name), or None when it is no well-formed
    pickle (damage). Reads the opcodes only; nothing is unpickled."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return None
                data = archive.read(member)
        else:
            data = path.read_bytes()
        names, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL" or opcode.name == "INST":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
        return names
    except Exception:  # truncated or not a pickle
        return None


def _corrupt(path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"cannot load checkpoint {path}: file is truncated or corrupt ({type(e).__name__}); "
        "resume from another checkpoint (e.g. best.pt) or retrain"
    )


def rng_state() -> dict:
    """Python, numpy and torch (CPU + every CUDA device) RNG states as weights_only-safe values."""
    py_version, py_internal, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": {
            "version": py_version,
            # 625 words, each < 2**32, so int64 holds them exactly.
            "state": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore RNG states captured by :func:`rng_state`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": npst["key"].cpu().numpy().astype(np.uint32), "pos": int(npst["pos"])},
            "has_gauss": int(npst["has_gauss"]),
            "gauss": float(npst["gauss"]),
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    # A checkpoint from a machine with a different GPU count restores what it can.
    if "cuda" in state and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), device=i)


# Keys with which Hydra's instantiate would call code; a stored config may hold `_target_` only where a
# model part is named, and there only one of this package's builders (checked when building).
_SPECIAL_KEY = re.compile(r"^_\w+_$")
_NAMED_PARTS = {("model", "backbone", "_target_"), ("model", "head", "_target_")}


def _refuse_code(node: Any, path: Path, where: tuple = ()) -> None:
    """Refuse special keys outside `_NAMED_PARTS` and interpolations anywhere (data only)."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = (*where, key)
            if isinstance(key, str) and _SPECIAL_KEY.match(key) and here not in _NAMED_PARTS:
                raise UnsafeFileError(
                    f"refusing {path}: its stored config has {'.'.join(map(str, here))}, which would name code to "
                    "call; a checkpoint's config holds only plain values (a file from outside, not one of ours?)"
                )
            _refuse_code(value, path, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_code(value, path, (*where, str(i)))
    elif isinstance(node, str) and "${" in node:
        raise UnsafeFileError(
            f"refusing {path}: its stored config has an interpolation at {'.'.join(map(str, where))} ({node[:60]!r}); "
            "checkpoints of ours store resolved values only"
        )


def stored_config(state: dict, path: PathLike) -> Any:
    """The config a checkpoint stores, read as data: YAML parsed safely, no special key but the
    model parts' `_target_`, no interpolation anywhere; the `model` and `dataset` sections (the ones
    the tools rebuild from) are checked key by key and type by type against the schema
    (seg/config.py); the other sections are kept as the plain values they are, for information."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from seg.config import HEAD_SCHEMAS, Config

    path = Path(path)
    text = state.get("config")
    if not isinstance(text, str):
        raise CheckpointError(f"{path} is not a checkpoint of this project (no stored config)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path}: its stored config is not valid YAML ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError(f"{path} is not a checkpoint of this project (its stored config has no model section)")
    _refuse_code(data, path)
    head = data["model"].get("head")
    target = head.get("_target_") if isinstance(head, dict) else None
    schema = next((s for s in HEAD_SCHEMAS.values() if s._target_ == target), None)
    if schema is None:
        raise UnsafeFileError(
            f"refusing {path}: its stored config names model.head._target_={target!r}, not one of this "
            f"package's heads ({', '.join(s._target_ for s in HEAD_SCHEMAS.values())})"
        )
    try:
        cfg = OmegaConf.structured(Config)
        cfg.model.head = OmegaConf.structured(schema)
        checked = OmegaConf.merge(cfg, {"model": data["model"], "dataset": data.get("dataset") or {}})
        return OmegaConf.create({**data, "model": checked.model, "dataset": checked.dataset})
    except OmegaConfBaseException as exc:
        reason = str(exc).splitlines()[0]
        raise CheckpointError(
            f"{path}: its stored config does not fit this version's schema ({reason}); was it written by "
            "another version of this project?"
        ) from None


def load_segmenter(path: PathLike, map_location: Any = "cpu") -> tuple[torch.nn.Module, Any]:
    """Rebuild the segmenter a checkpoint was trained as, from the config stored inside it (read as
    data: see `stored_config`), and load its weights. Returns the model (in eval mode) and the stored
    config (a DictConfig with `model` and `dataset`)."""
    return segmenter_from_state(load_checkpoint(path, map_location), path)


def segmenter_from_state(state: dict, path: PathLike) -> tuple[torch.nn.Module, Any]:
    """`load_segmenter` on a checkpoint already read by `load_checkpoint` (`path` names it in errors)."""
    from seg.models import build_segmenter

    if not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} is not a checkpoint of this project (no 'model' weights)")
    stored = stored_config(state, path)
    model = build_segmenter(stored.model, start_weights=False)  # its own weights come next
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:2]
        raise CheckpointError(f"{path}: weights do not fit the model in its own config ({' '.join(first)})") from None
    return model.eval(), stored
