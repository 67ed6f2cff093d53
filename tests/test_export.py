"""Export for apps: ONNX (every head, dynamic size, int8), TorchScript, TFLite, options, metadata."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import compose_config, randomize_batchnorm
from omegaconf import OmegaConf

from seg.data.transforms import normalize
from seg.engine.checkpoint import save_checkpoint
from seg.export import ExportError, run_export
from seg.export.common import file_sha256, read_metadata
from seg.export.runtime import upsample_argmax
from seg.fastpath import count_batchnorm, fast_model, fold_batchnorm
from seg.models import build_segmenter

SIZE = 65
HEADS = ["aspp_lite", "deeplabv3", "deeplabv3plus", "lraspp"]


def config(tmp_path, *overrides: str):
    data = [f"dataset.root={tmp_path / 'synthetic'}", "dataset.synthetic.num_train=4",
            "dataset.synthetic.num_val=2", "dataset.synthetic.image_size=48"]  # fmt: skip
    return compose_config(*data, *overrides)


def checkpoint(tmp_path, backbone="mnv3_small", head="lraspp", *overrides: str):
    """A checkpoint of a random model (non-trivial batch norm) with a tiny built-in dataset."""
    cfg = config(tmp_path, f"backbone={backbone}", f"head={head}", *overrides)
    torch.manual_seed(0)
    model = build_segmenter(cfg.model).eval()
    randomize_batchnorm(model, seed=1)
    path = tmp_path / f"{backbone}_{head}.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": OmegaConf.to_yaml(cfg, resolve=True)})
    return path, model, cfg


def export(tmp_path, ckpt, *overrides: str) -> dict:
    cfg = config(tmp_path, f"checkpoint={ckpt}", f"export.input_size={SIZE}", *overrides)
    return run_export(cfg)


def test_fold_batchnorm_and_fast_path_keep_the_outputs():
    for backbone, head in [("mnv2_dm05", "deeplabv3plus"), ("mnv3_small", "lraspp")]:
        cfg = compose_config(f"backbone={backbone}", f"head={head}")
        torch.manual_seed(0)
        model = build_segmenter(cfg.model).eval()
        randomize_batchnorm(model, seed=1)
        folded = fold_batchnorm(model)
        assert count_batchnorm(folded) == 0 and count_batchnorm(model) > 0  # the original is untouched
        x = torch.randn(1, 3, 57, 71)
        with torch.no_grad():
            ref = model(x)
            torch.testing.assert_close(folded(x), ref, atol=1e-4, rtol=1e-4)
        fast = fast_model(model)
        out = fast(x)  # the frozen graph, traced at this size ...
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
        assert not out.requires_grad
        y = torch.randn(1, 3, 40, 33)  # ... runs at any other size
        with torch.no_grad():
            torch.testing.assert_close(fast(y), model(y), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("head", HEADS)
def test_onnx_export_matches_pytorch_for_every_head(tmp_path, head):
    ckpt, model, _ = checkpoint(tmp_path, "mnv3_small", head)
    report = export(tmp_path, ckpt)
    path = tmp_path / f"mnv3_small_{head}.onnx"
    assert report["path"] == str(path) and path.is_file()
    assert report["check"]["agreement"] >= 0.999 and report["check"]["max_abs_diff"] < 1e-3

    # onnxruntime alone, on a fresh input, against the PyTorch model
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, SIZE, SIZE)
    (out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-3)

    graph = onnx.load(str(path))
    ops = Counter(n.op_type for n in graph.graph.node)
    assert "BatchNormalization" not in ops  # folded
    assert "ReduceMean" not in ops and ops["GlobalAveragePool"] >= 1  # pooling at any size, NCHWc-friendly
    assert ops["MatMul"] == 2  # the final 513-style resize as two bilinear MatMuls (static size)
    for node in graph.graph.node:
        if node.op_type == "Resize":  # bilinear, align_corners=False: what mobile converters accept
            attrs = {a.name: a for a in node.attribute}
            assert attrs["coordinate_transformation_mode"].s in (b"half_pixel", b"pytorch_half_pixel")
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 18

    meta = json.loads((tmp_path / f"mnv3_small_{head}.onnx.json").read_text())
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props["class_names"]) == meta["class_names"] and len(meta["class_names"]) == 21
    assert meta["palette"][15] == [192, 128, 128]  # VOC's person colour
    assert meta["input"] == {"name": "image", "layout": "NCHW", "dtype": "float32", "channels": "RGB",
                             "height": SIZE, "width": SIZE}  # fmt: skip
    assert meta["normalization"]["name"] == "imagenet" and len(meta["normalization"]["mean"]) == 3
    assert meta["checkpoint"]["sha256"] == file_sha256(ckpt) == props["checkpoint_sha256"]
    assert meta["final_resize"] == "matmul" and meta["opset"] == opset
    assert read_metadata(path) == meta
    assert json.loads(props["seg"]) == meta and meta["check"]["agreement"] >= 0.999  # inside == beside


@pytest.mark.slow
def test_dynamic_export_runs_at_any_size(tmp_path):
    ckpt, model, _ = checkpoint(tmp_path, "mnv2_dm05", "deeplabv3plus")
    report = export(tmp_path, ckpt, "export.dynamic=true")
    path = report["path"]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    dims = session.get_inputs()[0].shape
    assert dims[:2] == [1, 3] and dims[2:] == ["height", "width"]
    for h, w in [(65, 97), (80, 48), (33, 33)]:
        x = torch.randn(1, 3, h, w)
        (out,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            ref = model(x).numpy()
        assert out.shape == (1, 21, h, w)
        np.testing.assert_allclose(out, ref, atol=1e-3)
    assert read_metadata(path)["input"]["height"] is None
    assert read_metadata(path)["final_resize"] == "resize"  # sizes unknown: the Resize op stays


def test_int8_export_on_a_tiny_calibration_set(tmp_path, capsys):
    ckpt, _, _ = checkpoint(tmp_path, "mnv2_dm05", "aspp_lite")
    report = export(
        tmp_path,
        ckpt,
        "export.quantize=int8",
        "export.calibration_images=2",
        "export.eval_images=2",
        "export.min_agreement=0.9",
    )  # random weights: int8 only has to be close
    path = tmp_path / "mnv2_dm05_aspp_lite.int8.onnx"
    assert report["path"] == str(path)
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["QuantizeLinear"] > 10 and ops["DequantizeLinear"] > 10  # QDQ format
    # per-channel weights: the first conv's weight scale is a vector, one per output channel
    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and len(inits[n.input[0]].dims) == 4]  # fmt: skip
    assert weight_dq and all(len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1 for n in weight_dq)
    # export.float_modules (default: the stem and the first block) keep float weights: the stem
    # conv and block 0's depthwise and projection convs; every other conv is int8.
    float_convs = [n for n in graph.node if n.op_type == "Conv" and n.input[1] in inits]
    assert len(float_convs) == 3 and len(weight_dq) == sum(n.op_type == "Conv" for n in graph.node) - 3
    assert read_metadata(path)["float_modules"] == ["backbone.stem", "backbone.blocks.0"]
    # The final resize writes float logits itself (no Quantize/Dequantize of the full-size logits).
    (producer,) = [n for n in graph.node if "logits" in n.output]
    assert producer.op_type == "MatMul"
    assert report["calibration_images"] == 2
    assert 0.9 <= report["int8_check"]["agreement_vs_fp32"] <= 1.0
    assert report["miou_images"] == 2 and 0 <= report["miou_int8"] <= 1 and 0 <= report["miou_fp32"] <= 1
    out = capsys.readouterr().out
    assert "int8 vs fp32" in out and "mIoU on 2 val images" in out
    assert read_metadata(path)["quantize"] == "int8"


@pytest.mark.parametrize(
    "src, dst",
    [
        ((33, 33), (513, 513)),
        ((33, 65), (512, 500)),
        ((17, 13), (257, 200)),
        ((48, 50), (61, 49)),
        ((49, 49), (513, 513)),
    ],
)
def test_final_resize_as_matmuls_equals_bilinear_interpolation(src, dst):
    """Up to MATMUL_MAX_ROWS source rows the final resize becomes two MatMuls with torch's
    bilinear values (align_corners=False); above, the Resize op stays."""
    from onnx import TensorProto, helper, numpy_helper

    from seg.export.onnx import MATMUL_MAX_ROWS, resize_as_matmul

    (h, w), (height, width) = src, dst
    graph = helper.make_graph(
        [
            helper.make_node(
                "Resize", ["x", "", "", "size"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel"
            )
        ],
        "resize",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, height, width]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, height, width])],
        [numpy_helper.from_array(np.array([1, 5, height, width], np.int64), "size")])  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert resize_as_matmul(proto) == (h <= MATMUL_MAX_ROWS)
    ops = [n.op_type for n in proto.graph.node]
    assert ops == (["MatMul", "MatMul"] if h <= MATMUL_MAX_ROWS else ["Resize"])
    x = np.random.default_rng(0).normal(size=(1, 5, h, w)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x, "image": np.zeros((1, 3, height, width), np.float32)})
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=dst, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-4)


def test_float_modules_name_the_layers_that_stay_float(tmp_path):
    from seg.export.onnx import export_onnx
    from seg.export.quantize import float_nodes

    ckpt, model, _ = checkpoint(tmp_path, "mnv3_small", "lraspp")
    proto = onnx.load(str(export_onnx(fold_batchnorm(model), tmp_path / "m.onnx", torch.randn(1, 3, SIZE, SIZE))))
    convs = {n.name for n in proto.graph.node if n.op_type == "Conv"}
    assert not set(float_nodes(proto, [])) & convs  # nothing requested: every conv is quantized
    stem = set(float_nodes(proto, ["backbone.stem"])) & convs
    assert len(stem) == 1
    assert (
        len(set(float_nodes(proto, ["backbone"])) & convs)
        > len(set(float_nodes(proto, ["backbone.blocks.0"])) & convs)
        > 0
    )
    with pytest.raises(
        ExportError, match=r"export.float_modules: no layer of the model is in 'backbone.stemm'.*backbone.stem"
    ):
        float_nodes(proto, ["backbone.stemm"])

    # The quantizer's pre-processing splits HardSwish into HardSigmoid and Mul, unnamed and without
    # the exporter's metadata: the stem's pieces still stay float, and nothing outside it.
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from seg.export.quantize import carry_over

    quant_pre_process(str(tmp_path / "m.onnx"), str(tmp_path / "pre.onnx"))
    pre = onnx.load(str(tmp_path / "pre.onnx"))
    kept = carry_over(pre, float_nodes(proto, ["backbone.stem"]))
    ops = Counter(n.op_type for n in pre.graph.node if n.name in kept)
    assert ops == Counter({"Conv": 1, "HardSigmoid": 1, "Mul": 1})


def test_int8_export_keeps_a_large_final_resize_float(tmp_path):
    """DeepLabv3+ at 200x200: its decoder's 50x50 logits keep the Resize op, which int8 leaves
    float (top-level forward): Dequantize -> Resize -> logits."""
    ckpt, _, _ = checkpoint(tmp_path, "mnv3_small", "deeplabv3plus")
    report = export(tmp_path, ckpt, "export.quantize=int8", "export.calibration_images=2", "export.eval_images=1",
                    "export.input_size=200", "export.min_agreement=0.9")  # fmt: skip
    graph = onnx.load(report["path"]).graph
    producers = {o: n for n in graph.node for o in n.output}
    final = producers["logits"]
    assert final.op_type == "Resize" and producers[final.input[0]].op_type == "DequantizeLinear"
    assert report["int8_check"]["agreement_vs_fp32"] >= 0.9


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_round_trip(tmp_path):
    ckpt, model, _ = checkpoint(tmp_path, "mnv3_small", "deeplabv3plus")
    report = export(tmp_path, ckpt, "export.format=torchscript")
    assert report["path"].endswith(".torchscript.pt") and report["check"]["agreement"] >= 0.999
    loaded = torch.jit.load(report["path"])
    for h, w in [(SIZE, SIZE), (49, 81)]:  # traced sizes are shape ops: other sizes work too
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=1e-4)
    extra = {"seg.json": ""}
    torch.jit.load(report["path"], _extra_files=extra)
    assert json.loads(extra["seg.json"]) == read_metadata(report["path"])  # check results included
    assert json.loads(extra["seg.json"])["format"] == "torchscript"


def test_preprocessing_included_export_takes_uint8_rgb(tmp_path):
    ckpt, model, _ = checkpoint(tmp_path, "mnv3_small", "aspp_lite")
    report = export(tmp_path, ckpt, "export.include_preprocessing=true", "export.output=labels")
    session = ort.InferenceSession(report["path"], providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.type == "tensor(uint8)" and inp.shape == [1, SIZE, SIZE, 3] and outp.name == "labels"
    image = np.random.default_rng(0).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    (labels,) = session.run(None, {"image": image})
    with torch.no_grad():
        expected = model(normalize(torch.from_numpy(image).permute(0, 3, 1, 2), "imagenet")).argmax(1)
    assert labels.dtype == np.uint8 and labels.shape == (1, SIZE, SIZE)
    assert (labels == expected.numpy()).mean() >= 0.999
    meta = read_metadata(report["path"])
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["layout"] == "NHWC" and meta["normalization"]["included"]
    assert meta["output"]["kind"] == "labels"


def test_tflite_without_litert_torch_says_how_to_install(tmp_path):
    try:
        import litert_torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("litert-torch is installed: test_tflite_export covers the format")
    ckpt, _, _ = checkpoint(tmp_path)
    with pytest.raises(ExportError, match=r'pip install "\.\[tflite\]"'):
        export(tmp_path, ckpt, "export.format=tflite")


def _mediapipe_labels(path: Path, image: np.ndarray) -> np.ndarray:
    """The category mask of MediaPipe's ImageSegmenter task on `path`, with no code of ours."""
    mp = pytest.importorskip("mediapipe")
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.ImageSegmenterOptions(
        base_options=BaseOptions(model_asset_path=str(path)), output_category_mask=True
    )
    segmenter = vision.ImageSegmenter.create_from_options(options)
    try:
        result = segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
        return result.category_mask.numpy_view().reshape(image.shape[:2]).copy()
    finally:
        segmenter.close()


