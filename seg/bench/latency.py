"""`tools/benchmark.py latency`: batch-1 CPU latency of our models and of their peers, each in
default eager mode, on our fast path, under ONNX Runtime fp32 and ONNX Runtime int8, against the
CPU's measured peak (a large fp32 matmul and a 1x1 conv).

All (model, mode) entries are timed in turns, one call each per round, so that the load of a
shared machine drifting during the run affects every entry alike. The listed models are
random-initialised (latency does not depend on the weights), with batch-norm statistics
re-estimated on real images so that every layer sees realistic activation ranges; their int8
models are calibrated on real train images of the configured dataset. Their int8 argmax
agreement is printed but says little: random weights leave no margin between classes.
`benchmark.latency.checkpoints` adds trained models as rows, calibrated and compared on their
own dataset's images: their agreement is the one that counts. Effective GFLOP/s = 2 x
multiply-adds / median latency.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from seg.bench.timing import eager_call, ort_fp32_session, ort_version, time_call, time_in_turns
from seg.cli import dataset_on_command_line
from seg.errors import ConfigError
from seg.fastpath import fast_model, fold_batchnorm
from seg.flops import count_multiply_adds

# et_*: ExecuTorch on XNNPACK (pip install ".[executorch]"), fp32 and int8 (every layer, XNNPACK's scheme);
# tfl_*: our TF Lite exports on LiteRT with its XNNPACK delegate (pip install ".[tflite]"), fp32 and
# full-integer int8, and the official TF Lite files of `benchmark.latency.tflite_peers` (in the column
# of their kind: a float file under tfl_fp32, an integer one under tfl_int8).
MODES = ("eager", "fast", "ort_fp32", "ort_int8", "et_fp32", "et_int8", "tfl_fp32", "tfl_int8")


class _Out(nn.Module):
    """torchvision's segmentation models return {"out": logits}; the benchmark wants the tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def _ours(backbone: str, head: str, depth_multiplier: float = 1.0) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from seg.config import HEAD_SCHEMAS, BackboneConfig, ModelConfig
        from seg.models import build_segmenter

        target = {
            "mnv2": "seg.models.mobilenet_v2.mobilenet_v2",
            "mnv3_large": "seg.models.mobilenet_v3.mobilenet_v3_large",
        }[backbone]
        cfg = OmegaConf.structured(
            ModelConfig(
                backbone=BackboneConfig(_target_=target, depth_multiplier=depth_multiplier),
                head=HEAD_SCHEMAS[head](),
                num_classes=21,
            )
        )
        return build_segmenter(cfg)

    return build


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torchvision.models import segmentation

        kwargs = {"aux_loss": False} if name.startswith("deeplabv3") else {}
        return _Out(getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=21, **kwargs))

    return build


def _smp_deeplabv3plus() -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.DeepLabV3Plus(encoder_name="mobilenet_v2", encoder_weights=None, classes=21)


def _smp_installed() -> bool:
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Spec:
    name: str
    build: Callable[[], nn.Module]
    peer: bool = False
    multiple_of_16: bool = False  # needs 512 instead of 513
    # A peer's stem and first block, kept in float in its int8 model as ours are
    # (export.float_modules); empty for ours, which follow export.float_modules itself.
    float_modules: tuple[str, ...] = ()
    checkpoint: Optional[str] = None  # a trained model: its weights, its dataset's images, its normalisation
    normalization: str = "imagenet"
    dataset: Any = None  # None: the benchmark's dataset
    input_size: Optional[int] = None  # None: benchmark.latency.input_size (or peer_input_size)
    # The signature of the TF Lite exports (tfl_*): raw uint8 input with the normalisation inside, and
    # the argmax inside; a checkpoint raced against an official file takes the file's.
    tflite_uint8_input: bool = False
    tflite_labels: bool = False
    tflite_file: Optional[str] = None  # an official TF Lite file, run as it is (no model to build)


