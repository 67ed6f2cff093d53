"""The official DeepLab MobileNetV2 TF Lite files converted into our segmenter: the float GPU model
(257x257, output stride 8) and Coral's quantized model (513x513, output stride 16), against their own
runtime (LiteRT) on real VOC images and noise; then evaluation, fine-tuning and prediction with the
converted checkpoints.

The files live beside the repository (../shared/fixtures/official, never copied in); every test here
that needs them skips when they are absent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run_tool
from conftest import OFFICIAL_FIXTURES, REAL_FIXTURES
from omegaconf import OmegaConf
from PIL import Image

from seg.engine.checkpoint import load_segmenter, save_checkpoint
from seg.metrics import ConfusionMatrix
from seg.models.official import convert_source
from seg.models.weights import WeightsError
from seg.predict import read_image

OFFICIAL = OFFICIAL_FIXTURES
FLOAT = OFFICIAL / "models" / "deeplabv3_257_mv_gpu.tflite"
QUANT = OFFICIAL / "models" / "deeplabv3_mnv2_dm05_pascal_quant.tflite"
VOC = OFFICIAL / "VOCdevkit" / "VOC2012"

needs_official = pytest.mark.skipif(not FLOAT.is_file() or not QUANT.is_file(), reason=f"{OFFICIAL} is absent")


def real_images() -> dict[str, np.ndarray]:
    """Every real image of the fixtures (RGB uint8), and the same noise image each time."""
    files = sorted((VOC / "JPEGImages").glob("*.jpg")) + [OFFICIAL / "images" / "bird.bmp"]
    files += sorted((REAL_FIXTURES / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    out = {f.stem: read_image(f) for f in files}
    out["noise"] = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    return out


def litert(path: Path, image: np.ndarray) -> np.ndarray:
    """The file's own output on `image` stretched to its input size: [H, W, C] logits or [H, W] ids."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    if inp["dtype"] == np.float32:
        image = (image.astype(np.float32) - 128.0) / 128.0
    interpreter.set_tensor(inp["index"], np.ascontiguousarray(image[None]))
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])[0]


