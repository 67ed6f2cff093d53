import os
import random

import numpy as np
import pytest
import torch

import seg.engine.checkpoint as ckpt
from seg.engine.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from seg.engine.schedule import build_scheduler
from seg.errors import UnsafeFileError


def full_state():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    sched = build_scheduler(opt, max_iters=100, power=0.9, warmup_iters=5)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    model(torch.randn(2, 3, 8, 8)).mean().backward()
    opt.step()
    sched.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "iteration": 1,
        "rng": rng_state(),
        "config": "model:\n  backbone: mnv2\n",
        "metrics": {"miou": 0.5, "per_class_iou": [0.5, float("nan")], "best": None},
    }


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b


def test_round_trip_full_state_with_weights_only(tmp_path):
    state = full_state()
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    save_checkpoint(path, state)
    # load_checkpoint uses weights_only=True; also check plain torch.load agrees.
    assert_same(state, load_checkpoint(path))
    assert_same(state, torch.load(path, weights_only=True))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"iteration": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def failing_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")  # a partial write, then a crash
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"iteration": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(path)["iteration"] == 1


def test_unpicklable_object_is_refused_before_writing(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"iteration": 1})

    class Opaque:
        pass

    with pytest.raises(TypeError, match=r"metrics.*'miou'.*numpy"):
        save_checkpoint(path, {"iteration": 2, "metrics": {"miou": np.float64(0.5)}})
    with pytest.raises(TypeError, match="Opaque"):
        save_checkpoint(path, {"iteration": 2, "extra": [Opaque()]})
    assert load_checkpoint(path) == {"iteration": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_file_error_names_path(tmp_path):
    path = tmp_path / "nope" / "best.pt"
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg and "not found" in msg and "\n" not in msg


def test_corrupt_file_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.ones(100)})
    path.write_bytes(path.read_bytes()[:50])  # truncated
    with pytest.raises(CheckpointError, match="last.pt.*corrupt"):
        load_checkpoint(path)
    for junk in (b"not a checkpoint at all", b"junk", b""):
        path.write_bytes(junk)
        with pytest.raises(CheckpointError, match="last.pt.*corrupt"):
            load_checkpoint(path)


def test_untrusted_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"fn": random.Random()}, path)  # arbitrary object: weights_only must refuse it
    with pytest.raises(UnsafeFileError, match="refusing to load .*evil.pt.*random.Random.*could run code"):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="not a dict"):
        load_checkpoint(path)


def test_rng_state_restores_all_generators(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in the python state
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"rng": rng_state()})
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3))
    set_rng_state(load_checkpoint(path)["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3))
    assert got[:4] == expected[:4]
    assert torch.equal(got[4], expected[4])