SPECS = [
    Spec("mnv2_dm05+aspp_lite", _ours("mnv2", "aspp_lite", 0.5)),
    Spec("mnv2+aspp_lite", _ours("mnv2", "aspp_lite")),
    Spec("mnv2_dm05+lraspp", _ours("mnv2", "lraspp", 0.5)),  # the default model
    Spec("mnv2+deeplabv3plus", _ours("mnv2", "deeplabv3plus")),
    Spec("mnv3_large+lraspp", _ours("mnv3_large", "lraspp")),
    Spec(
        "tv lraspp_mobilenet_v3_large",
        _torchvision("lraspp_mobilenet_v3_large"),
        peer=True,
        float_modules=("backbone.0", "backbone.1"),
    ),
    Spec(
        "tv deeplabv3_mobilenet_v3_large",
        _torchvision("deeplabv3_mobilenet_v3_large"),
        peer=True,
        float_modules=("backbone.0", "backbone.1"),
    ),
    Spec(
        "smp DeepLabV3Plus(mobilenet_v2)",
        _smp_deeplabv3plus,
        peer=True,
        multiple_of_16=True,
        float_modules=("encoder.features.0", "encoder.features.1"),
    ),
]


def measure_peak(threads: int, runs: int, workdir: Path) -> dict[str, Any]:
    """GFLOP/s of a 2048^3 fp32 matmul (torch) and of a 1x1 conv, 256 -> 256 channels on 128x128
    (torch channels_last and ONNX Runtime): what this CPU sustains on dense work."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from seg.export.onnx import onnx_session

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    matmul = time_call(lambda: torch.mm(a, b), 2, runs)
    c, hw = 256, 128
    conv = nn.Conv2d(c, c, 1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, c, hw, hw).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv_torch = time_call(lambda: conv(x), 2, runs)
    weight = numpy_helper.from_array(conv.weight.detach().contiguous().numpy(), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "conv1x1",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, hw, hw])],
        [weight],
    )
    path = workdir / "conv1x1.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session = onnx_session(path, threads)
    xn = x.contiguous().numpy()
    conv_ort = time_call(lambda: session.run(None, {"x": xn}), 2, runs)
    flops_mm, flops_conv = 2 * n**3, 2 * c * c * hw * hw
    out = {
        "matmul_gflops": flops_mm / matmul["median_ms"] / 1e6,
        "conv1x1_torch_gflops": flops_conv / conv_torch["median_ms"] / 1e6,
        "conv1x1_ort_gflops": flops_conv / conv_ort["median_ms"] / 1e6,
    }
    out["conv1x1_gflops"] = max(out["conv1x1_torch_gflops"], out["conv1x1_ort_gflops"])
    return out


def checkpoint_spec(path: str, index: int, peer: Optional[Spec] = None) -> Spec:
    """A row for a trained checkpoint (`benchmark.latency.checkpoints`), named `trained INDEX:
    backbone + head`: timed like the others, and its int8 agreement is that of trained weights.
    `peer`: the official TF Lite file it races, whose input size and signature it takes."""
    from seg.engine.checkpoint import load_segmenter

    model, stored = load_segmenter(path)
    normalization = stored.model.normalization
    return Spec(
        f"trained {index}: {model.name}",
        lambda: model,
        checkpoint=str(path),
        normalization=str(normalization),
        dataset=stored.dataset,
        input_size=peer.input_size if peer else None,
        tflite_uint8_input=peer.tflite_uint8_input if peer else False,
        tflite_labels=peer.tflite_labels if peer else False,
    )


def tflite_peer_spec(path: str, index: int) -> Spec:
    """A row for an official TF Lite file (`benchmark.latency.tflite_peers`), named `official
    INDEX: file name`, run as published at its own input size."""
    from seg.export.tflite import official_tflite_metadata

    meta = official_tflite_metadata(path)
    if not meta["input"]["height"]:
        raise ConfigError(f"benchmark.latency.tflite_peers: {path} has a dynamic input size; give a static-size file")
    return Spec(
        f"official {index}: {Path(path).name}",
        lambda: nn.Identity(),
        peer=True,
        input_size=int(meta["input"]["height"]),
        tflite_uint8_input=meta["input"]["dtype"] == "uint8",
        tflite_labels=meta["output"]["kind"] == "labels",
        tflite_file=str(path),
    )


def _real_inputs(
    dataset_cfg: Any, split: str, count: int, size: int, normalization: str = "imagenet"
) -> list[np.ndarray]:
    """`count` images of a split resized to fill size x size (no padding: every pixel is image, so
    the agreement counts only real content), normalised, NCHW float."""
    from seg.data import build_dataset
    from seg.data.transforms import normalize
    from seg.export.runtime import resize_image

    dataset = build_dataset(dataset_cfg, split)
    idx = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)
    out = []
    for i in idx:
        image = resize_image(dataset[int(i)][0], size, size)
        out.append(
            normalize(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None], normalization).numpy()
        )
    return out


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: np.ndarray) -> None:
    """Batch-norm running statistics := the statistics of `images` (one batch, N > 1)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch gives exactly its statistics
        m.train()
    model(torch.from_numpy(images))
    model.eval()


