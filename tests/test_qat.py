"""`train.qat=true`: quantization-aware fine-tuning of a float checkpoint; the step trains the
fake-quantized graph, checkpoints hold a plain segmenter's weights plus the learned ranges, a resume
is exact, and the int8 export takes those ranges instead of calibrating."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_tool
from conftest import compose_config, randomize_batchnorm, tiny_train_args
from omegaconf import OmegaConf
from test_trainer_steps import assert_same, cloned, runs  # noqa: F401  (fixture)

from seg.engine.checkpoint import CheckpointError, load_checkpoint, load_segmenter, save_checkpoint
from seg.engine.qat import QatError, QatSegmenter
from seg.engine.trainer import batches, restore, save, train, train_step
from seg.errors import ConfigError
from seg.export import ExportError, run_export
from seg.models.segmenter import build_segmenter


def float_checkpoint(path: Path, synth_root: Path) -> Path:
    """The float model to fine-tune: the tiny run's model, random weights, batch norm statistics
    that are not the identity."""
    torch.manual_seed(0)
    cfg = compose_config(*tiny_train_args(synth_root))
    model = build_segmenter(cfg.model)
    randomize_batchnorm(model)
    save_checkpoint(path, {"model": model.state_dict(), "config": OmegaConf.to_yaml(cfg, resolve=True)})
    return path


def qat_config(synth_root: Path, start: Path, *overrides: str):
    return compose_config(*tiny_train_args(synth_root, "train.qat=true", f"train.init_from={start}", *overrides))


@pytest.mark.slow
def test_steps_train_the_fake_quantized_graph_and_resume_is_exact(synth_root, tmp_path, runs):  # noqa: F811
    start = float_checkpoint(tmp_path / "float.pt", synth_root)
    run_dir = tmp_path / "run"
    run = runs(qat_config(synth_root, start), run_dir)
    restore(run)
    assert isinstance(run.model, QatSegmenter) and run.net.aux is None
    graph_ops = {str(n.target) for n in run.model.graph.graph.nodes}
    assert not any("dropout" in op for op in graph_ops), "no dropout (the train / eval switch would set p=0.5)"
    weights, activations = run.model.quantizer_counts()
    assert weights > 10 and activations > 10
    # The graph starts from the float checkpoint's weights.
    start_state = load_checkpoint(start)["model"]
    assert_same(run.model.float_state_dict()["backbone.stem.conv.weight"], start_state["backbone.stem.conv.weight"])

    run.net.train()
    data = batches(run)
    before = cloned(run.model.quantizer_state_dict())
    for _ in range(2):
        train_step(run, *next(data))
    after = run.model.quantizer_state_dict()
    scales = [k for k in after if k.endswith(".scale")]
    assert any(not torch.equal(before[k], after[k]) for k in scales), "the ranges follow the activations"
    save(run, best=False)
    run.close()

    # The checkpoint: a plain segmenter's weights (evaluation and fp32 export read them) + the ranges.
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert set(state["qat"]) == set(after) and state["qat"].keys().isdisjoint(state["model"])
    plain, _ = load_segmenter(run_dir / "checkpoints" / "last.pt")
    assert_same(cloned(plain.state_dict()), cloned(state["model"]), "a plain segmenter's state")

    resumed = runs(qat_config(synth_root, start, "train.resume=auto"), run_dir)
    restore(resumed)
    assert isinstance(resumed.model, QatSegmenter)
    resumed.net.train()
    images, masks = next(data)
    again = next(batches(resumed))
    assert torch.equal(again[0], images)
    assert train_step(resumed, *again) == train_step(run, images, masks)
    assert_same(cloned(resumed.model.float_state_dict()), cloned(run.model.float_state_dict()), "weights")
    assert_same(cloned(resumed.model.quantizer_state_dict()), cloned(run.model.quantizer_state_dict()), "ranges")
    resumed.close()

    float_run = runs(compose_config(*tiny_train_args(synth_root, "train.resume=auto")), run_dir)
    with pytest.raises(CheckpointError, match="with train.qat=true: resume with it"):
        restore(float_run)


def test_eval_mode_keeps_the_ranges_and_takes_any_image_size(synth_root, tmp_path, runs):  # noqa: F811
    run = runs(qat_config(synth_root, float_checkpoint(tmp_path / "float.pt", synth_root)), tmp_path / "run")
    restore(run)
    run.net.train()
    train_step(run, *next(batches(run)))
    model = run.model.eval()
    ranges = cloned(model.quantizer_state_dict())
    with torch.no_grad():
        for size in [(48, 48), (61, 97)]:
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 21, *size)
        twice = [model(torch.ones(1, 3, 40, 40)) for _ in range(2)]
        with pytest.raises(QatError, match="takes images of 32 to 8192 pixels a side, got \\(16, 40\\)"):
            model(torch.ones(1, 3, 16, 40))
    assert torch.equal(*twice), "batch norm on running statistics in evaluation"
    assert_same(cloned(model.quantizer_state_dict()), ranges, "evaluation never moves the ranges")


@pytest.mark.slow
def test_export_uses_the_learned_ranges_and_the_benchmark_compares_the_three(synth_root, tmp_path):
    import onnx
    from onnx import numpy_helper

    start = float_checkpoint(tmp_path / "float.pt", synth_root)
    run_dir = tmp_path / "run"
    train(qat_config(synth_root, start), run_dir)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    ranges = load_checkpoint(checkpoint)["qat"]
    learned = np.array([float(v) for k, v in ranges.items() if k.endswith(".scale") and v.numel() == 1])

    path = tmp_path / "qat.int8.onnx"
    report = run_export(
        compose_config(
            f"dataset.root={synth_root}",
            f"checkpoint={checkpoint}",
            "export.quantize=int8",
            "export.input_size=64",
            f"export.path={path}",
            "export.eval_images=2",
            "export.min_agreement=0.9",  # a few steps from random weights: many near-ties between classes
        )
    )
    assert report["calibration_images"] == 0 and report["int8_check"]["agreement_vs_qat"] >= 0.9
    proto = onnx.load(str(path))
    constants = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    exported = [
        float(constants[n.input[1]])
        for n in proto.graph.node
        if n.op_type == "QuantizeLinear" and n.input[1] in constants and constants[n.input[1]].size == 1
    ]
    assert len(exported) >= len(learned) // 2
    for scale in exported:  # every activation range of the file is one that QAT learned
        assert np.abs(learned / scale - 1).min() < 1e-6, scale
    meta = json.loads(next(p.value for p in proto.metadata_props if p.key == "seg"))
    assert meta["int8_ranges"] == "quantization-aware training" and meta["float_modules"] == []
    assert np.isfinite(report["miou_int8"])
    tflite = compose_config(f"dataset.root={synth_root}", f"checkpoint={checkpoint}", "export.format=tflite",
                            "export.quantize=int8", f"export.path={tmp_path / 'qat.tflite'}")  # fmt: skip
    with pytest.raises(ExportError, match=r"train.qat.*export.format=tflite does not take"):
        run_export(tflite)  # refused before any work, in one line
    assert not (tmp_path / "qat.tflite").exists()

    # tools/benchmark.py compression: fp32, PTQ and QAT files of the pair, from the same exports.
    from seg.bench.compression import benchmark_compression

    result = benchmark_compression(
        compose_config(
            f"dataset.root={synth_root}",
            f"benchmark.compression.float_checkpoints=[{start}]",
            f"benchmark.compression.qat_checkpoints=[{checkpoint}]",
            "export.input_size=64",
            "export.eval_images=2",
            "export.min_agreement=0.9",
            "benchmark.warmup=0",
            "benchmark.runs=2",
        )
    )
    (row,) = result["rows"]
    assert row["miou"]["qat_int8"] == report["miou_int8"]
    assert set(row["latency_ms"]) == set(row["size_mb"]) == {"fp32", "ptq_int8", "qat_int8"}
    assert row["size_mb"]["qat_int8"] < row["size_mb"]["fp32"] / 2
    with pytest.raises(ConfigError, match="was not trained with train.qat=true"):
        benchmark_compression(
            compose_config(
                f"benchmark.compression.float_checkpoints=[{start}]", f"benchmark.compression.qat_checkpoints=[{start}]"
            )
        )


@pytest.mark.slow
def test_two_processes_fine_tune_with_qat(synth_root, tmp_path):
    start = float_checkpoint(tmp_path / "float.pt", synth_root)
    args = tiny_train_args(synth_root, "train.qat=true", f"train.init_from={start}", "train.freeze_bn=true")
    out = run_tool(
        "train",
        *args,
        f"hydra.run.dir={tmp_path / 'run'}",
        launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "2 processes" in log and "train.qat: fake quantization" in log
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["iteration"] == 4 and state["qat"]


def test_qat_needs_a_trained_model_to_start_from(synth_root):
    from seg.config import check_train_config

    cfg = compose_config(*tiny_train_args(synth_root, "train.qat=true"))
    with pytest.raises(ConfigError, match="train.qat=true fine-tunes a trained float model"):
        check_train_config(cfg, 1)
