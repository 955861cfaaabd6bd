"""Shared test helpers: plain functions used by more than one test module."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from cosparse.hw.protocol import CRC_FORMAT, HEADER_FORMAT, SYNC_RESPONSE, crc16


def uart_bits(byte: int) -> list[int]:
    """The line levels of one UART byte: start bit, 8 data bits (LSB first), stop bit."""
    return [0] + [(byte >> i) & 1 for i in range(8)] + [1]


def parse_responses(data: bytes) -> list[tuple[int, bytes]]:
    """(code, payload) of each host-link response frame in ``data``; every CRC must match."""
    res, i = [], 0
    while i < len(data):
        assert data[i] == SYNC_RESPONSE, f"byte {i} is {data[i]:#x}, not a response sync"
        code, n = struct.unpack(HEADER_FORMAT, data[i + 1:i + 4])
        body = data[i + 1:i + 4 + n]
        (crc,) = struct.unpack(CRC_FORMAT, data[i + 4 + n:i + 6 + n])
        assert crc16(body) == crc, f"response at byte {i}: CRC {crc:#06x}, expected {crc16(body):#06x}"
        res.append((code, data[i + 4:i + 4 + n]))
        i += n + 6
    return res


def write_tiny(folder: Path, *, negate_w2: bool = False, seed: int = 0) -> tuple[Path, Path, Path]:
    """A tiny ONNX model (Gemm, ReLU, Gemm), small enough for an iCE40 UP5K.

    (model.onnx, calibration.npy, inputs.npy) in ``folder``; ``negate_w2`` gives the
    same model with the last layer's weights negated (same scales: a patchable change)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 16)).astype(np.float32)
    w1[rng.random(w1.shape) < 0.5] = 0
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.5, (4, 8)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 4).astype(np.float32)
    if negate_w2:
        w2 = -w2
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
         numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("tiny_w2.onnx" if negate_w2 else "tiny.onnx")
    onnx.save(model, path)
    np.save(folder / "cal.npy", rng.normal(0, 1, (64, 16)).astype(np.float32))
    np.save(folder / "x.npy", rng.normal(0, 1, (5, 16)).astype(np.float32))
    return path, folder / "cal.npy", folder / "x.npy"
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
