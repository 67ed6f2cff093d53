"""int8 ONNX models by ONNX Runtime static quantization: QDQ format, per-channel int8 weights,
uint8 activations whose ranges are calibrated on real images."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from seg.export.common import ExportError, quiet_logging


def _reader(input_name: str, inputs: Sequence[np.ndarray]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds the calibration inputs one at a time (each already in the model's input format);
        `set_range` lets the calibrator take them a few at a time."""

        def __init__(self) -> None:
            self.set_range(0, len(inputs))

        def __len__(self) -> int:
            return len(inputs)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._items: Iterator[np.ndarray] = iter(inputs[start_index:end_index])

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            item = next(self._items, None)
            return None if item is None else {input_name: item}

        def rewind(self) -> None:
            self.set_range(0, len(inputs))

    return Reader()


def _stride(count: int, most: int = 4) -> int:
    """The largest chunk size up to `most` that divides `count` (ONNX Runtime requires it)."""
    return next(d for d in range(min(most, count), 0, -1) if count % d == 0)


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_inputs: Sequence[np.ndarray],
    metadata: Optional[dict[str, Any]] = None,
) -> Path:
    """Quantize the float model at `fp32_path` to `out_path`, calibrating activation ranges on
    `calibration_inputs` (arrays shaped like the model's input, batch 1)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration_inputs:
        raise ExportError("int8 quantization needs at least one calibration image (export.calibration_images)")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        try:
            # The quantizer logs a recommendation per node (root logger) and prints progress.
            with quiet_logging(""), contextlib.redirect_stdout(io.StringIO()):
                # Shape inference + graph clean-up first, as ONNX Runtime recommends before quantizing.
                quant_pre_process(str(fp32_path), str(pre))
                quantize_static(
                    str(pre),
                    str(out_path),
                    _reader(input_name, calibration_inputs),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    # Ranges computed and merged a few images at a time: every activation of every
                    # image at once would not fit in memory.
                    extra_options={"CalibTensorRangeSymmetric": False, "WeightSymmetric": True,
                                   "CalibStridedMinMax": _stride(len(calibration_inputs))},
                )
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"int8 quantization failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    model = onnx.load(str(out_path))
    if metadata is not None:
        from seg.export.onnx import set_onnx_metadata

        set_onnx_metadata(model, metadata)
    onnx.save_model(model, str(out_path), save_as_external_data=False)
    return out_path