def _prepare_model(
    spec: Spec, cfg: Any, workdir: Path, images: Callable[[Spec, str, int], list]
) -> tuple[dict[str, Any], dict[str, Callable[[], Any]]]:
    """Build one model in every requested mode: its table row (sizes, int8 agreement) and one
    zero-argument call per mode, to be timed. `images(spec, split, size)` gives real inputs."""
    lat = cfg.benchmark.latency
    size = spec.input_size or (lat.peer_input_size if spec.multiple_of_16 else lat.input_size)
    if spec.tflite_file:
        return _tflite_peer(spec, size, cfg.benchmark.threads)
    torch.manual_seed(0)
    model = spec.build().eval()
    calib, check = images(spec, "train", size), images(spec, "val", size)
    if spec.checkpoint is None:
        recalibrate_batchnorm(model, np.concatenate(calib))
    macs = count_multiply_adds(model, size, size)
    row: dict[str, Any] = {
        "model": spec.name,
        "peer": spec.peer,
        "input_size": size,
        "multiply_adds": macs,
        "params": sum(p.numel() for p in model.parameters()),
        "checkpoint": spec.checkpoint,
    }
    x = torch.randn(1, 3, size, size)
    calls: dict[str, Callable[[], Any]] = {}
    modes = list(lat.modes)
    if "eager" in modes:
        calls["eager"] = eager_call(model, x)
    if "fast" in modes:
        fast = fast_model(model)
        calls["fast"] = lambda: fast(x)
    if "ort_fp32" in modes or "ort_int8" in modes:
        from seg.export.onnx import OnnxRunner

        fp32_path, fp32 = ort_fp32_session(model, x, workdir, cfg.benchmark.threads)
        xn = x.numpy()
        if "ort_fp32" in modes:
            calls["ort_fp32"] = lambda: fp32(xn)
        if "ort_int8" in modes:
            from seg.export.quantize import quantize_int8

            int8_path = fp32_path.with_suffix(".int8.onnx")
            floats = list(cfg.export.float_modules)
            if spec.peer:
                floats = list(spec.float_modules) if floats else []
            quantize_int8(fp32_path, int8_path, calib, float_modules=floats)
            row["float_modules"] = floats
            int8 = OnnxRunner(int8_path, cfg.benchmark.threads, spinning=False)
            calls["ort_int8"] = lambda: int8(xn)
            labels = [(fp32(v).argmax(1), int8(v).argmax(1)) for v in check]
            row["int8_agreement"] = float(np.mean([(a == q).mean() for a, q in labels])) if labels else None
            row["fp32_classes"] = float(np.mean([len(np.unique(a)) for a, _ in labels])) if labels else None
    if "et_fp32" in modes or "et_int8" in modes:
        calls.update(_executorch_calls(model, x, calib, check, workdir, cfg.benchmark.threads, modes, row))
    if "tfl_fp32" in modes or "tfl_int8" in modes:
        calls.update(_tflite_calls(model, spec, calib, check, workdir, cfg.benchmark.threads, modes, row))
    return row, calls


def _tflite_peer(spec: Spec, size: int, threads: int) -> tuple[dict[str, Any], dict[str, Callable[[], Any]]]:
    """An official TF Lite file's row and call: LiteRT with its XNNPACK delegate, as the apps run it."""
    from seg.export.tflite import TFLiteRunner

    runner = TFLiteRunner(spec.tflite_file, threads)  # type: ignore[arg-type]
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    x = image if spec.tflite_uint8_input else (image.astype(np.float32) - 128) / 128
    row = {"model": spec.name, "peer": True, "input_size": size, "multiply_adds": 0, "params": None}
    row["checkpoint"], row["tflite_file"] = None, spec.tflite_file
    mode = "tfl_int8" if spec.tflite_uint8_input else "tfl_fp32"
    return row, {mode: lambda: runner(x)}


