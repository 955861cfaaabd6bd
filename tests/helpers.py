"""Shared test helpers: plain functions used by more than one test module."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The small ONNX test models and their digits data (``scripts/make_test_models.py``).
ONNX_DATA = Path(__file__).resolve().parent / "compiler" / "data"


def digits(model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibration, test inputs, labels) of the 8x8 digits in ``model``'s input layout.

    Models whose name starts with ``mlp`` take flat vectors, the others
    ``[N, 1, 8, 8]`` maps.
    """
    d = np.load(ONNX_DATA / "digits.npz")
    cal, x = d["calib"], d["x"]
    if model.startswith("mlp"):
        cal, x = cal.reshape(len(cal), -1), x.reshape(len(x), -1)
    return cal, x, d["y"]


def quantize_qdq(src: Path, dst: Path, cal: np.ndarray) -> Path:
    """ONNX Runtime's static QDQ quantization of ``src`` into ``dst``, calibrated on ``cal``.

    int8 symmetric activations and per-channel int8 symmetric weights, the
    form the frontend takes.
    """
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": cal[i:i + 32]} for i in range(0, len(cal), 32)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return dst
