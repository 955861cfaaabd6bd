"""Small helpers shared by tests (plain functions)."""

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
