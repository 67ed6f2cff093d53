"""The benchmarks (`tools/benchmark.py TASK`, seg/bench): one test per task, and an unknown task."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import OFFICIAL_FIXTURES, compose_config, tiny_train_args
from omegaconf import OmegaConf
from test_export import checkpoint, config

from seg.bench import TASKS, run_task
from seg.errors import ConfigError


def _cfg(tmp_path, *overrides):
    return compose_config(
        f"dataset.root={tmp_path}", "dataset.synthetic.num_train=4", "dataset.synthetic.num_val=1",
        "dataset.synthetic.image_size=32", "train.crop_size=33", "train.batch_size=2",
        "benchmark.warmup=1", "benchmark.runs=2", *overrides)  # fmt: skip


def test_data_task(tmp_path, capsys):
    result = run_task(_cfg(tmp_path, "benchmark.task=data", "benchmark.workers=[0,1]"))
    assert [r["workers"] for r in result["results"]] == [0, 1]
    assert all(r["images_per_s"] > 0 for r in result["results"])
    assert "| workers | images/s |" in capsys.readouterr().out


@pytest.mark.usefixtures("one_thread")
def test_train_task_reports_images_per_second(synth_root, capsys):
    cfg = compose_config(
        *tiny_train_args(
            synth_root,
            "benchmark.task=train",
            "flops.input_size=65",
            "train.batch_size=2",
            "benchmark.warmup=0",
            "benchmark.runs=1",
            "benchmark.threads=1",
        )
    )
    result = run_task(cfg)
    assert [r["config"] for r in result["results"]] == [
        "configured",
        "mobilenetv2_coco_voc_trainaug",
        "mobilenetv2_dm05_coco_voc_trainaug",
    ]
    assert all(r["images_per_s"] > 0 for r in result["results"]) and result["crop_size"] == 65
    assert "| config | backbone | head | images/s |" in capsys.readouterr().out


@pytest.mark.slow
def test_latency_task_runs_and_reports_the_targets(tmp_path, capsys):
    cfg = config(tmp_path, "benchmark.task=latency", "benchmark.warmup=1", "benchmark.runs=2",
                 "benchmark.latency.models=[mnv2_dm05+aspp_lite]", "benchmark.latency.input_size=33",
                 "benchmark.latency.peer_input_size=32", "benchmark.latency.calibration_images=2",
                 "benchmark.latency.agreement_images=1", "benchmark.latency.peak_runs=1")  # fmt: skip
    result = run_task(cfg)
    (row,) = result["results"]
    assert row["model"] == "mnv2_dm05+aspp_lite" and row["input_size"] == 33
    for mode in ("eager", "fast", "ort_fp32", "ort_int8"):
        assert row[mode]["median_ms"] > 0 and row[mode]["p90_ms"] >= row[mode]["median_ms"] and row[mode]["gflops"] > 0
    assert 0 <= row["int8_agreement"] <= 1
    assert result["peak"]["matmul_gflops"] > 0 and result["peak"]["conv1x1_gflops"] > 0
    assert {t["goal"] for t in result["targets"]} == {0.75, 2.0, 1.5, 0.98}
    (agreement,) = [t for t in result["targets"] if t["goal"] == 0.98]
    assert agreement["value"] is None and "benchmark.latency.checkpoints" in agreement["detail"]
    out = capsys.readouterr().out
    assert "| model | input | MAdds | eager | fast path | ORT fp32 | ORT int8 |" in out and "| target |" in out


def test_latency_rows_for_trained_checkpoints(tmp_path, capsys):
    """benchmark.latency.checkpoints: the checkpoint's own weights and dataset, and its int8
    agreement is the one the target reads."""
    ckpt, model, _ = checkpoint(tmp_path, "mnv3_small", "lraspp")
    executorch = importlib.util.find_spec("executorch") is not None  # its column, when installed (int8:
    modes = "[ort_fp32,ort_int8,et_fp32]" if executorch else "[ort_fp32,ort_int8]"  # test_export's)
    cfg = config(tmp_path, "benchmark.task=latency", "benchmark.warmup=1", "benchmark.runs=2",
                 "benchmark.latency.models=[]", f"benchmark.latency.checkpoints=[{ckpt}]",
                 f"benchmark.latency.modes={modes}", "benchmark.latency.input_size=33",
                 "benchmark.latency.calibration_images=2", "benchmark.latency.agreement_images=1",
                 "benchmark.latency.peak_runs=1")  # fmt: skip
    result = run_task(cfg)
    (row,) = result["results"]
    assert row["model"] == "trained 1: mobilenet_v3_small x1 + LRASPPHead" and row["checkpoint"] == str(ckpt)
    assert row["params"] == sum(p.numel() for p in model.parameters())
    assert row["float_modules"] == ["backbone.stem", "backbone.blocks.0"]
    (agreement,) = [t for t in result["targets"] if t["goal"] == 0.98]
    assert agreement["value"] == row["int8_agreement"] and 0 <= agreement["value"] <= 1
    out = capsys.readouterr().out
    assert f"trained 1: {ckpt}" in out and "(random)" not in out
    if executorch:
        assert row["et_fp32"]["median_ms"] > 0 and "et_int8" not in row
        assert "ExecuTorch fp32 | ExecuTorch int8 |" in out


OFFICIAL = OFFICIAL_FIXTURES
OFFICIAL_FLOAT = OFFICIAL / "models" / "deeplabv3_257_mv_gpu.tflite"


@pytest.mark.slow
@pytest.mark.skipif(not OFFICIAL_FLOAT.is_file(), reason=f"{OFFICIAL_FLOAT} is absent")
def test_latency_races_an_official_tflite_file_with_its_conversion(tmp_path, capsys):
    """benchmark.latency.tflite_peers: the official file as it is, its conversion's TF Lite exports
    at the file's size and signature, and the race in the targets."""
    pytest.importorskip("litert_torch")
    from seg.engine.checkpoint import save_checkpoint
    from seg.models.official import convert_source

    state = convert_source(OFFICIAL_FLOAT)
    stored = OmegaConf.create(state["config"])
    stored.dataset.root = str(OFFICIAL)  # its real VOC images calibrate and check the int8 file
    state["config"] = OmegaConf.to_yaml(stored)
    ckpt = tmp_path / "float257.pt"
    save_checkpoint(ckpt, state)
    cfg = config(tmp_path, "benchmark.task=latency", "benchmark.warmup=1", "benchmark.runs=2",
                 "benchmark.latency.models=[]", f"benchmark.latency.checkpoints=[{ckpt}]",
                 f"benchmark.latency.tflite_peers=[{OFFICIAL_FLOAT}]", "benchmark.latency.modes=[tfl_fp32,tfl_int8]",
                 "benchmark.latency.agreement_images=1", "benchmark.latency.peak_runs=1")  # fmt: skip
    result = run_task(cfg)
    ours, official = result["results"]
    assert ours["input_size"] == official["input_size"] == 257 and official["races"] == "trained 1"
    assert ours["tflite_signature"] == "float32 NHWC in, logits out"
    assert ours["tfl_fp32"]["median_ms"] > 0 and ours["tfl_int8"]["median_ms"] > 0
    assert "tfl_fp32" in official and "tfl_int8" not in official  # a float file: the fp32 column
    assert official["multiply_adds"] == ours["multiply_adds"] > 0
    assert 0.9 <= ours["tfl_int8_agreement"] <= 1.0
    (race,) = [t for t in result["targets"] if "vs official 1" in t["target"]]
    assert race["goal"] == 1.0 and race["value"] > 0
    out = capsys.readouterr().out
    assert "LiteRT fp32 | LiteRT int8 |" in out and "(races trained 1)" in out


