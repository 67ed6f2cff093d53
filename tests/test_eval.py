import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, compose_config
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from seg.data import build_dataset
from seg.data.transforms import build_eval_transform
from seg.engine.checkpoint import save_checkpoint
from seg.engine.evaluator import evaluate, predict_probs, run_evaluation
from seg.engine.trainer import train
from seg.models import build_segmenter


def small_model(*overrides: str) -> nn.Module:
    torch.manual_seed(0)
    return build_segmenter(compose_config("backbone=mnv3_small", "head=deeplabv3", *overrides).model).eval()


def test_single_scale_without_flip_is_plain_inference():
    model = small_model()
    x = torch.randn(1, 3, 75, 101)
    with torch.no_grad():
        logits = model(x)
    probs = predict_probs(model, x, scales=[1.0], flip=False)
    torch.testing.assert_close(probs, logits.softmax(dim=1))
    assert torch.equal(probs.argmax(1), logits.argmax(1))


class PerPixel(nn.Module):
    """A flip-equivariant model: a 1x1 conv (no spatial context at all)."""

    align_corners = False

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x, output_size=None):
        out = self.conv(x)
        return out if output_size is None else nn.functional.interpolate(out, size=output_size, mode="bilinear")


def test_flip_averaging():
    torch.manual_seed(0)
    # a flip-equivariant model: flip averaging changes nothing
    model = PerPixel()
    x = torch.randn(1, 3, 20, 33)
    torch.testing.assert_close(predict_probs(model, x, flip=True), predict_probs(model, x, flip=False))
    # a real model on a left-right symmetric input: the flip-averaged probabilities are the
    # average of the prediction and its mirror image, hence symmetric themselves
    model = small_model()
    half = torch.randn(1, 3, 64, 32)
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)
    plain = predict_probs(model, symmetric)
    averaged = predict_probs(model, symmetric, flip=True)
    torch.testing.assert_close(averaged, (plain + plain.flip(-1)) / 2)
    torch.testing.assert_close(averaged, averaged.flip(-1))


def test_multi_scale_averages_probabilities_at_the_original_size():
    model = small_model()
    x = torch.randn(1, 3, 65, 49)
    probs = predict_probs(model, x, scales=[0.5, 1.0, 1.75], flip=True)
    assert probs.shape == (1, 21, 65, 49)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 65, 49))
    one = predict_probs(model, x, scales=[1.0])
    half = nn.functional.interpolate(x, size=(33, 25), mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = (one + model(half, output_size=(65, 49)).softmax(1)) / 2
    torch.testing.assert_close(predict_probs(model, x, scales=[1.0, 0.5]), expected)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_evaluate_counts_every_labelled_pixel_once():
    g = torch.Generator().manual_seed(0)
    items = []
    for h, w in [(40, 60), (33, 21), (50, 50)]:
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        mask = torch.randint(0, 21, (h, w), generator=g)
        mask[:3] = 255
        items.append((image, mask))
    metrics = evaluate(small_model(), ListDataset(items), num_classes=21, progress=False)
    labelled = sum(int((m != 255).sum()) for _, m in items)
    assert np.asarray(metrics["confusion_matrix"]).sum() == labelled
    assert metrics["num_images"] == 3
    limited = evaluate(small_model(), ListDataset(items), num_classes=21, max_images=2, progress=False)
    assert limited["num_images"] == 2


def test_the_report_counts_the_multiply_adds_of_the_images_evaluated():
    from seg.flops import count_multiply_adds

    g = torch.Generator().manual_seed(0)
    items = [
        (torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), torch.zeros(h, w, dtype=torch.long))
        for h, w in [(40, 60), (33, 21)]
    ]
    model = small_model()
    metrics = evaluate(model, ListDataset(items), num_classes=21, scales=[1.0, 0.5], flip=True, progress=False)
    expected = 0
    for h, w in [(40, 60), (33, 21)]:
        expected += 2 * count_multiply_adds(model, h, w)  # scale 1.0, flipped too
        expected += 2 * count_multiply_adds(model, int((h - 1) * 0.5) + 1, int((w - 1) * 0.5) + 1)
    assert metrics["multiply_adds_per_image"] == expected / 2 and metrics["device"] == "cpu"


def test_output_stride_switch_at_eval_changes_nothing_but_dilations(tmp_path):
    cfg = compose_config(
        "backbone=mnv3_small",
        "head=deeplabv3",
        "dataset.root=" + str(tmp_path / "synthetic"),
        "dataset.synthetic.num_train=2",
        "dataset.synthetic.num_val=3",
        "dataset.synthetic.image_size=64",
    )
    torch.manual_seed(0)
    model = build_segmenter(cfg.model)
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": OmegaConf.to_yaml(cfg, resolve=True)})
    cfg.checkpoint = str(ckpt)
    cfg.eval.output_stride = 8
    report = run_evaluation(cfg, tmp_path / "run")

    at8 = build_segmenter(compose_config("backbone=mnv3_small", "head=deeplabv3", "model.output_stride=8").model)
    at8.load_state_dict(model.state_dict())
    dataset = build_dataset(cfg.dataset, "val", build_eval_transform())
    expected = evaluate(at8, dataset, num_classes=21, progress=False)
    assert report["output_stride"] == 8
    assert report["confusion_matrix"] == expected["confusion_matrix"]

    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in (
        "miou",
        "per_class_iou",
        "pixel_accuracy",
        "output_stride",
        "scales",
        "flip",
        "seconds_per_image",
        "num_images",
        "confusion_matrix",
    ):
        assert key in written
    assert len(written["confusion_matrix"]) == 21 and len(written["confusion_matrix"][0]) == 21
    assert (tmp_path / "run" / "confusion_matrix.png").is_file()


