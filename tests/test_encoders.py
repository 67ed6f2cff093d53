"""MobileNetV1 and MnasNet encoders: every head at every output stride, output-stride switching,
torchvision weights, ONNX export, and the classification forms' multiply-adds and parameters
against the papers (and torchvision); the one-layer worked example."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from conftest import compose_config, randomize_batchnorm
from omegaconf import OmegaConf

from seg.engine.checkpoint import save_checkpoint
from seg.export import run_export
from seg.flops import count_multiply_adds, count_parameters, separable_layer_example
from seg.models import build_segmenter
from seg.models.classifier import build_classifier
from seg.models.mnasnet import mnasnet_a1, mnasnet_b1
from seg.models.mobilenet_v1 import mobilenet_v1
from seg.models.weights import WeightsError

BACKBONES = ["mnv1", "mnasnet_b1", "mnasnet_a1"]
HEADS = ["aspp_lite", "deeplabv3", "deeplabv3plus", "lraspp"]
SIZE = 65


def build(backbone: str, head: str, output_stride: int = 16, num_classes: int = 21):
    cfg = compose_config(f"backbone={backbone}", f"head={head}", f"model.output_stride={output_stride}",
                         f"dataset.num_classes={num_classes}")  # fmt: skip
    return build_segmenter(cfg.model).eval()


# --- segmentation: every head, every output stride ------------------------------------------


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_head_at_every_output_stride(backbone):
    for head in HEADS:
        model = build(backbone, head, num_classes=5)
        x = torch.randn(1, 3, SIZE, SIZE)
        for os_ in (8, 16, 32):
            model.set_output_stride(os_)
            with torch.no_grad():
                feats = model.backbone(x)
                logits = model(x)
            assert logits.shape == (1, 5, SIZE, SIZE) and torch.isfinite(logits).all()
            assert feats["low_level"].shape[-2:] == (math.ceil(SIZE / 4),) * 2
            assert feats["mid_level"].shape[-2:] == (math.ceil(SIZE / 8),) * 2
            assert feats["out"].shape[-2:] == (math.ceil(SIZE / os_),) * 2
            for name, tensor in feats.items():
                assert tensor.shape[1] == model.backbone.channels[name]


def test_feature_channels_and_widths():
    assert mobilenet_v1().channels == {"low_level": 128, "mid_level": 256, "out": 1024}
    assert mobilenet_v1(0.25).channels == {"low_level": 32, "mid_level": 64, "out": 256}
    assert len(mobilenet_v1().blocks) == 13  # + the stem conv + the FC: the paper's 28 layers with depthwise
    assert mnasnet_b1().channels == {"low_level": 24, "mid_level": 40, "out": 320}
    assert mnasnet_b1(0.5).channels == {"low_level": 16, "mid_level": 24, "out": 160}  # multiples of 8
    a1 = mnasnet_a1()
    assert a1.channels == {"low_level": 24, "mid_level": 40, "out": 320}
    se_blocks = [i for i, b in enumerate(a1.blocks) if b.se is not None]
    assert len(se_blocks) == 3 + 2 + 3  # the 40-, 112- and 160-channel stages (Figure 7)
    assert isinstance(a1.blocks[se_blocks[0]].se.gate, torch.nn.Sigmoid)
    assert a1.blocks[se_blocks[0]].se.fc1.out_channels == 6  # a quarter of the block's 24 input channels


@pytest.mark.parametrize("backbone,head", [("mnv1", "deeplabv3plus"), ("mnasnet_b1", "deeplabv3"),
                                           ("mnasnet_a1", "lraspp")])  # fmt: skip
def test_set_output_stride_equals_a_model_built_at_that_stride(backbone, head):
    torch.manual_seed(0)
    at16 = build(backbone, head, output_stride=16)
    randomize_batchnorm(at16)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        before = at16(x)
        for os_ in (8, 32):
            other = build(backbone, head, output_stride=os_)
            other.load_state_dict(at16.state_dict())  # same weights, whatever the output stride
            at16.set_output_stride(os_)
            torch.testing.assert_close(at16(x), other(x))
        at16.set_output_stride(16)
        torch.testing.assert_close(at16(x), before)


# --- torchvision weights ---------------------------------------------------------------------


@pytest.mark.parametrize("multiplier,tv_fn", [(1.0, torchvision.models.mnasnet1_0),
                                              (0.5, torchvision.models.mnasnet0_5)])  # fmt: skip
def test_torchvision_mnasnet_weights_reproduce_torchvision_features(tmp_path, multiplier, tv_fn):
    torch.manual_seed(0)
    tv = tv_fn(weights=None).eval()
    randomize_batchnorm(tv)
    path = tmp_path / "mnasnet.pth"
    torch.save(tv.state_dict(), path)
    ours = mnasnet_b1(multiplier, output_stride=32, weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = tv.layers[:-3](x)  # every layer but the final 1280-channel conv, BN, ReLU
        got = ours(x)["out"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "mnasnet1_0.pth"
    torch.save(torchvision.models.mnasnet1_0(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="depth_multiplier equal to its own"):
        mnasnet_b1(0.75, weights=str(path))
    with pytest.raises(WeightsError, match="MnasNet-B1"):
        mnasnet_a1(weights=str(path))
    with pytest.raises(WeightsError, match="no MobileNetV1"):
        mobilenet_v1(pretrained="imagenet")
    with pytest.raises(WeightsError, match="depth multipliers"):
        mnasnet_b1(0.6, pretrained="imagenet")


def test_pretrained_picks_torchvision_weights_of_the_same_multiplier(monkeypatch):
    import torchvision.models

    from seg.models.weights import TORCHVISION_WEIGHTS

    for arch in ["mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"]:
        assert torchvision.models.get_weight(TORCHVISION_WEIGHTS[arch]) is not None  # a real enum (no download)
    asked = []

    class Local:  # what the weights API would return, without the download
        def __init__(self, name):
            asked.append(name)

        def get_state_dict(self, progress=True):
            return torchvision.models.mnasnet0_75(weights=None).state_dict()

    monkeypatch.setattr(torchvision.models, "get_weight", Local)
    mnasnet_b1(0.75, pretrained="imagenet")
    assert asked == ["MNASNet0_75_Weights.IMAGENET1K_V1"]


# --- ONNX export --------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone,head", [("mnv1", "deeplabv3plus"), ("mnasnet_b1", "aspp_lite"),
                                           ("mnasnet_a1", "lraspp")])  # fmt: skip
def test_onnx_export_matches_pytorch(tmp_path, backbone, head):
    data = [f"dataset.root={tmp_path / 'synthetic'}", "dataset.synthetic.num_train=2",
            "dataset.synthetic.num_val=2", "dataset.synthetic.image_size=48"]  # fmt: skip
    cfg = compose_config(*data, f"backbone={backbone}", f"head={head}")
    torch.manual_seed(0)
    model = build_segmenter(cfg.model).eval()
    randomize_batchnorm(model)
    ckpt = tmp_path / f"{backbone}_{head}.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": OmegaConf.to_yaml(cfg, resolve=True)})
    report = run_export(
        compose_config(*data, f"checkpoint={ckpt}", f"export.input_size={SIZE}", "export.check_images=2")
    )
    assert report["check"]["agreement"] >= 0.999 and report["check"]["max_abs_diff"] < 1e-3
    session = ort.InferenceSession(report["path"], providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, SIZE, SIZE)
    (out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), atol=1e-3)


# --- classification form against the papers -----------------------------------------------------


def classifier(backbone: str, *overrides: str):
    cfg = compose_config(f"backbone={backbone}", *overrides)
    return build_classifier(cfg.model.backbone).eval()


# MobileNetV1 paper (Howard et al. 2017): Table 6 (width), Table 7 (resolution), and 0.50 MobileNet-160
# from its comparison with SqueezeNet and AlexNet:
# (backbone, input size, million multiply-adds, million parameters or None)
MOBILENET_V1 = [
    ("mnv1", 224, 569, 4.2),
    ("mnv1_a075", 224, 325, 2.6),
    ("mnv1_a050", 224, 149, 1.32),  # Table 6 prints 1.3; the comparison table gives this network as 1.32
    ("mnv1_a025", 224, 41, 0.47),
    ("mnv1", 192, 418, None),
    ("mnv1", 160, 290, None),
    ("mnv1", 128, 186, None),
    ("mnv1_a050", 160, 76, 1.32),
]


@pytest.mark.parametrize("backbone,size,madds,params", MOBILENET_V1)
def test_mobilenet_v1_multiply_adds_and_params_match_the_paper(backbone, size, madds, params):
    model = classifier(backbone)
    assert abs(count_multiply_adds(model, size, size) / (madds * 1e6) - 1) < 0.02
    if params is not None:
        assert abs(count_parameters(model) / (params * 1e6) - 1) < 0.02
    # the paper's widths int(c * alpha) are multiples of 8 at these alphas: both roundings agree
    other = classifier(backbone, "model.backbone.channel_rounding=torchvision")
    assert count_parameters(other) == count_parameters(model)


def test_other_classification_forms_match_torchvision_and_the_papers():
    # MnasNet-B1: torchvision's MNASNet exactly (parameters), and its published operation counts
    for backbone, tv_fn, gmacs in [("mnasnet_b1_dm05", torchvision.models.mnasnet0_5, 0.104),
                                   ("mnasnet_b1_dm075", torchvision.models.mnasnet0_75, 0.215),
                                   ("mnasnet_b1", torchvision.models.mnasnet1_0, 0.314),
                                   ("mnasnet_b1_dm13", torchvision.models.mnasnet1_3, 0.526)]:  # fmt: skip
        model = classifier(backbone)
        assert count_parameters(model) == count_parameters(tv_fn(weights=None))
        assert abs(count_multiply_adds(model, 224, 224) / (gmacs * 1e9) - 1) < 0.02
    # MnasNet-A1: the paper's Table 1 (312M multiply-adds, 3.9M parameters)
    a1 = classifier("mnasnet_a1")
    assert abs(count_multiply_adds(a1, 224, 224) / 312e6 - 1) < 0.02
    assert abs(count_parameters(a1) / 3.9e6 - 1) < 0.02
    # MobileNetV2 / V3 classification forms have exactly torchvision's parameters; multiply-adds
    # from their papers (V2 1.0: 300M; V3-Large 219M, V3-Small 56M)
    v2 = classifier("mnv2")
    assert count_parameters(v2) == count_parameters(torchvision.models.mobilenet_v2())
    v2_14 = classifier("mnv2_dm14", "model.backbone.channel_rounding=torchvision")
    assert count_parameters(v2_14) == count_parameters(torchvision.models.mobilenet_v2(width_mult=1.4))
    assert abs(count_multiply_adds(v2, 224, 224) / 300e6 - 1) < 0.02
    for backbone, tv_fn, madds in [("mnv3_large", torchvision.models.mobilenet_v3_large, 219e6),
                                   ("mnv3_small", torchvision.models.mobilenet_v3_small, 56e6)]:  # fmt: skip
        model = classifier(backbone)
        assert count_parameters(model) == count_parameters(tv_fn())
        assert abs(count_multiply_adds(model, 224, 224) / madds - 1) < 0.02


def test_classification_form_outputs_1000_logits():
    for backbone in ["mnv1_a025", "mnasnet_a1", "mnv3_small"]:
        with torch.no_grad():
            assert classifier(backbone)(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_separable_layer_worked_example():
    e = separable_layer_example(14, 512, 512, 3)
    assert e["hooks"] == e["formula"] == {"standard": 14 * 14 * 512 * 512 * 9, "separable": 14 * 14 * 512 * (9 + 512)}
    assert round(e["hooks"]["standard"] / 1e6) == 462 and round(e["hooks"]["separable"] / 1e5) == 523
    assert e["ratio"] == pytest.approx(1 / 512 + 1 / 9)
    odd = separable_layer_example(7, 24, 40, 5)
    assert odd["hooks"] == odd["formula"]
