"""Multiply-adds and parameters of a segmenter, as the DeepLab model zoo counts them.

    python tools/flops.py experiment=mobilenetv2_coco_voc_trainaug
    python tools/flops.py experiment=mobilenetv2_coco_voc_trainaug eval.output_stride=8 \
        eval.scales=[0.5,0.75,1.0,1.25,1.5,1.75] eval.flip=true
    python tools/flops.py backbone=mnv3_large head=lraspp flops.input_size=1025

Prints a table; the last line is one JSON object (madds, params, input_size, output_stride, ...).
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from seg.config import register_configs
from seg.flops import count_evaluation, count_multiply_adds, count_parameters
from seg.models import build_segmenter

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    model = build_segmenter(cfg.model)
    output_stride = cfg.eval.output_stride or cfg.model.output_stride
    model.set_output_stride(output_stride)
    size = cfg.flops.input_size
    scales = list(cfg.eval.scales)
    result = count_evaluation(model, size, scales, cfg.eval.flip)
    backbone_madds = count_multiply_adds(model.backbone, size, size)
    total_1x = count_multiply_adds(model, size, size)
    backbone = OmegaConf.select(cfg, "model.backbone._target_").rsplit(".", 1)[-1]
    head = OmegaConf.select(cfg, "model.head._target_").rsplit(".", 1)[-1]

    print(f"{backbone} (depth multiplier {cfg.model.backbone.depth_multiplier}) + {head}, "
          f"{cfg.model.num_classes} classes, output stride {output_stride}")
    print(f"{'part':<12}{'params':>14}{'multiply-adds @' + str(size):>24}")
    print(f"{'backbone':<12}{count_parameters(model.backbone):>14,}{backbone_madds / 1e9:>23.3f}B")
    print(f"{'head':<12}{count_parameters(model.head):>14,}{(total_1x - backbone_madds) / 1e9:>23.3f}B")
    print(f"{'total':<12}{count_parameters(model):>14,}{total_1x / 1e9:>23.3f}B")
    if len(scales) > 1 or cfg.eval.flip:
        print(f"\nevaluation passes (flip={cfg.eval.flip}):")
        for p in result["passes"]:
            print(f"  scale {p['scale']:<5} {p['size']:>5}x{p['size']:<5} {p['madds'] / 1e9:>10.3f}B")
        print(f"  {'sum':<25} {result['madds'] / 1e9:>10.3f}B")
    summary = {
        "madds": result["madds"],
        "params": count_parameters(model),
        "input_size": size,
        "output_stride": output_stride,
        "scales": scales,
        "flip": bool(cfg.eval.flip),
        "backbone": backbone,
        "depth_multiplier": cfg.model.backbone.depth_multiplier,
        "head": head,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
