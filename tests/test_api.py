"""The Python API (`seg.create_model`, `seg.list_models`, `seg.load`), the README's Python snippet,
and what a run builds by default on each kind of data."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run_tool
from conftest import OFFICIAL_FIXTURES, REPO, compose_config
from PIL import Image

import seg
from seg.config import HEAD_SCHEMAS
from seg.engine.checkpoint import save_checkpoint
from seg.errors import ConfigError
from seg.models.segmenter import HEAD_BUILDERS, build_segmenter, model_name
from seg.models.weights import WeightsError

OFFICIAL = OFFICIAL_FIXTURES


def test_list_models_names_what_the_configs_hold():
    models = seg.list_models()
    assert models["backbones"] == sorted(p.stem for p in (REPO / "conf" / "backbone").glob("*.yaml"))
    assert models["heads"] == ["aspp_lite", "deeplabv3", "deeplabv3plus", "lraspp"]
    assert "mobilenetv2_coco_voc_trainaug" in models["pretrained"] and "deeplabv3_257_mv_gpu" in models["pretrained"]


@pytest.mark.parametrize("head", ["deeplabv3plus", "aspp_lite", "lraspp", "deeplabv3"])
def test_create_model_is_the_network_the_config_builds(head, one_thread):
    made = seg.create_model(backbone="mnv2_dm05", head=head, num_classes=5, output_stride=8)
    torch.manual_seed(0)
    cfg = compose_config("backbone=mnv2_dm05", f"head={head}", "dataset.num_classes=5", "model.output_stride=8")
    cfg.dataset.class_names = [f"c{i}" for i in range(5)]
    built = build_segmenter(cfg.model)
    assert made.name == built.name == model_name(cfg.model) and made.output_stride == 8
    assert {k: v.shape for k, v in made.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}
    built.load_state_dict(made.state_dict())
    x = made.normalize(torch.randint(0, 256, (1, 3, 65, 81), dtype=torch.uint8))
    with torch.no_grad():
        assert torch.equal(made.eval()(x), built.eval()(x))


def test_create_model_options_and_refusals():
    model = seg.create_model("mnv2_dm05", "aspp_lite", pixel_mean=[128, 128, 128], pixel_std=[128, 128, 128])
    assert model.pixel_mean.flatten().tolist() == [128.0] * 3
    with pytest.raises(ConfigError, match="backbone='resnet50' is not one of"):
        seg.create_model(backbone="resnet50")
    with pytest.raises(ConfigError, match="seg.from_pretrained"):
        seg.create_model(pretrained="mobilenetv2_coco_voc_trainaug")
    with pytest.raises(WeightsError, match="model.backbone.pretrained=null"):  # no dm0.5 ImageNet weights
        seg.create_model(backbone="mnv2_dm05", pretrained="imagenet")


def test_heads_built_from_python_have_the_configs_defaults():
    """`DeepLabV3PlusHead(...)` with no options is the network `head=deeplabv3plus` builds."""
    for name, schema in HEAD_SCHEMAS.items():
        defaults = {f.name: f.default for f in dataclasses.fields(schema) if f.name != "_target_"}
        defaults = {k: (list(v) if isinstance(v, tuple) else v) for k, v in defaults.items()}
        for f in dataclasses.fields(schema):
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                defaults[f.name] = f.default_factory()  # type: ignore[misc]
        signature = inspect.signature(HEAD_BUILDERS[schema._target_])
        for key, value in defaults.items():
            param = signature.parameters[key].default
            param = list(param) if isinstance(param, tuple) else param
            assert param == value, (name, key, param, value)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = compose_config("head=lraspp")
    path = tmp_path_factory.mktemp("api") / "best.pt"
    from omegaconf import OmegaConf

    config = OmegaConf.to_yaml(cfg, resolve=True)
    save_checkpoint(path, {"model": build_segmenter(cfg.model).state_dict(), "config": config})
    return path


def test_load_takes_arrays_pil_images_and_paths(checkpoint, tmp_path, one_thread):
    predictor = seg.load(checkpoint)
    assert predictor.class_names[:2] == ["background", "aeroplane"] and "LRASPPHead" in repr(predictor)
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    mask = predictor(image)
    assert mask.shape == (37, 53) and mask.dtype == np.uint8
    assert np.array_equal(predictor(Image.fromarray(image)), mask)
    assert np.array_equal(predictor(tmp_path / "photo.png"), mask)
    assert np.array_equal(predictor(str(tmp_path / "photo.png")), mask)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        predictor(image.astype(np.float32))
    with pytest.raises(ConfigError, match="no such file"):
        seg.load(tmp_path / "missing.pt")


@pytest.mark.skipif(not (OFFICIAL / "models").is_dir(), reason=f"{OFFICIAL} is absent")
def test_load_runs_an_official_tflite_file():
    predictor = seg.load(OFFICIAL / "models" / "deeplabv3_257_mv_gpu.tflite")
    image = OFFICIAL / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2007_000033.jpg"
    mask = predictor(image)
    label = np.asarray(Image.open(OFFICIAL / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000033.png"))
    valid = label != 255
    assert mask.shape == label.shape and (mask[valid] == label[valid]).mean() > 0.9


def readme_python_snippet() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_snippet_runs(checkpoint, tmp_path, monkeypatch, one_thread):
    """The README's code, executed as written, in a folder holding the files it names."""
    (tmp_path / "best.pt").write_bytes(checkpoint.read_bytes())
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_python_snippet(), "README.md", "exec"), namespace)
    assert namespace["mask"].shape == (60, 80)


