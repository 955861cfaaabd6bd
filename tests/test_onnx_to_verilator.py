"""ONNX models from both PyTorch exporters and ONNX Runtime's quantizer, through the whole flow.

Each model is imported, put in drain order, folded, and its core run in Verilator on digits
back to back: the outputs equal the golden model's bit for bit, and the measured interval is
the performance model's within 1%.
"""

from pathlib import Path

import numpy as np
import pytest

from cosparse.compiler.fold import choose_folding
from cosparse.compiler.onnx_frontend import import_onnx, to_ir_input
from cosparse.compiler.order import to_drain_order
from cosparse.compiler.perf import predict
from cosparse.sim import golden
from cosparse.sim.netsim import simulate_network

DATA = Path(__file__).resolve().parent / "compiler" / "data"


def digits(model: str):
    d = np.load(DATA / "digits.npz")
    cal, x = d["calib"], d["x"][:6]
    if model.startswith("mlp"):
        cal, x = cal.reshape(len(cal), -1), x.reshape(len(x), -1)
    return cal, x


def qdq(src: Path, dst: Path, cal: np.ndarray) -> Path:
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


@pytest.mark.parametrize("model, mode, quantized", [
    ("cnn_local_legacy", "sparse-sparse", False),   # local k-WTA, pool, flatten
    ("cnn_global_dynamo", "sparse-sparse", False),  # global k-WTA over a map
    ("cnn_permute_legacy", "sparse-weights", False),  # channels-last k-WTA, dense engines
    ("mlp_scatter_dynamo", "sparse-sparse", False),   # gather/scatter k-WTA, boost
    ("mlp_threshold_legacy", "sparse-sparse", True),  # ONNX Runtime QDQ
])
def test_onnx_model_in_verilator_equals_golden(model, mode, quantized, tmp_path):
    cal, x = digits(model)
    path = DATA / f"{model}.onnx"
    if quantized:
        path = qdq(path, tmp_path / "qdq.onnx", cal[:128])
    net = to_drain_order(import_onnx(path, calibration=None if quantized else cal, mode=mode))
    xq = to_ir_input(net, x)
    folding = choose_folding(net, xq, max_multipliers=24)
    run = simulate_network(net, folding, xq, name=f"onnx_{model}")
    assert np.array_equal(run.outputs, golden.run(net, xq))
    predicted = predict(net, folding, xq[1:])["interval_cycles"]
    assert abs(run.interval_cycles - predicted) <= 0.01 * predicted, (run.interval_cycles,
                                                                        predicted)