def test_tflite_export_is_nhwc_with_metadata_that_mediapipe_runs(tmp_path):
    pytest.importorskip("litert_torch")
    from seg.export.runtime import load_exported

    ckpt, model, cfg = checkpoint(tmp_path, "mnv2_dm05", "lraspp")
    report = export(tmp_path, ckpt, "export.format=tflite")
    path = Path(report["path"])
    assert path.suffix == ".tflite" and report["check"]["agreement"] >= 0.999
    meta = read_metadata(path)
    assert meta["input"]["layout"] == "NHWC" and meta["input"]["dtype"] == "float32"
    assert meta["output"]["layout"] == "NHWC" and meta["output"]["kind"] == "logits"
    # As predict runs it, and as MediaPipe's task runs it from the metadata inside the file alone.
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = model(normalize(torch.from_numpy(image).permute(2, 0, 1)[None], "imagenet")).argmax(1)[0].numpy()
    ours = load_exported(path)(image)
    assert (ours == expected).mean() >= 0.999
    assert (_mediapipe_labels(path, image) == ours).mean() >= 0.99
    # The file alone: its JSON gone, the metadata inside it says the same.
    Path(f"{path}.json").unlink()
    from seg.export.tflite_metadata import embedded_metadata

    assert embedded_metadata(path) == meta
    assert (load_exported(path)(image) == ours).all()


