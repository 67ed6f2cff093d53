"""A small TensorFlow DeepLab-MobileNetV2 (+ image-level head) built from TF ops with the official
variable names and random weights, to check the converter against TensorFlow itself.

Channel widths follow TF-slim's MobileNetV2 rules as DeepLab calls them (min_depth = divisible_by
= 8 at depth multiplier 1.0, else 1; expansions rounded to multiples of 8), written here
independently of the project's model code.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

V2_BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


class Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def var(self, name: str, shape, kind: str = "weight", fan_in: int | None = None, gain: float = 2.0) -> tf.Tensor:
        if kind == "weight":
            # He initialisation keeps activations (and so the logits' spatial detail) alive
            fan_in = fan_in or int(np.prod(shape[:-1]))
            value = self.rng.normal(0, np.sqrt(gain / fan_in), shape)
        elif kind == "gamma":
            value = self.rng.uniform(0.5, 1.5, shape)
        elif kind == "var":
            value = self.rng.uniform(0.5, 2.0, shape)
        else:  # beta, mean, bias
            value = self.rng.uniform(-0.3, 0.3, shape)
        return tf.compat.v1.get_variable(name, initializer=value.astype(np.float32))

    def bn(self, x, scope: str, eps: float, relu6: bool | None):
        c = int(x.shape[-1])
        with tf.compat.v1.variable_scope(scope + "/BatchNorm"):
            gamma = self.var("gamma", [c], "gamma")
            beta = self.var("beta", [c], "beta")
            mean = self.var("moving_mean", [c], "mean")
            var = self.var("moving_variance", [c], "var")
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, mean, var, epsilon=eps, is_training=False)
        if relu6 is None:
            return y
        return tf.nn.relu6(y) if relu6 else tf.nn.relu(y)

    def conv(self, x, scope: str, out: int, k: int = 1, stride: int = 1, rate: int = 1, eps=1e-3, act=True, relu6=True):
        w = self.var(scope + "/weights", [k, k, int(x.shape[-1]), out])
        y = tf.nn.conv2d(x, w, strides=stride, padding="SAME", dilations=rate)
        return self.bn(y, scope, eps, relu6 if act else None)

    def depthwise(self, x, scope: str, stride: int, rate: int, eps=1e-3):
        w = self.var(scope + "/depthwise_weights", [3, 3, int(x.shape[-1]), 1], fan_in=9)
        y = tf.nn.depthwise_conv2d(x, w, strides=[1, stride, stride, 1], padding="SAME", dilations=[rate, rate])
        return self.bn(y, scope, eps, True)


def build(images, depth_multiplier: float, output_stride: int, num_classes: int = 21, seed: int = 0):
    """Logits [1, H, W, classes] of DeepLab-MobileNetV2 + image-level head for normalised NHWC images."""
    b = Builder(seed)
    divisible_by = 8 if depth_multiplier == 1.0 else 1

    def depth(d: int) -> int:
        return make_divisible(d * depth_multiplier, divisible_by, divisible_by)

    current_stride, rate = 1, 1

    def place(stride: int) -> tuple[int, int]:
        nonlocal current_stride, rate
        if current_stride == output_stride:
            layer = (1, rate)
            rate *= stride
            return layer
        current_stride *= stride
        return stride, 1

    s, r = place(2)
    x = b.conv(images, "MobilenetV2/Conv", depth(32), 3, s, r)
    index = 0
    for t, c, n, first_stride in V2_BLOCKS:
        for i in range(n):
            scope = "MobilenetV2/expanded_conv" + (f"_{index}" if index else "")
            stride, layer_rate = place(first_stride if i == 0 else 1)
            inp = x
            in_ch = int(x.shape[-1])
            inner = in_ch if t == 1 else make_divisible(in_ch * t, 8)
            if inner > in_ch:
                x = b.conv(x, scope + "/expand", inner)
            x = b.depthwise(x, scope + "/depthwise", stride, layer_rate)
            x = b.conv(x, scope + "/project", depth(c), act=False)
            if stride == 1 and in_ch == int(x.shape[-1]):
                x = x + inp
            index += 1
    features = x
    h, w = int(features.shape[1]), int(features.shape[2])
    pooled = tf.reduce_mean(features, axis=[1, 2], keepdims=True)
    pooled = b.conv(pooled, "image_pooling", 256, eps=1e-5, relu6=False)
    pooled = tf.compat.v1.image.resize_bilinear(pooled, [h, w], align_corners=True)
    aspp0 = b.conv(features, "aspp0", 256, eps=1e-5, relu6=False)
    x = b.conv(tf.concat([pooled, aspp0], 3), "concat_projection", 256, eps=1e-5, relu6=False)
    # Logits of order 1 keep float32 rounding after ~20 layers near 3e-5 in both frameworks, under
    # the 1e-4 parity bound (with He-scaled logits of order 10 it alone reaches 1e-4).
    wl = b.var("logits/semantic/weights", [1, 1, 256, num_classes], gain=0.1)
    bias = b.var("logits/semantic/biases", [num_classes], "bias")
    logits = tf.nn.conv2d(x, wl, strides=1, padding="SAME") + bias
    size = [int(images.shape[1]), int(images.shape[2])]
    return tf.compat.v1.image.resize_bilinear(logits, size, align_corners=True)


def export(directory, depth_multiplier: float, output_stride: int, height: int, width: int, seed: int = 0):
    """Build the model, run it on a random normalised image, and write both release forms.

    Returns (image NHWC float32, logits NHWC, frozen graph path, checkpoint prefix).
    """
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [1, height, width, 3], name="ImageTensor")
        logits = tf.identity(build(images, depth_multiplier, output_stride, seed=seed), name="SemanticLogits")
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            image = np.random.default_rng(seed + 1).uniform(-1, 1, (1, height, width, 3)).astype(np.float32)
            out = sess.run(logits, {images: image})
            prefix = str(directory / "model.ckpt-30000")
            tf.compat.v1.train.Saver().save(sess, prefix)
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), ["SemanticLogits"]
            )
    pb = directory / "frozen_inference_graph.pb"
    pb.write_bytes(frozen.SerializeToString())
    return image, out, pb, prefix
