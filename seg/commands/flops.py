"""Multiply-adds and parameters of a segmenter, as the DeepLab model zoo counts them.

    seg-flops experiment=mobilenetv2_coco_voc_trainaug
    seg-flops experiment=mobilenetv2_coco_voc_trainaug eval.output_stride=8 \
        eval.scales=[0.5,0.75,1.0,1.25,1.5,1.75] eval.flip=true
    seg-flops backbone=mnv3_large head=lraspp flops.input_size=1025
    seg-flops backbone=mnv1_a050 flops.classifier=true flops.input_size=160
    seg-flops flops.layer_example=true

From a checkout: `python tools/flops.py ...`, the same. Prints a table; the last line is one JSON
object (madds, params, input_size, output_stride, ...). `flops.classifier=true` counts the encoder in
its ImageNet classification form (global average pool + 1000-way FC) as the encoders' papers do;
`flops.layer_example=true` compares one standard conv layer with a depthwise-separable one, by
formula and by the hooks that count every model.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from seg.cli import launch, one_line_errors
from seg.commands import CONFIG_NAME, CONFIG_PATH
from seg.config import check_config, register_configs
from seg.flops import count_evaluation, count_multiply_adds, count_parameters, separable_layer_example
from seg.models import build_segmenter
from seg.models.classifier import build_classifier
from seg.models.segmenter import part_names

register_configs()


def layer_example(cfg: DictConfig) -> None:
    e = separable_layer_example(
        cfg.flops.layer.size, cfg.flops.layer.in_channels, cfg.flops.layer.out_channels, cfg.flops.layer.kernel
    )
    h, di, dj, k = e["size"], e["in_channels"], e["out_channels"], e["kernel"]
    print(f"one layer: {h}x{h}x{di} -> {h}x{h}x{dj}, {k}x{k} kernel, stride 1")
    print(f"{'layer':<22}{'formula':<22}{'by formula':>15}{'by hooks':>15}{'params, BN incl.':>18}")
    rows = [("standard conv", "h*w*d_i*d_j*k^2", "standard"), ("depthwise-separable", "h*w*d_i*(k^2+d_j)", "separable")]
    for label, formula, key in rows:
        print(f"{label:<22}{formula:<22}{e['formula'][key]:>15,}{e['hooks'][key]:>15,}{e['params'][key]:>18,}")
    print(f"separable / standard = {e['ratio']:.4f}; 1/d_j + 1/k^2 = 1/{dj} + 1/{k * k} = {e['ratio_formula']:.4f}")
    agree = e["formula"] == e["hooks"]
    print(f"formula and hooks agree: {'yes' if agree else 'NO'}")
    print(json.dumps({**e, "agree": agree}))


def classifier(cfg: DictConfig) -> None:
    model = build_classifier(cfg.model.backbone, start_weights=False)  # counts need no weights
    size = cfg.flops.input_size
    total = count_multiply_adds(model, size, size)
    encoder = count_multiply_adds(model.encoder, size, size)
    backbone, _ = part_names(cfg.model)
    multiplier = cfg.model.backbone.depth_multiplier
    print(f"{backbone} (depth multiplier {multiplier}), classification form, {size}x{size} input, 1000 classes")
    print(f"{'part':<12}{'params':>14}{'multiply-adds @' + str(size):>24}")
    print(f"{'encoder':<12}{count_parameters(model.encoder):>14,}{encoder / 1e6:>23.1f}M")
    print(f"{'top':<12}{count_parameters(model.top):>14,}{(total - encoder) / 1e6:>23.1f}M")
    print(f"{'total':<12}{count_parameters(model):>14,}{total / 1e6:>23.1f}M")
    print(
        json.dumps(
            {
                "madds": total,
                "params": count_parameters(model),
                "input_size": size,
                "classifier": True,
                "backbone": backbone,
                "depth_multiplier": multiplier,
            }
        )
    )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    if cfg.flops.layer_example:
        layer_example(cfg)
        return
    if cfg.flops.classifier:
        classifier(cfg)
        return
    model = build_segmenter(cfg.model, start_weights=False)  # counts need no weights
    output_stride = cfg.eval.output_stride or cfg.model.output_stride
    model.set_output_stride(output_stride)
    size = cfg.flops.input_size
    scales = list(cfg.eval.scales)
    result = count_evaluation(model, size, scales, cfg.eval.flip)
    backbone_madds = count_multiply_adds(model.backbone, size, size)
    total_1x = count_multiply_adds(model, size, size)
    backbone, head = part_names(cfg.model)

    print(
        f"{backbone} (depth multiplier {cfg.model.backbone.depth_multiplier}) + {head}, "
        f"{cfg.model.num_classes} classes, output stride {output_stride}"
    )
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


def run() -> None:
    """`seg-flops`."""
    launch(main)


if __name__ == "__main__":
    run()
