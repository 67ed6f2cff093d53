import math

import pytest
import torch
import torchvision
from conftest import compose_config

from seg.flops import count_evaluation, count_parameters
from seg.models import Segmenter, build_segmenter
from seg.models.mobilenet_v2 import mobilenet_v2
from seg.models.mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small
from seg.models.weights import WeightsError

BACKBONES = ["mnv2", "mnv2_dm05", "mnv2_dm075", "mnv2_dm14", "mnv3_large", "mnv3_small"]
HEADS = ["aspp_lite", "deeplabv3", "deeplabv3plus", "lraspp"]


def build(backbone: str, head: str, output_stride: int = 16, num_classes: int = 21) -> Segmenter:
    cfg = compose_config(
        f"backbone={backbone}",
        f"head={head}",
        f"model.output_stride={output_stride}",
        f"dataset.num_classes={num_classes}",
    )
    return build_segmenter(cfg.model).eval()


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("head", HEADS)
def test_every_backbone_and_head_at_every_output_stride(backbone, head):
    model = build(backbone, head, num_classes=5)
    x = torch.randn(2, 3, 67, 90)
    for os_ in (8, 16, 32):
        model.set_output_stride(os_)
        with torch.no_grad():
            feats = model.backbone(x)
            logits = model(x)
        assert logits.shape == (2, 5, 67, 90)
        assert torch.isfinite(logits).all()
        # features at strides 4, 8 and the output stride ('same' padding: ceil division)
        assert feats["low_level"].shape[-2:] == (math.ceil(67 / 4), math.ceil(90 / 4))
        assert feats["mid_level"].shape[-2:] == (math.ceil(67 / 8), math.ceil(90 / 8))
        assert feats["out"].shape[-2:] == (math.ceil(67 / os_), math.ceil(90 / os_))
        for name, tensor in feats.items():
            assert tensor.shape[1] == model.backbone.channels[name]


def test_mobilenet_v2_widths_follow_deeplab_rounding():
    m = mobilenet_v2(depth_multiplier=0.5)
    assert m.stem.conv.out_channels == 16
    outs = [b.project.conv.out_channels for b in m.blocks]
    assert sorted(set(outs)) == [8, 12, 16, 32, 48, 80, 160]  # 16,24,32,64,96,160,320 x 0.5, unrounded
    # expansion widths rounded to multiples of 8 (12 * 6 = 72, 8 * 6 = 48, 80 * 6 = 480)
    assert all(b.depthwise.conv.out_channels % 8 == 0 for b in m.blocks[1:])
    m14 = mobilenet_v2(depth_multiplier=1.4)
    assert m14.stem.conv.out_channels == 45  # 32 * 1.4 = 44.8, rounded to the nearest integer
    assert m14.channels["out"] == 448
    m1 = mobilenet_v2()
    assert m1.channels == {"low_level": 24, "mid_level": 32, "out": 320}


def test_torchvision_rounding_matches_torchvision_shapes(tmp_path):
    tv = torchvision.models.mobilenet_v2(width_mult=0.75)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    ours = mobilenet_v2(depth_multiplier=0.75, channel_rounding="torchvision", weights=str(tmp_path / "tv.pth"))
    assert ours.channels["out"] == tv.features[-2].out_channels
    with pytest.raises(WeightsError, match="channel_rounding=torchvision"):
        mobilenet_v2(depth_multiplier=0.75, channel_rounding="deeplab", weights=str(tmp_path / "tv.pth"))


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)


@pytest.mark.parametrize(
    "arch,ours_fn,tv_fn",
    [
        ("mobilenet_v2", mobilenet_v2, torchvision.models.mobilenet_v2),
        ("mobilenet_v3_large", mobilenet_v3_large, torchvision.models.mobilenet_v3_large),
        ("mobilenet_v3_small", mobilenet_v3_small, torchvision.models.mobilenet_v3_small),
    ],
)
def test_torchvision_weights_reproduce_torchvision_features(tmp_path, arch, ours_fn, tv_fn):
    torch.manual_seed(0)
    tv = tv_fn().eval()
    _randomise_batchnorm(tv)
    path = tmp_path / f"{arch}.pth"
    torch.save(tv.state_dict(), path)
    ours = ours_fn(output_stride=32, weights=str(path)).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        # DeepLab's MobileNetV2 stops before the final 1280-channel conv; MobileNetV3 keeps its last conv
        expected = tv.features[:-1](x) if arch == "mobilenet_v2" else tv.features(x)
        got = ours(x)["out"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_weights_file_errors_name_the_file(tmp_path):
    with pytest.raises(WeightsError, match="no file at .*missing.pth"):
        mobilenet_v2(weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="bad.pth"):
        mobilenet_v2(weights=str(bad))
    incomplete = tmp_path / "incomplete.pth"
    state = torchvision.models.mobilenet_v2().state_dict()
    del state["features.5.conv.1.0.weight"]
    torch.save(state, incomplete)
    with pytest.raises(WeightsError, match="features.5.conv.1.0.weight"):
        mobilenet_v2(weights=str(incomplete))


def test_pretrained_offline_error_points_to_local_weights(monkeypatch):
    import torchvision.models

    class Offline:
        def get_state_dict(self, progress=True):
            raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models, "get_weight", lambda name: Offline())
    with pytest.raises(WeightsError, match="model.backbone.weights="):
        mobilenet_v2(pretrained="imagenet")


