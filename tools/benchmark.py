"""Benchmarks; the first word names the task (data, train, eval, latency, tradeoff, official, web: seg/bench/).

    python tools/benchmark.py data                      # training loader images/s for 0, 1, 2 workers
    python tools/benchmark.py data benchmark.workers=[0,4] train.crop_size=321 dataset=voc_aug
    python tools/benchmark.py train benchmark.runs=5 benchmark.warmup=1   # training step images/s per model
    python tools/benchmark.py train benchmark.train.contention=[none,busy,training]  # the default run beside others
    python tools/benchmark.py eval                      # single-scale vs multi-scale + flip evaluation speed
    python tools/benchmark.py tradeoff                  # encoders: latency vs multiply-adds, plot + table
    python tools/benchmark.py latency                   # our models and peers: eager / fast / ONNX Runtime fp32, int8
    python tools/benchmark.py latency benchmark.latency.checkpoints=[outputs/.../checkpoints/best.pt]
    python tools/benchmark.py official                  # official DeepLab .tflite vs our conversion, PyTorch + ONNX
    python tools/benchmark.py web                       # the web page's time per frame in Chromium vs ONNX Runtime

Prints a markdown table and, last, one JSON line, also written to `benchmark.output` (default:
<run dir>/benchmark_<task>.json).

The same as `seg-benchmark ...` once the package is installed (`pip install .`); the code is in
seg/commands/benchmark.py.
"""

from seg.commands.benchmark import main, run  # noqa: F401  (main: for tests that load this file)

if __name__ == "__main__":
    run()