def test_eval_on_the_real_voc_sample(real_fixtures, tmp_path):
    cfg = compose_config(
        "backbone=mnv2_dm05",
        "head=aspp_lite",
        "dataset=voc",
        f"dataset.root={real_fixtures}",
        "model.backbone.pretrained=null",
    )
    torch.manual_seed(0)
    model = build_segmenter(cfg.model)
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": OmegaConf.to_yaml(cfg, resolve=True)})
    cfg.checkpoint = str(ckpt)
    cfg.eval.scales = [0.5, 1.0, 1.75]
    cfg.eval.flip = True
    cfg.eval.output_stride = 8
    cfg.eval.save_predictions = True
    report = run_evaluation(cfg, tmp_path / "run")
    mask = np.array(Image.open(real_fixtures / "VOCdevkit/VOC2012/SegmentationClass/2007_000063.png"))
    assert report["num_images"] == 1
    assert np.asarray(report["confusion_matrix"]).sum() == int((mask != 255).sum())
    assert np.asarray(report["confusion_matrix"]).sum(1)[[0, 9, 12]].all()  # background, chair, dog
    saved = Image.open(tmp_path / "run" / "predictions" / "2007_000063.png")
    assert saved.mode == "P" and saved.size == (500, 375)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from seg.engine.checkpoint import CheckpointError

    cfg = compose_config()
    cfg.checkpoint = str(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="nope.pt"):
        run_evaluation(cfg, tmp_path / "run")


def test_pad_to_evaluates_on_the_padded_crop_and_crops_back():
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8, generator=g)
    mask = torch.randint(0, 21, (40, 30), generator=g)
    model = small_model("model.normalization=deeplab")
    seen = {}
    metrics = evaluate(
        model,
        ListDataset([(image, mask)]),
        num_classes=21,
        pad_to=65,
        progress=False,
        on_prediction=lambda i, img, pred, gt: seen.update(pred=pred),
    )
    from seg.data.transforms import normalize

    padded = nn.functional.pad(normalize(image[None], "deeplab"), (0, 35, 0, 25))  # zeros = the mean pixel
    with torch.no_grad():
        expected = model(padded).argmax(1)[0, :40, :30]
    assert torch.equal(seen["pred"], expected)
    assert np.asarray(metrics["confusion_matrix"]).sum() == 40 * 30
    with pytest.raises(ValueError, match="eval.pad_to=16"):
        evaluate(model, ListDataset([(image, mask)]), num_classes=21, pad_to=16, progress=False)


@pytest.mark.slow
def test_end_to_end_eval_of_a_briefly_trained_checkpoint(tmp_path):
    """tools/eval.py on a checkpoint from a few training iterations: the model and the dataset come
    from the checkpoint's config, and single-scale evaluation reproduces the trainer's own val
    evaluation; multi-scale + flip at OS8 then runs on the same checkpoint."""
    root = tmp_path / "synthetic"
    cfg = compose_config(
        "head=lraspp",
        f"dataset.root={root}",
        "dataset.synthetic.num_train=8",
        "dataset.synthetic.num_val=3",
        "dataset.synthetic.image_size=48",
        "dataset.num_workers=0",
        "train.max_iters=3",
        "train.warmup_iters=0",
        "train.batch_size=4",
        "train.crop_size=32",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.progress=false",
        "train.vis_images=1",
    )
    trained = train(cfg, tmp_path / "train")
    ckpt = tmp_path / "train" / "checkpoints" / "last.pt"

    repo = CONF_DIR.parent
    for run, extra in (
        ("single", []),
        ("multi", ["eval.output_stride=8", "eval.scales=[0.75,1.0,1.25]", "eval.flip=true"]),
    ):
        out = subprocess.run(
            [
                sys.executable,
                str(repo / "tools" / "eval.py"),
                f"checkpoint={ckpt}",
                f"hydra.run.dir={tmp_path / run}",
                *extra,
            ],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert single["num_images"] == 3 and single["miou"] == pytest.approx(trained["miou"], abs=1e-9)
    multi = json.loads((tmp_path / "multi" / "metrics.json").read_text())
    assert multi["output_stride"] == 8 and multi["scales"] == [0.75, 1.0, 1.25] and multi["flip"] is True
    assert np.asarray(multi["confusion_matrix"]).sum() == np.asarray(single["confusion_matrix"]).sum()