@pytest.mark.skipif(not OFFICIAL_FLOAT.is_file(), reason=f"{OFFICIAL_FLOAT} is absent")
def test_tflite_peers_need_their_checkpoints_and_a_litert_mode(tmp_path):
    peers = f"benchmark.latency.tflite_peers=[{OFFICIAL_FLOAT}]"
    with pytest.raises(ConfigError, match="give each official file the checkpoint it races"):
        run_task(config(tmp_path, "benchmark.task=latency", "benchmark.latency.models=[]", peers,
                        "benchmark.latency.modes=[tfl_fp32]"))  # fmt: skip
    with pytest.raises(ConfigError, match="tfl_fp32 or tfl_int8"):
        run_task(config(tmp_path, "benchmark.task=latency", "benchmark.latency.models=[]", peers))


@pytest.mark.slow
def test_tradeoff_task_writes_plot_json_and_table(tmp_path):
    cfg = compose_config("benchmark.task=tradeoff", "benchmark.warmup=0", "benchmark.runs=1",
                         "benchmark.tradeoff.mnv1_multipliers=[0.25]", "benchmark.tradeoff.mnv1_sizes=[32,48]",
                         "benchmark.tradeoff.mnv2_multipliers=[]", "benchmark.tradeoff.mnv3=[small]",
                         "benchmark.tradeoff.mnasnet_b1_multipliers=[]", "benchmark.tradeoff.input_size=32",
                         f"benchmark.tradeoff.output_dir={tmp_path}")  # fmt: skip
    result = run_task(cfg)
    assert [(r["family"], r["label"]) for r in result["results"]] == [
        ("MobileNetV1", "0.25-32"),
        ("MobileNetV1", "0.25-48"),
        ("MobileNetV3", "Small"),
    ]
    for row in result["results"]:
        assert row["multiply_adds"] > 0 and row["eager"]["median_ms"] > 0 and row["ort_fp32"]["median_ms"] > 0
    png = tmp_path / "tradeoff.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "tradeoff.json").read_text())["results"] == result["results"]
    assert "| MobileNetV1 | 0.25-48 | 48 |" in (tmp_path / "tradeoff.md").read_text()


def test_unknown_task_lists_the_tasks(tmp_path):
    with pytest.raises(ConfigError, match="tasks: " + ", ".join(sorted(TASKS))) as raised:
        run_task(_cfg(tmp_path, "benchmark.task=nope"))
    assert "\n" not in str(raised.value)
