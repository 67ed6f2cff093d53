"""`tools/benchmark.py data`: the loader throughput task."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from seg.bench import TASKS, run_task
from seg.config import register_configs
from seg.errors import ConfigError
from test_data_folder import CONF


def _cfg(tmp_path, *overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[
            f"dataset.root={tmp_path}", "dataset.synthetic.num_train=4", "dataset.synthetic.num_val=1",
            "dataset.synthetic.image_size=32", "train.crop_size=33", "train.batch_size=2",
            "benchmark.warmup=1", "benchmark.runs=2", *overrides])  # fmt: skip


def test_data_task(tmp_path, capsys):
    result = run_task(_cfg(tmp_path, "benchmark.task=data", "benchmark.workers=[0,1]"))
    assert [r["workers"] for r in result["results"]] == [0, 1]
    assert all(r["images_per_s"] > 0 for r in result["results"])
    assert "| workers | images/s |" in capsys.readouterr().out


def test_unknown_task_lists_the_tasks(tmp_path):
    with pytest.raises(ConfigError, match="tasks: " + ", ".join(sorted(TASKS))) as raised:
        run_task(_cfg(tmp_path, "benchmark.task=nope"))
    assert "\n" not in str(raised.value)
