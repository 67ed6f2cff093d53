"""Convert an official DeepLab MobileNetV2 release into a checkpoint of this project.

    seg-convert source=deeplabv3_257_mv_gpu.tflite output=deeplab_mv_gpu.pt
    seg-convert source=deeplabv3_mnv2_dm05_pascal_quant.tflite      # Coral, dequantised
    seg-convert source=deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz   # model-zoo archive
    seg-convert source=deeplabv3_mnv2_pascal_train_aug/frozen_inference_graph.pb
    seg-convert source=deeplabv3_mnv2_pascal_train_aug/model.ckpt-30000   # needs pip install "seg[tf]"

From a checkout: `python tools/convert_tf.py ...`, the same. The architecture is read from the file
(depth multiplier, classes, output stride, input size and normalisation, align_corners). The
checkpoint holds the weights, that config with TF DeepLab's numerics, and the source's SHA-256 and
tensor mapping, so seg-eval, seg-export, seg-predict and `train.init_from` take it like any other.
`python -m seg.pretrained` lists the official releases.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from seg.cli import launch, one_line_errors
from seg.commands import CONFIG_NAME, CONFIG_PATH
from seg.config import check_config, register_configs
from seg.engine.checkpoint import save_checkpoint
from seg.errors import ConfigError
from seg.files import refuse_overwrite, require_writable
from seg.models.official import ARCHIVE_SUFFIXES, convert_source

register_configs()
log = logging.getLogger("convert_tf")

ALIASES = {"source": "convert.source", "output": "convert.output"}


def default_output(source: Path) -> Path:
    """<source name>.pt beside the source (`model.pt` for a checkpoint prefix or a frozen graph)."""
    name = source.name
    for suffix in (*ARCHIVE_SUFFIXES, ".tflite"):
        if name.lower().endswith(suffix):
            return source.with_name(name[: -len(suffix)] + ".pt")
    return source.parent / "model.pt"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    c = cfg.convert
    if not c.source:
        raise ConfigError(
            "source=PATH is required: a .tflite file, a release archive (.tar.gz), a frozen_inference_graph.pb "
            "or a model.ckpt-NNNN prefix"
        )
    if c.output_stride is not None and c.output_stride not in (8, 16, 32):
        raise ConfigError(f"convert.output_stride={c.output_stride} must be 8, 16 or 32 (or null)")
    source = Path(c.source)
    output = Path(c.output) if c.output else default_output(source)
    refuse_overwrite(output, "convert.output", c.overwrite)
    require_writable(output, "convert.output")
    state = convert_source(source, c.output_stride)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(output, state)
    p = state["provenance"]
    log.info("converted %d layers from %s (%s, sha256 %s)", len(p["mapping"]), source, p["format"], p["sha256"][:16])
    print(f"wrote {output}")


def run() -> None:
    """`seg-convert`."""
    launch(main, aliases=ALIASES)


if __name__ == "__main__":
    run()