def stretched(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    if not FLOAT.is_file() or not QUANT.is_file():
        pytest.skip(f"{OFFICIAL} is absent")
    folder = tmp_path_factory.mktemp("converted")
    out = {}
    for kind, source in (("float", FLOAT), ("quant", QUANT)):
        state = convert_source(source)
        save_checkpoint(folder / f"{kind}.pt", state)
        out[kind] = (state, folder / f"{kind}.pt")
    return out


def ours(checkpoint: Path, image: np.ndarray) -> np.ndarray:
    """Our converted model's [C, H, W] logits for an HxWx3 uint8 image, normalised as it says."""
    model, _ = load_segmenter(checkpoint)
    with torch.no_grad():
        return model(model.normalize(torch.from_numpy(image.copy()).permute(2, 0, 1)[None]))[0].numpy()


@needs_official
def test_architecture_and_numerics_are_read_from_the_files(converted):
    expected = {"float": (8, FLOAT), "quant": (16, QUANT)}
    for kind, (state, _) in converted.items():
        output_stride, source = expected[kind]
        model = OmegaConf.create(state["config"]).model
        assert model.backbone.depth_multiplier == 0.5 and model.output_stride == output_stride
        assert model.num_classes == 21 and model.head._target_.endswith("AsppLiteHead")
        assert model.pixel_mean == [128.0] * 3 and model.pixel_std == [128.0] * 3  # (pixel - 128) / 128
        assert model.align_corners and model.backbone.tf_same_padding and model.folded_batch_norm
        p = state["provenance"]
        assert p["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert p["input_size"] == ([257, 257] if kind == "float" else [513, 513])
        assert p["quantized"] == (kind == "quant") and p["output"] == ("logits" if kind == "float" else "labels")
        assert p["mapping"]["backbone.stem"] in ("MobilenetV2/Conv/weights", "MobilenetV2/Conv/Conv2D_Fold")
        assert p["mapping"]["head.classifier"].startswith("logits/semantic/")


@needs_official
def test_float_file_converts_to_the_same_logits(converted):
    """Every real image and noise: max |logit difference| <= 2e-4, argmax agreement >= 99.99%."""
    _, checkpoint = converted["float"]
    for name, image in real_images().items():
        x = stretched(image, 257)
        theirs = litert(FLOAT, x)  # [257, 257, 21]
        mine = ours(checkpoint, x).transpose(1, 2, 0)
        assert np.abs(mine - theirs).max() <= 2e-4, name
        assert (mine.argmax(-1) == theirs.argmax(-1)).mean() >= 0.9999, name


@needs_official
def test_quantized_file_dequantised_agrees_with_its_own_argmax(converted):
    """Our float model with the dequantised weights against the file's ArgMax at 513x513: only the
    activations' quantisation differs (mean >= 95%, each image >= 85%)."""
    _, checkpoint = converted["quant"]
    agreement = {}
    for name, image in real_images().items():
        if name == "noise":
            continue
        x = stretched(image, 513)
        agreement[name] = float((ours(checkpoint, x).argmax(0) == litert(QUANT, x)).mean())
    print("agreement per image:", {k: round(v, 4) for k, v in agreement.items()})
    assert len(agreement) >= 3
    assert min(agreement.values()) >= 0.85, agreement
    assert np.mean(list(agreement.values())) >= 0.95, agreement


@needs_official
def test_quantized_weights_are_dequantised_per_their_scale():
    """A conv's weights as the file stores them (uint8 + scale, zero point) against ours."""
    from ai_edge_litert.interpreter import Interpreter

    from seg.models.tflite_weights import read_tflite_deeplab

    found = read_tflite_deeplab(QUANT)
    interpreter = Interpreter(model_path=str(QUANT))
    details = {d["name"].split(";")[0]: d for d in interpreter.get_tensor_details()}
    stem = details[found.backbone[0].name]
    q = stem["quantization_parameters"]
    raw = interpreter.get_tensor(stem["index"]).astype(np.float64)  # OHWI uint8
    scale = q["scales"].reshape(-1, *[1] * (raw.ndim - 1)) if q["scales"].size > 1 else q["scales"]
    zero = q["zero_points"].reshape(scale.shape) if q["zero_points"].size > 1 else q["zero_points"]
    expected = (scale * (raw - zero)).transpose(0, 3, 1, 2)
    assert stem["dtype"] in (np.uint8, np.int8)
    np.testing.assert_allclose(found.backbone[0].weight, expected, rtol=0, atol=1e-6)


def test_a_file_that_is_not_a_deeplab_model_says_what_was_found(tmp_path):
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec([1, 64, 64, 3], tf.float32)])
    def classifier(x):
        w = tf.ones([3, 3, 3, 8]) * 0.1
        y = tf.nn.relu(tf.nn.conv2d(x, w, strides=2, padding="SAME"))
        return tf.reduce_mean(y, axis=[1, 2])

    path = tmp_path / "classifier.tflite"
    converter = tf.lite.TFLiteConverter.from_concrete_functions([classifier.get_concrete_function()], classifier)
    path.write_bytes(converter.convert())
    with pytest.raises(WeightsError, match=r"not a DeepLab MobileNetV2 .*found \d+ ops: .*CONV_2D"):
        convert_source(path)
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 40)
    with pytest.raises(WeightsError, match="broken.tflite"):
        convert_source(broken)


