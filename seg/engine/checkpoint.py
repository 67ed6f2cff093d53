"""Checkpoints that hold only tensors and plain containers, written atomically.

Loading always uses ``torch.load(..., weights_only=True)``, so a checkpoint can never run code. The
price is that everything saved must be a tensor, a number, a string, None or a container of those;
``save_checkpoint`` checks this up front so a bad entry fails at save time, not at resume time.
"""

from __future__ import annotations

import collections
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

PathLike = str | os.PathLike

# Types torch's weights_only unpickler accepts that a training state actually uses.
_LEAF_TYPES = (torch.Tensor, torch.nn.Parameter, str, bytes, int, float, bool, type(None),
               torch.dtype, torch.device, torch.Size)
_CONTAINER_TYPES = (dict, collections.OrderedDict, list, tuple)


class CheckpointError(RuntimeError):
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

    A crash or error mid-write leaves any previous file at ``path`` untouched.
    """
    _check_plain(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory so os.replace is a rename within one filesystem (atomic on POSIX).
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
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
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses pickled classes/functions ("globals"); anything else is damage.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(
                f"refusing to load checkpoint {path}: it contains a pickled {found.group(1)}, "
                "so it was not written by save_checkpoint; re-save its tensors with "
                "save_checkpoint from a trusted session, or use another checkpoint"
            ) from e
        raise _corrupt(path, e) from e
    except Exception as e:  # torch reports damage as RuntimeError, EOFError, struct.error, ...
        raise _corrupt(path, e) from e
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, not a dict; it was not written by "
            "save_checkpoint"
        )
    return state


def _corrupt(path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"cannot load checkpoint {path}: file is truncated or corrupt ({type(e).__name__}); "
        "delete it and resume from another checkpoint (e.g. best.pt) or retrain"
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
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()),
                     py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state({
        "bit_generator": npst["bit_generator"],
        "state": {"key": npst["key"].cpu().numpy().astype(np.uint32), "pos": int(npst["pos"])},
        "has_gauss": int(npst["has_gauss"]),
        "gauss": float(npst["gauss"]),
    })
    torch.set_rng_state(state["torch"].cpu())
    # A checkpoint from a machine with a different GPU count restores what it can.
    if "cuda" in state and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), device=i)


def load_segmenter(path: PathLike, map_location: Any = "cpu") -> tuple[torch.nn.Module, Any]:
    """Rebuild the segmenter a checkpoint was trained as, from the config stored inside it, and load
    its weights. Returns the model (in eval mode) and the stored config (a DictConfig)."""
    from omegaconf import OmegaConf

    from seg.models import build_segmenter

    state = load_checkpoint(path, map_location)
    if "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no 'model' / 'config' entries)")
    stored = OmegaConf.create(state["config"])
    model = build_segmenter(stored.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model in its own config ({exc})") from exc
    return model.eval(), stored
