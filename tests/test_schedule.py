import io

import pytest
import torch

from seg.engine.schedule import build_scheduler, poly_lr_lambda


def test_poly_values():
    f = poly_lr_lambda(100, power=0.9)
    assert f(0) == 1.0
    assert f(50) == pytest.approx(0.5**0.9)
    assert f(99) == pytest.approx(0.01**0.9)
    assert f(100) == 0.0 and f(150) == 0.0
    assert poly_lr_lambda(10, power=1.0)(3) == pytest.approx(0.7)


def test_warmup_ramp_is_linear_and_joins_poly():
    f = poly_lr_lambda(100, power=0.9, warmup_iters=10, warmup_factor=0.1)
    end = 0.9**0.9  # poly value where warm-up ends
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.1 + (end - 0.1) * 0.5)
    assert f(10) == pytest.approx(end)
    assert f(11) == pytest.approx(0.89**0.9)
    ramp = [f(i) for i in range(11)]
    steps = [b - a for a, b in zip(ramp, ramp[1:])]
    assert all(s == pytest.approx(steps[0]) for s in steps)


def test_bad_arguments():
    with pytest.raises(ValueError):
        poly_lr_lambda(0)
    with pytest.raises(ValueError):
        poly_lr_lambda(10, warmup_iters=10)


def make(max_iters=20, warmup=4):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.01)
    return opt, build_scheduler(opt, max_iters, power=0.9, warmup_iters=warmup)


def test_scheduler_steps_per_iteration():
    opt, sched = make(max_iters=20, warmup=0)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[10] == pytest.approx(0.01 * 0.5**0.9)
    assert opt.param_groups[0]["lr"] == 0.0


def test_state_dict_round_trip_resumes_same_lrs():
    opt, sched = make()
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    expected = []
    for _ in range(5):
        opt.step()
        sched.step()
        expected.append(opt.param_groups[0]["lr"])

    opt2, sched2 = make()  # the schedule itself is rebuilt from the config
    sched2.load_state_dict(state)
    # What a trainer does on resume: the optimizer's lr comes back with its own state_dict.
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    got = []
    for _ in range(5):
        opt2.step()
        sched2.step()
        got.append(opt2.param_groups[0]["lr"])
    assert got == pytest.approx(expected)
    assert state["last_epoch"] == 7
    torch.save(state, buf := io.BytesIO())  # plain values only: loads with weights_only
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["last_epoch"] == 7