@needs_official
@pytest.mark.slow
def test_convert_and_eval_tools_on_real_voc_images(converted, tmp_path):
    """tools/convert_tf.py on the float file, then tools/eval.py over the real VOC fixture: the same
    per-class IoU as a direct computation with the converted model."""
    checkpoint = tmp_path / "deeplab_gpu.pt"
    result = run_tool("convert_tf", f"source={FLOAT}", f"output={checkpoint}", f"hydra.run.dir={tmp_path / 'c'}")
    assert result.returncode == 0, result.stderr
    again = run_tool("convert_tf", f"source={FLOAT}", f"output={checkpoint}", f"hydra.run.dir={tmp_path / 'c2'}")
    assert_one_line_error(again, "convert.output")  # never written over

    run_dir = tmp_path / "eval"
    result = run_tool(
        "eval",
        f"checkpoint={checkpoint}",
        "dataset=voc",
        f"dataset.root={OFFICIAL}",
        "dataset.val_split=trainval",
        "dataset.num_workers=0",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr
    reported = json.loads((run_dir / "metrics.json").read_text())

    matrix = ConfusionMatrix(21)
    for name in (VOC / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split():
        image = read_image(VOC / "JPEGImages" / f"{name}.jpg")
        label = np.asarray(Image.open(VOC / "SegmentationClass" / f"{name}.png"))
        matrix.update(torch.from_numpy(ours(checkpoint, image).argmax(0)), torch.from_numpy(label.astype(np.int64)))
    direct = matrix.compute()
    assert reported["confusion_matrix"] == direct["confusion_matrix"]
    np.testing.assert_allclose(reported["per_class_iou"], direct["per_class_iou"], rtol=0, atol=1e-9)  # NaN == NaN
    assert reported["miou"] > 0.5 and reported["pixel_accuracy"] > 0.95


def direct_miou(checkpoint: Path, output_stride: int) -> float:
    """mIoU of a checkpoint over the real VOC fixture (trainval), computed here, at one output stride."""
    model, _ = load_segmenter(checkpoint)
    model.set_output_stride(output_stride)
    matrix = ConfusionMatrix(21)
    for name in (VOC / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split():
        image = read_image(VOC / "JPEGImages" / f"{name}.jpg")
        label = np.asarray(Image.open(VOC / "SegmentationClass" / f"{name}.png")).astype(np.int64)
        with torch.no_grad():
            logits = model(model.normalize(torch.from_numpy(image.copy()).permute(2, 0, 1)[None]))[0]
        matrix.update(logits.argmax(0), torch.from_numpy(label))
    return matrix.compute()["miou"]


@needs_official
@pytest.mark.slow
def test_fine_tuning_from_the_converted_file_keeps_its_accuracy(converted, tmp_path):
    """20 iterations at lr 1e-4, batch 2, from the converted float file: the run adopts its numerics
    and freezes its folded batch norms (train.freeze_bn=null), so the imported mIoU holds (within a
    point); training those batch norms on 2-image batches loses most of it."""
    _, checkpoint = converted["float"]
    before = direct_miou(checkpoint, 16)
    common = [
        "dataset=voc",
        f"dataset.root={OFFICIAL}",
        "dataset.train_split=trainval",
        "dataset.val_split=trainval",
        "dataset.num_workers=0",
        "backbone=mnv2_dm05",
        "head=aspp_lite",
        f"train.init_from={checkpoint}",
        "train.max_iters=20",
        "train.batch_size=2",
        "train.crop_size=257",
        "train.lr=1e-4",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.progress=false",
        "train.cpu_threads=2",
    ]
    after = {}
    for name, extra in (("auto", []), ("bn_trained", ["train.freeze_bn=false"])):
        run_dir = tmp_path / name
        result = run_tool("train", *common, *extra, f"hydra.run.dir={run_dir}", timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        after[name] = json.loads((run_dir / "metrics.json").read_text())["miou"]
        saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml").model
        assert saved.pixel_mean == [128.0] * 3 and saved.align_corners and saved.folded_batch_norm
    print(
        f"mIoU converted {before:.4f}, fine-tuned {after['auto']:.4f}, "
        f"with batch norm trained {after['bn_trained']:.4f}"
    )
    assert after["auto"] >= before - 0.01
    assert after["bn_trained"] < before - 0.1  # why the folded batch norms are frozen


@needs_official
@pytest.mark.slow
def test_predict_with_the_converted_checkpoint_and_with_the_raw_file_agree(converted, tmp_path):
    """tools/predict.py on the same images: the converted checkpoint (scaled to 257 on its longer
    side) and the official file run as-is (letterboxed into 257x257). The letterbox's padding feeds
    the image pooling too, so they agree on most pixels, not all (measured 98.6-99.0%)."""
    _, checkpoint = converted["float"]
    inputs = tmp_path / "images"
    inputs.mkdir()
    for name in ("2007_000032", "2007_000033"):
        (inputs / f"{name}.jpg").write_bytes((VOC / "JPEGImages" / f"{name}.jpg").read_bytes())
    masks = {}
    for kind, arg in (("checkpoint", f"checkpoint={checkpoint}"), ("tflite", f"model={FLOAT}")):
        out = tmp_path / kind
        result = run_tool(
            "predict", arg, f"input={inputs}", f"output={out}", "predict.max_size=257", f"hydra.run.dir={out}_run"
        )
        assert result.returncode == 0, result.stderr[-2000:]
        masks[kind] = {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}
    assert sorted(masks["checkpoint"]) == sorted(masks["tflite"]) == ["2007_000032.png", "2007_000033.png"]
    for name, mask in masks["checkpoint"].items():
        assert mask.shape == masks["tflite"][name].shape
        assert (mask == masks["tflite"][name]).mean() >= 0.97, name