@pytest.mark.parametrize("size", [(513, 513), (375, 500), (1, 1), (17, 17), (31, 47)])
def test_odd_and_tiny_input_sizes(size):
    model = build("mnv2_dm05", "deeplabv3plus")
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert model(x).shape == (1, 21, *size)


def test_one_by_one_features_at_output_stride_32():
    model = build("mnv3_small", "deeplabv3", output_stride=32)
    with torch.no_grad():
        assert model.backbone(torch.randn(1, 3, 32, 32))["out"].shape[-2:] == (1, 1)
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 21, 32, 32)


def atrous_dilations(model: Segmenter) -> list[int]:
    # regular (AtrousConv) or depthwise-separable (SeparableConvBNAct) ASPP branches
    return [(b.depthwise.conv if hasattr(b, "depthwise") else b.conv).dilation[0] for b in model.head.aspp.atrous]


@pytest.mark.parametrize("backbone,head", [("mnv2", "deeplabv3plus"), ("mnv3_large", "deeplabv3")])
def test_set_output_stride_equals_a_model_built_at_that_stride(backbone, head):
    torch.manual_seed(0)
    at16 = build(backbone, head, output_stride=16)
    at8 = build(backbone, head, output_stride=8)
    at8.load_state_dict(at16.state_dict())  # same weights, whatever the output stride
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        before = at16(x)
        at16.set_output_stride(8)
        torch.testing.assert_close(at16(x), at8(x))
        assert atrous_dilations(at16) == [12, 24, 36]
        at16.set_output_stride(16)
        torch.testing.assert_close(at16(x), before)
        assert atrous_dilations(at16) == [6, 12, 18]


def test_output_stride_is_validated():
    with pytest.raises(ValueError, match="model.output_stride"):
        build("mnv2", "aspp_lite", output_stride=4)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("head", HEADS)
def test_torch_export_of_every_segmenter(backbone, head):
    model = build(backbone, head, num_classes=3)
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def test_parameter_counts():
    # Our LR-ASPP on MobileNetV3-Large is the same network as torchvision's lraspp_mobilenet_v3_large.
    tv = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    tv_params = sum(p.numel() for p in tv.parameters())
    assert count_parameters(build("mnv3_large", "lraspp")) == tv_params
    assert 2.0e6 < count_parameters(build("mnv2", "aspp_lite")) < 2.2e6
    assert 0.6e6 < count_parameters(build("mnv2_dm05", "aspp_lite")) < 0.8e6
    sizes = [count_parameters(build(b, "deeplabv3plus")) for b in ["mnv2_dm05", "mnv2_dm075", "mnv2", "mnv2_dm14"]]
    assert sizes == sorted(sizes)


PUBLISHED = [
    # (experiment, overrides, published multiply-adds) from the TF DeepLab model zoo
    ("mobilenetv2_dm05_coco_voc_trainaug", [], 0.88e9),
    ("mobilenetv2_dm05_coco_voc_trainaug", ["eval.output_stride=8"], 2.84e9),
    ("mobilenetv2_coco_voc_trainaug", [], 2.75e9),
    (
        "mobilenetv2_coco_voc_trainaug",
        ["eval.output_stride=8", "eval.scales=[0.5,0.75,1.0,1.25,1.5,1.75]", "eval.flip=true"],
        152.59e9,
    ),
]


@pytest.mark.parametrize("experiment,overrides,published", PUBLISHED)
def test_published_multiply_adds_within_two_percent(experiment, overrides, published):
    cfg = compose_config(f"experiment={experiment}", *overrides)
    model = build_segmenter(cfg.model, start_weights=False)
    model.set_output_stride(cfg.eval.output_stride or cfg.model.output_stride)
    madds = count_evaluation(model, cfg.flops.input_size, list(cfg.eval.scales), cfg.eval.flip)["madds"]
    assert abs(madds / published - 1) < 0.02, madds