def test_tflite_int8_is_full_integer_and_checked(tmp_path):
    pytest.importorskip("litert_torch")
    from seg.export.tflite import TFLiteRunner

    ckpt, model, _ = checkpoint(tmp_path, "mnv2_dm05", "lraspp")
    report = export(
        tmp_path, ckpt, "export.format=tflite", "export.quantize=int8", "export.include_preprocessing=true",
        "export.min_agreement=0.9",
    )  # fmt: skip
    path = Path(report["path"])
    assert path.name.endswith("-rgb8.int8.tflite") and report["quantize"] == "int8"
    assert report["int8_check"]["agreement_vs_fp32"] >= 0.9 and report["calibration_images"] > 0
    runner = TFLiteRunner(path)
    assert np.dtype(runner.input["dtype"]) == np.uint8 and list(runner.input["shape"]) == [1, SIZE, SIZE, 3]
    tensors = runner.interpreter.get_tensor_details()
    convs = [t for t in tensors if np.dtype(t["dtype"]) == np.int8 and len(t["shape"]) == 4 and t["shape"][0] > 1]
    assert convs and all(t["quantization_parameters"]["scales"].size == t["shape"][0] for t in convs)  # per channel
    assert not [t for t in tensors if np.dtype(t["dtype"]) == np.float32 and len(t["shape"]) == 4 and t["shape"][0] > 1]
    assert path.stat().st_size < 0.5 * Path(export(tmp_path, ckpt, "export.format=tflite")["path"]).stat().st_size
    image = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    from seg.export.runtime import load_exported

    assert (_mediapipe_labels(path, image) == load_exported(path)(image)).mean() >= 0.99