def test_real_datasets_default_to_deeplabv3plus_from_imagenet_and_the_built_in_one_to_lraspp():
    default = compose_config()
    assert model_name(default.model) == "mobilenet_v2 x0.5 + LRASPPHead"
    assert default.model.backbone.pretrained is None  # the quick run downloads nothing
    for dataset in ("voc", "voc_aug", "coco", "folder"):
        cfg = compose_config(f"dataset={dataset}", "backbone=mnv2")
        assert model_name(cfg.model) == "mobilenet_v2 x1 + DeepLabV3PlusHead", dataset
        assert cfg.model.backbone.pretrained == "imagenet" and cfg.model.head.separable
    # What the command line says wins; the presets keep the published rows.
    assert compose_config("dataset=voc", "head=lraspp").model.head._target_.endswith("LRASPPHead")
    assert compose_config("dataset=synthetic", "head=deeplabv3plus").model.head._target_.endswith("DeepLabV3PlusHead")
    assert compose_config("dataset=voc", "model.backbone.pretrained=null").model.backbone.pretrained is None
    preset = compose_config("experiment=mobilenetv2_coco_voc_trainaug")
    assert preset.model.head._target_.endswith("AsppLiteHead") and preset.model.backbone.pretrained == "imagenet"
    assert compose_config("experiment=mobilenetv2_dm05_coco_voc_trainaug").model.backbone.pretrained is None


def test_imagenet_weights_that_cannot_be_fetched_name_both_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached
    monkeypatch.setattr(
        "torchvision.models._api.load_state_dict_from_url",
        lambda *a, **k: (_ for _ in ()).throw(OSError("network is unreachable")),
    )
    with pytest.raises(WeightsError) as err:
        build_segmenter(compose_config("dataset=voc", "backbone=mnv2").model)
    message = str(err.value)
    assert "\n" not in message and "model.backbone.weights=" in message and "model.backbone.pretrained=null" in message


@pytest.mark.slow
@pytest.mark.skipif(not (OFFICIAL / "VOCdevkit").is_dir(), reason=f"{OFFICIAL} is absent")
def test_the_first_voc_command_says_what_it_builds_or_why_not(tmp_path):
    """`python tools/train.py dataset=voc backbone=mnv2_dm05`: DeepLabv3+ with an ImageNet encoder,
    which torchvision does not publish at depth multiplier 0.5: one line with both ways out."""
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    args = ["dataset=voc", "backbone=mnv2_dm05", f"dataset.root={OFFICIAL}", "dataset.num_workers=0"]
    result = run_tool("train", *args, f"hydra.run.dir={tmp_path / 'run'}", env=env)
    assert_one_line_error(result, "depth multiplier 1.0, not 0.5", "model.backbone.pretrained=null")