def _tflite_calls(
    model: nn.Module, spec: Spec, calib: list, check: list, workdir: Path, threads: int, modes: list, row: dict
) -> dict[str, Callable[[], Any]]:
    """The LiteRT calls of our TF Lite exports of `model` (NHWC, the signature of `spec`): fp32, and
    full-integer int8 calibrated on `calib` (its argmax agreement with fp32 on `check` goes into `row`)."""
    from seg.export.common import ExportWrapper
    from seg.export.tflite import TFLiteRunner, export_tflite

    raw, labels = spec.tflite_uint8_input, spec.tflite_labels
    wrapper = ExportWrapper(fold_batchnorm(model), raw, labels, channels_last=True).eval()
    mean = model.pixel_mean.detach().numpy().reshape(1, 3, 1, 1)
    std = model.pixel_std.detach().numpy().reshape(1, 3, 1, 1)

    def nhwc(x: np.ndarray) -> np.ndarray:  # a normalised NCHW input as the export's input
        if raw:
            x = np.clip(np.round(x * std + mean), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))

    def classes(out: np.ndarray) -> np.ndarray:
        return out if labels else out.argmax(-1)

    inputs, check_inputs = [nhwc(v) for v in calib], [nhwc(v) for v in check]
    sample = torch.from_numpy(inputs[0])
    stem = workdir / f"{len(list(workdir.iterdir()))}"
    row["tflite_signature"] = f"{'uint8' if raw else 'float32'} NHWC in, {'labels' if labels else 'logits'} out"
    calls: dict[str, Callable[[], Any]] = {}
    fp32 = TFLiteRunner(export_tflite(wrapper, stem.with_suffix(".tflite"), sample), threads)
    if "tfl_fp32" in modes:
        x32 = inputs[0]
        calls["tfl_fp32"] = lambda: fp32(x32)
    if "tfl_int8" in modes:
        int8 = TFLiteRunner(export_tflite(wrapper, stem.with_suffix(".int8.tflite"), sample, inputs), threads)
        x8 = int8.quantize_input(inputs[0])  # an int8 input takes quantized data: done once, not timed
        calls["tfl_int8"] = lambda: int8(x8)
        pairs = [(classes(fp32(v)), classes(int8(v))) for v in check_inputs]
        row["tfl_int8_agreement"] = float(np.mean([(a == q).mean() for a, q in pairs])) if pairs else None
    return calls


def _executorch_calls(
    model: nn.Module, x: torch.Tensor, calib: list, check: list, workdir: Path, threads: int, modes: list, row: dict
) -> dict[str, Callable[[], Any]]:
    """The ExecuTorch (XNNPACK) calls of `model`: fp32, and int8 calibrated on `calib` (its argmax
    agreement with fp32 on `check` goes into `row`)."""
    from seg.export.executorch import ExecuTorchRunner, export_executorch, quantize_for_xnnpack

    folded = fold_batchnorm(model).eval()
    xn = x.numpy()
    calls: dict[str, Callable[[], Any]] = {}
    stem = workdir / f"{len(list(workdir.iterdir()))}"
    fp32 = ExecuTorchRunner(export_executorch(folded, stem.with_suffix(".pte"), x), threads)
    if "et_fp32" in modes:
        calls["et_fp32"] = lambda: fp32(xn)
    if "et_int8" in modes:
        quantized = quantize_for_xnnpack(folded, x, calib)
        int8 = ExecuTorchRunner(export_executorch(quantized, stem.with_suffix(".int8.pte"), x), threads)
        calls["et_int8"] = lambda: int8(xn)
        labels = [(fp32(v).argmax(1), int8(v).argmax(1)) for v in check]
        row["et_int8_agreement"] = float(np.mean([(a == q).mean() for a, q in labels])) if labels else None
    return calls


