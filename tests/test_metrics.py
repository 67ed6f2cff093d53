import math

import numpy as np
import pytest
import torch

from seg.metrics import ConfusionMatrix


def brute_force(preds, targets, n, ignore=255):
    """Straightforward reference: count pixel by pixel, then the textbook formulas."""
    m = np.zeros((n, n), dtype=np.int64)
    for p_img, t_img in zip(preds, targets):
        for p, t in zip(p_img.ravel(), t_img.ravel()):
            if t == ignore or t < 0 or t >= n:
                continue
            m[t, p] += 1
    tp = np.diag(m).astype(float)
    gt, pr = m.sum(1), m.sum(0)
    union = gt + pr - tp
    iou = [tp[c] / union[c] if union[c] > 0 else math.nan for c in range(n)]
    acc = [tp[c] / gt[c] if gt[c] > 0 else math.nan for c in range(n)]
    freq = gt / m.sum()
    fw = sum(freq[c] * iou[c] for c in range(n) if union[c] > 0)
    return m, iou, np.nanmean(iou), tp.sum() / m.sum(), np.nanmean(acc), fw


def random_batch(rng, n_cls, shape=(3, 17, 23)):
    target = rng.integers(0, n_cls, size=shape)
    target[rng.random(shape) < 0.15] = 255
    pred = np.where(rng.random(shape) < 0.6, np.clip(target, 0, n_cls - 1), rng.integers(0, n_cls, size=shape))
    return pred, target


def test_matches_brute_force():
    rng = np.random.default_rng(0)
    n = 6
    pred, target = random_batch(rng, n)
    cm = ConfusionMatrix(n)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8))
    got = cm.compute()
    m, iou, miou, pa, mca, fw = brute_force(pred, target, n)
    assert got["confusion_matrix"] == m.tolist()
    np.testing.assert_allclose(got["per_class_iou"], iou)
    assert got["miou"] == pytest.approx(miou)
    assert got["pixel_accuracy"] == pytest.approx(pa)
    assert got["mean_class_accuracy"] == pytest.approx(mca)
    assert got["frequency_weighted_iou"] == pytest.approx(fw)


def test_many_updates_equal_one_update_not_mean_of_images():
    rng = np.random.default_rng(1)
    n = 5
    pred, target = random_batch(rng, n, shape=(4, 9, 11))
    one = ConfusionMatrix(n)
    one.update(torch.from_numpy(pred), torch.from_numpy(target))
    many = ConfusionMatrix(n)
    per_image = []
    for i in range(4):
        many.update(torch.from_numpy(pred[i]), torch.from_numpy(target[i]))  # [H, W] form
        single = ConfusionMatrix(n)
        single.update(torch.from_numpy(pred[i]), torch.from_numpy(target[i]))
        per_image.append(single.compute()["miou"])
    assert many.compute()["confusion_matrix"] == one.compute()["confusion_matrix"]
    assert many.compute()["miou"] == pytest.approx(one.compute()["miou"])
    # The split-level number is not the average of per-image mIoUs.
    assert one.compute()["miou"] != pytest.approx(float(np.mean(per_image)))


def test_class_absent_is_nan_and_excluded():
    target = torch.tensor([[0, 0, 1, 1], [0, 1, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 1, 2, 0]])  # class 2 only under ignore pixels
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    r = cm.compute()
    assert math.isnan(r["per_class_iou"][2]) and math.isnan(r["per_class_iou"][3])
    # class 0: tp 2, gt 3, pred 2 -> 2/3 ; class 1: tp 3, gt 3, pred 4 -> 3/4
    assert r["per_class_iou"][0] == pytest.approx(2 / 3)
    assert r["per_class_iou"][1] == pytest.approx(3 / 4)
    assert r["miou"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert r["pixel_accuracy"] == pytest.approx(5 / 6)


def test_predicted_but_absent_class_counts_as_zero():
    target = torch.tensor([0, 0, 0, 0])
    pred = torch.tensor([0, 0, 0, 1])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    r = cm.compute()
    assert r["per_class_iou"][1] == 0.0  # false positives of a class missing from gt
    assert math.isnan(r["per_class_iou"][2])
    assert r["miou"] == pytest.approx((3 / 4 + 0.0) / 2)


def test_perfect_prediction_and_out_of_range_targets():
    rng = np.random.default_rng(2)
    target = torch.from_numpy(rng.integers(0, 21, size=(2, 8, 8)))
    cm = ConfusionMatrix(21)
    noisy = target.clone()
    noisy[0, 0, 0] = 255
    noisy[0, 0, 1] = 30  # outside [0, num_classes): ignored like 255
    noisy[0, 0, 2] = -1
    cm.update(target, noisy)
    r = cm.compute()
    assert r["miou"] == 1.0 and r["pixel_accuracy"] == 1.0
    assert r["mean_class_accuracy"] == 1.0 and r["frequency_weighted_iou"] == pytest.approx(1.0)
    assert sum(map(sum, r["confusion_matrix"])) == 2 * 64 - 3


def test_reset_empty_and_bad_input():
    cm = ConfusionMatrix(3)
    r = cm.compute()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_accuracy"])
    cm.update(torch.tensor([1, 2]), torch.tensor([1, 2]))
    cm.reset()
    assert sum(map(sum, cm.compute()["confusion_matrix"])) == 0
    with pytest.raises(ValueError):
        cm.update(torch.tensor([1, 2]), torch.tensor([1, 2, 0]))
    with pytest.raises(ValueError):
        cm.update(torch.tensor([1, 3]), torch.tensor([1, 2]))


def test_all_reduce_is_noop_without_process_group():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    before = cm.compute()["confusion_matrix"]
    cm.all_reduce()
    assert cm.compute()["confusion_matrix"] == before == [[1, 1], [0, 1]]