@pytest.mark.slow
def test_executorch_export_fp32_and_int8_run_on_executorch(tmp_path):
    pytest.importorskip("executorch")
    from seg.export.runtime import load_exported, sniff_model_file

    ckpt, model, _ = checkpoint(tmp_path, "mnv2_dm05", "lraspp")
    report = export(tmp_path, ckpt, "export.format=executorch")
    path = Path(report["path"])
    assert path.suffix == ".pte" and report["check"]["agreement"] >= 0.999
    assert sniff_model_file(path) == "executorch" and read_metadata(path)["format"] == "executorch"
    # As predict runs it: letterboxed into the static input, labels at the image's size.
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = model(normalize(torch.from_numpy(image).permute(2, 0, 1)[None], "imagenet")).argmax(1)[0]
    labels = load_exported(path)(image)
    assert labels.shape == (50, 70) and (labels == expected.numpy()).mean() >= 0.99

    report = export(
        tmp_path,
        ckpt,
        "export.format=executorch",
        "export.quantize=int8",
        "export.calibration_images=2",
        "export.eval_images=2",
        "export.min_agreement=0.9",
    )  # fmt: skip  (random weights: int8 only has to be close)
    assert report["path"].endswith(".int8.pte") and report["int8_check"]["agreement_vs_fp32"] >= 0.9
    assert read_metadata(report["path"])["float_modules"] == []  # XNNPACK runs every layer int8
    assert Path(report["path"]).stat().st_size < path.stat().st_size / 2
    with pytest.raises(ExportError, match="export.dynamic=true is not supported for export.format=executorch"):
        export(tmp_path, ckpt, "export.format=executorch", "export.dynamic=true")


def test_bad_option_combinations_are_refused(tmp_path):
    ckpt, _, _ = checkpoint(tmp_path)
    with pytest.raises(ExportError, match="export.format=onnx, web, executorch or tflite"):
        export(tmp_path, ckpt, "export.format=torchscript", "export.quantize=int8")
    with pytest.raises(ExportError, match="checkpoint=PATH"):
        run_export(config(tmp_path))
    with pytest.raises(Exception, match="quantize"):  # a typo'd value fails at composition
        config(tmp_path, "export.quantize=int4")


def test_upsample_argmax_in_strips_matches_one_interpolate(monkeypatch):
    import seg.export.runtime as runtime

    logits = torch.randn(5, 13, 17)
    full = torch.nn.functional.interpolate(logits[None], size=(101, 77), mode="bilinear", align_corners=False)
    expected = full[0].argmax(0).numpy()
    monkeypatch.setattr(runtime, "_STRIP_ELEMENTS", 5 * 77 * 7)  # strips of 7 rows
    assert (upsample_argmax(logits, 101, 77) == expected).mean() > 0.999