def benchmark_latency(cfg: Any) -> dict[str, Any]:
    """Batch-1 CPU latency of our models and their peers: eager, fast path, ONNX Runtime fp32/int8
    (options under `benchmark.latency`); prints the table and returns the JSON dict."""
    b, lat = cfg.benchmark, cfg.benchmark.latency
    unknown = set(lat.modes) - set(MODES)
    if unknown:
        raise ConfigError(f"unknown benchmark.latency.modes {sorted(unknown)}: expected some of {', '.join(MODES)}")
    if b.runs < 20:
        print(f"note: benchmark.runs={b.runs}; the published figures use at least 20")
    torch.set_num_threads(b.threads)
    specs = [s for s in SPECS if lat.models is None or s.name in lat.models]
    if lat.models is not None and len(specs) != len(lat.models):
        known = ", ".join(s.name for s in SPECS)
        raise ConfigError(f"unknown name in benchmark.latency.models {list(lat.models)}: known: {known}")
    # Official TF Lite files race the checkpoint at the same position (its conversion): same size, same signature.
    if lat.tflite_peers and not {"tfl_fp32", "tfl_int8"} & set(lat.modes):
        raise ConfigError(
            "benchmark.latency.tflite_peers run on LiteRT: add tfl_fp32 or tfl_int8 to benchmark.latency.modes"
        )
    peers = [tflite_peer_spec(path, i + 1) for i, path in enumerate(lat.tflite_peers)]
    if peers and len(lat.checkpoints) < len(peers):
        raise ConfigError(
            f"benchmark.latency.tflite_peers has {len(peers)} file(s) and benchmark.latency.checkpoints "
            f"{len(lat.checkpoints)}: give each official file the checkpoint it races (its conversion by "
            "tools/convert_tf.py), in the same order"
        )
    paired = [peers[i] if i < len(peers) else None for i in range(len(lat.checkpoints))]
    specs += [
        checkpoint_spec(path, i + 1, paired[i]) for i, path in enumerate(lat.checkpoints)
    ]  # a bad path fails first
    specs += peers
    skipped: list[str] = []
    keep_dataset = dataset_on_command_line()  # dataset overrides: the checkpoints' images come from there too
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        peak = measure_peak(b.threads, lat.peak_runs, workdir)
        if lat.calibration_images < 2:
            raise ConfigError("benchmark.latency.calibration_images must be at least 2 (batch-norm statistics)")
        cache: dict[tuple, list] = {}

        def images(spec: Spec, split: str, size: int) -> list:
            """Calibration (train) or agreement (val) inputs for `spec`, shared between models."""
            count = lat.calibration_images if split == "train" else lat.agreement_images
            key = (spec.checkpoint, split, size)
            if key not in cache:
                dataset = cfg.dataset if keep_dataset else spec.dataset or cfg.dataset
                cache[key] = _real_inputs(dataset, split, count, size, spec.normalization)
            return cache[key]

        prepared: list[tuple[dict, dict]] = []
        for spec in specs:
            if spec.name.startswith("smp") and not _smp_installed():
                skipped.append(f"{spec.name}: segmentation_models_pytorch not installed")
                continue
            print(f"preparing {spec.name} ...", flush=True)
            prepared.append(_prepare_model(spec, cfg, workdir, images))
            if spec.tflite_file:  # the multiply-adds of its conversion, for the GFLOP/s
                index = peers.index(spec)
                prepared[-1][0]["multiply_adds"] = next(
                    row["multiply_adds"] for row, _ in prepared if row["model"].startswith(f"trained {index + 1}:")
                )
                prepared[-1][0]["races"] = f"trained {index + 1}"
        print(f"timing {len(prepared)} models x {len(lat.modes)} modes, {b.runs} rounds ...", flush=True)
        time_in_turns(prepared, b.warmup, b.runs)
        rows = [row for row, _ in prepared]
    dataset = str(cfg.dataset.name)
    result = {
        "task": "latency",
        "threads": b.threads,
        "warmup": b.warmup,
        "runs": b.runs,
        "torch": torch.__version__,
        "onnxruntime": ort_version(),
        "dataset": dataset,
        "peak": peak,
        "results": rows,
        "skipped": skipped,
    }
    result["targets"] = targets(result)
    print()
    print(format_table(result))
    return result


