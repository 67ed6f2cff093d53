"""Convert an official TensorFlow DeepLab MobileNetV2 release into a checkpoint of this project.

    python tools/convert_tf.py source=deeplabv3_mnv2_pascal_trainaug/frozen_inference_graph.pb \
        output=mnv2_trainaug.pt experiment=mobilenetv2_coco_voc_trainaug
    python tools/convert_tf.py source=deeplabv3_mnv2_pascal_trainaug/model.ckpt-30000 \
        output=mnv2_trainaug.pt experiment=mobilenetv2_coco_voc_trainaug   # needs pip install ".[tf]"

The checkpoint holds the weights, the config (with TF DeepLab's numerics: "SAME" padding, its
batch-norm epsilon, align_corners=True resizing, x/127.5 - 1 inputs) and the source's SHA-256 and
tensor mapping, so tools/eval.py, export.py and predict.py take it like any other.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from seg.cli import launch, one_line_errors
from seg.config import check_config, register_configs
from seg.engine.checkpoint import save_checkpoint
from seg.errors import ConfigError
from seg.files import refuse_overwrite, require_writable
from seg.models.tf_weights import convert_deeplab

register_configs()
log = logging.getLogger("convert_tf")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    if not cfg.convert.source:
        raise ConfigError("source=PATH is required: a frozen_inference_graph.pb or a model.ckpt-NNNN prefix")
    source = Path(cfg.convert.source)
    output = Path(cfg.convert.output) if cfg.convert.output else source.parent / "model.pt"
    refuse_overwrite(output, "convert.output", cfg.convert.overwrite)
    require_writable(output, "convert.output")
    state = convert_deeplab(source, cfg)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(output, state)
    log.info(
        "converted %d tensors from %s (sha256 %s)",
        len(state["provenance"]["mapping"]),
        source,
        state["provenance"]["sha256"][:16],
    )
    print(f"wrote {output}")


if __name__ == "__main__":
    launch(main, aliases={"source": "convert.source", "output": "convert.output"})