def _ms(row: dict, mode: str) -> Optional[float]:
    return row[mode]["median_ms"] if mode in row else None


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The deployment targets, each with its measured value and whether it is met (the int8
    agreement one only from `benchmark.latency.checkpoints` rows)."""
    rows = {r["model"]: r for r in result["results"]}
    out = []

    def add(name: str, value: Optional[float], goal: float, detail: str) -> None:
        met = value is not None and value >= goal
        out.append({"target": name, "value": value, "goal": goal, "met": met, "detail": detail})

    ours, peer = rows.get("mnv2+deeplabv3plus", {}), rows.get("smp DeepLabV3Plus(mobilenet_v2)", {})
    fast, eager = _ms(ours, "fast"), _ms(peer, "eager")
    add(
        "mnv2+deeplabv3plus fast path vs smp DeepLabV3Plus(mobilenet_v2) eager (speed-up)",
        eager / fast if fast and eager else None,
        1.5,
        f"{fast and round(fast, 1)} ms vs {eager and round(eager, 1)} ms",
    )
    peak = result["peak"]["conv1x1_gflops"]
    for r in result["results"]:
        if not r["peer"] and not r.get("checkpoint") and "ort_fp32" in r:
            add(
                f"{r['model']} ONNX Runtime fp32, fraction of the 1x1-conv peak",
                r["ort_fp32"]["gflops"] / peak,
                0.75,
                f"{r['ort_fp32']['gflops']:.1f} of {peak:.1f} GFLOP/s",
            )
    for r in result["results"]:
        if not r["peer"] and not r.get("checkpoint") and "ort_int8" in r and "ort_fp32" in r:
            fp32, int8 = r["ort_fp32"]["median_ms"], r["ort_int8"]["median_ms"]
            add(
                f"{r['model']} ONNX Runtime int8 vs fp32 (speed-up)",
                fp32 / int8,
                2.0,
                f"{fp32:.1f} ms vs {int8:.1f} ms",
            )
    # Agreement means something for trained weights only: random ones have no margin to keep.
    trained = [r for r in result["results"] if r.get("checkpoint") and r.get("int8_agreement") is not None]
    for r in trained:
        add(
            f"{r['model']} int8 argmax agreement with fp32 (real val images)",
            r["int8_agreement"],
            0.98,
            r["checkpoint"],
        )
    if not trained:
        add(
            "int8 argmax agreement with fp32 of a trained model",
            None,
            0.98,
            "give benchmark.latency.checkpoints=[PATH]; the other rows have random weights",
        )
    for r in result["results"]:
        if r.get("races"):  # an official TF Lite file against our TF Lite export of its conversion, on LiteRT
            mode = "tfl_int8" if "tfl_int8" in r else "tfl_fp32"
            ours = next(o for o in result["results"] if o["model"].startswith(r["races"] + ":"))
            theirs, mine = _ms(r, mode), _ms(ours, mode)
            add(
                f"{ours['model']} TF Lite {mode[4:]} vs {r['model']} on LiteRT (speed-up)",
                theirs / mine if theirs and mine else None,
                1.3 if mode == "tfl_int8" else 1.0,
                f"{mine and round(mine, 1)} ms vs {theirs and round(theirs, 1)} ms",
            )
    for r in result["results"]:
        if r.get("checkpoint") and r.get("tfl_int8_agreement") is not None:
            add(
                f"{r['model']} TF Lite int8 argmax agreement with TF Lite fp32 (real val images)",
                r["tfl_int8_agreement"],
                0.98,
                r["checkpoint"],
            )
    aspp = rows.get("mnv2+aspp_lite", {})
    if "tfl_int8" in aspp and "tfl_fp32" in aspp:
        fp32, int8 = aspp["tfl_fp32"]["median_ms"], aspp["tfl_int8"]["median_ms"]
        add(
            "mnv2+aspp_lite TF Lite int8 vs fp32 on LiteRT (speed-up)",
            fp32 / int8,
            2.0,
            f"{fp32:.1f} ms vs {int8:.1f} ms",
        )
    small, tv = rows.get("mnv2_dm05+aspp_lite", {}), rows.get("tv lraspp_mobilenet_v3_large", {})
    a, c = _ms(small, "ort_int8"), _ms(tv, "ort_int8")
    add(
        "mnv2_dm05+aspp_lite int8 vs torchvision lraspp_mobilenet_v3_large int8 (speed-up)",
        c / a if a and c else None,
        2.0,
        f"{a and round(a, 1)} ms vs {c and round(c, 1)} ms",
    )
    return out


def format_table(result: dict[str, Any]) -> str:
    """The markdown table (median / p90 ms per mode) and the targets."""
    peak = result["peak"]
    et = any("et_fp32" in r or "et_int8" in r for r in result["results"])
    tfl = any("tfl_fp32" in r or "tfl_int8" in r for r in result["results"])
    lines = [
        f"CPU peak ({result['threads']} threads): fp32 matmul 2048^3 {peak['matmul_gflops']:.1f} GFLOP/s; "
        f"1x1 conv 256->256 @128x128 {peak['conv1x1_torch_gflops']:.1f} GFLOP/s (torch), "
        f"{peak['conv1x1_ort_gflops']:.1f} GFLOP/s (ONNX Runtime)",
        f"batch 1, {result['threads']} threads, {result['warmup']} warm-up + {result['runs']} timed runs; "
        "ms as median / p90; GFLOP/s = 2 x multiply-adds / median",
        "",
        "| model | input | MAdds | eager | fast path | ORT fp32 | ORT int8 | int8 speed-up | int8 agreement | "
        "ORT fp32 GFLOP/s | % of 1x1 peak |"
        + (" ExecuTorch fp32 | ExecuTorch int8 | int8 agreement |" if et else "")
        + (" LiteRT fp32 | LiteRT int8 | int8 speed-up | int8 agreement |" if tfl else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|"
        + ("---|---|---|" if et else "")
        + ("---|---|---|---|" if tfl else ""),
    ]
    for r in result["results"]:

        def cell(mode: str, r: dict = r) -> str:
            return f"{r[mode]['median_ms']:.1f} / {r[mode]['p90_ms']:.1f}" if mode in r else "-"

        speedup = (
            f"{r['ort_fp32']['median_ms'] / r['ort_int8']['median_ms']:.2f}x"
            if "ort_int8" in r and "ort_fp32" in r
            else "-"
        )
        agree = "-"
        if r.get("int8_agreement") is not None:
            agree = f"{100 * r['int8_agreement']:.1f}%" + ("" if r.get("checkpoint") else " (random)")
        gflops = f"{r['ort_fp32']['gflops']:.1f}" if "ort_fp32" in r else "-"
        frac = f"{100 * r['ort_fp32']['gflops'] / peak['conv1x1_gflops']:.0f}%" if "ort_fp32" in r else "-"
        name = f"{r['model']} (peer)" if r["peer"] else r["model"]
        et_cells = ""
        if et:
            et_agree = "-" if r.get("et_int8_agreement") is None else f"{100 * r['et_int8_agreement']:.1f}%"
            et_cells = f" {cell('et_fp32')} | {cell('et_int8')} | {et_agree} |"
        if tfl:
            tfl_agree = "-" if r.get("tfl_int8_agreement") is None else f"{100 * r['tfl_int8_agreement']:.1f}%"
            tfl_speedup = (
                f"{r['tfl_fp32']['median_ms'] / r['tfl_int8']['median_ms']:.2f}x"
                if "tfl_int8" in r and "tfl_fp32" in r
                else "-"
            )
            et_cells += f" {cell('tfl_fp32')} | {cell('tfl_int8')} | {tfl_speedup} | {tfl_agree} |"
        madds = f"{r['multiply_adds'] / 1e9:.2f}B" if r["multiply_adds"] else "-"
        lines.append(
            f"| {name} | {r['input_size']} | {madds} | {cell('eager')} | {cell('fast')} | "
            f"{cell('ort_fp32')} | {cell('ort_int8')} | {speedup} | {agree} | {gflops} | {frac} |{et_cells}"
        )
    for r in result["results"]:
        if r.get("checkpoint"):
            lines.append(f"\n{r['model'].split(':')[0]}: {r['checkpoint']}")
        if r.get("tflite_file"):
            lines.append(f"\n{r['model'].split(':')[0]}: {r['tflite_file']} (races {r['races']})")
    for s in result.get("skipped", []):
        lines.append(f"\nnot run: {s}")
    lines += ["", "| target | goal | measured | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        lines.append(f"| {t['target']} | {t['goal']:g} | {value} ({t['detail']}) | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines)
