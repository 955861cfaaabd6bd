"""ONNX models from both PyTorch exporters and ONNX Runtime's quantizer, through the whole flow.

Each model is imported, put in drain order, folded, and its core run in Verilator on digits
back to back: the outputs equal the golden model's bit for bit, and the measured interval is
the performance model's within 1%.
"""

import numpy as np
import pytest

from cosparse.compiler.fold import choose_folding
from cosparse.compiler.frontend import import_onnx, to_ir_input
from cosparse.compiler.order import to_drain_order
from cosparse.compiler.lower import lower
from cosparse.compiler.perf import predict
from cosparse.sim import golden
from cosparse.sim.netsim import simulate_network
from tests.helpers import ONNX_DATA, digits, quantize_qdq, rescaled_kwta_model


@pytest.mark.parametrize("model, mode, quantized", [
    ("cnn_local_legacy", "sparse-sparse", False),   # local k-WTA, pool, flatten
    ("cnn_global_dynamo", "sparse-sparse", False),  # global k-WTA over a map
    ("cnn_permute_legacy", "sparse-weights", False),  # channels-last k-WTA, dense engines
    ("mlp_scatter_dynamo", "sparse-sparse", False),   # gather/scatter k-WTA, boost
    ("mlp_threshold_legacy", "sparse-sparse", "ort"),  # ONNX Runtime QDQ: quantized keys
    ("cnn_permute_dynamo", "sparse-sparse", "ort"),  # QDQ local k-WTA, threshold tie rule
    ("bv_cnn_qonnx_dynamo", "sparse-sparse", "model"),  # Brevitas QONNX: uint4, half to even
    ("bv_mlp_qcdq_legacy", "sparse-weights", "model"),  # Brevitas QCDQ: uint7, int8
    ("cnn_local_dynamo", "sparse-sparse", "ort-u8"),  # ONNX Runtime's defaults: int9 values
    ("mlp_threshold_legacy", "sparse-weights", "ort-u8"),
    ("cnn_local_legacy", "sparse-sparse", "ort"),  # rounded before and after BN: a rescale
    ("mlp_scatter_legacy", "sparse-weights", "ort-u8"),
    ("cnn_global_legacy", "sparse-sparse", "ort-u8"),  # CHW ties; the flatten requantizes
])
def test_onnx_model_in_verilator_equals_golden(model, mode, quantized, tmp_path):
    cal, x, _ = digits(model)
    x = x[:6]
    path = ONNX_DATA / f"{model}.onnx"
    if quantized in ("ort", "ort-u8"):
        path = quantize_qdq(path, tmp_path / "qdq.onnx", cal[:128], symmetric=quantized == "ort")
    net = to_drain_order(import_onnx(path, calibration=None if quantized else cal, mode=mode))
    xq = to_ir_input(net, x)
    folding = choose_folding(net, xq, max_multipliers=24)
    run = simulate_network(net, folding, xq, name=f"onnx_{model}")
    assert np.array_equal(run.outputs, golden.run(net, xq))
    predicted = predict(net, folding, xq[1:])["interval_cycles"]
    assert abs(run.interval_cycles - predicted) <= 0.01 * predicted, (run.interval_cycles,
                                                                        predicted)


def test_rescaled_kwta_in_verilator_equals_golden(tmp_path):
    """A k-WTA whose winners the model requantizes to a scale of their own."""
    rng = np.random.default_rng(8)
    path = tmp_path / "rescale.onnx"
    rescaled_kwta_model(path, rng)
    net = to_drain_order(import_onnx(path))
    assert any(getattr(la, "rescale", None) for la in net.layers)
    xq = to_ir_input(net, rng.uniform(-1, 1, (6, 12)).astype(np.float32))
    folding = choose_folding(net, xq, max_multipliers=8)
    run = simulate_network(net, folding, xq, name="onnx_rescale")
    assert np.array_equal(run.outputs, golden.run(net, xq))


def test_rescale_with_negative_scales_in_verilator_equals_golden(tmp_path):
    """A BatchNormalization with negative scales between two roundings: the rescale
    reverses those channels' order, so the max pool stays after it."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(ONNX_DATA / "cnn_local_legacy.onnx")
    for t in model.graph.initializer:
        if t.name == "body.1.weight":  # the BatchNormalization's scale
            gamma = numpy_helper.to_array(t).copy()
            gamma[::2] *= -1
            t.CopyFrom(numpy_helper.from_array(gamma, t.name))
    onnx.save(model, tmp_path / "neg.onnx")
    cal, x, _ = digits("cnn_local")
    path = quantize_qdq(tmp_path / "neg.onnx", tmp_path / "qdq.onnx", cal[:128])
    net = to_drain_order(import_onnx(path))
    rescaled = [la for la in net.layers if getattr(la, "rescale", None) is not None]
    assert rescaled and not rescaled[0].rescale.monotone
    xq = to_ir_input(net, x[:4])
    folding = choose_folding(net, xq, max_multipliers=24)
    run = simulate_network(net, folding, xq, name="onnx_negative_rescale")
    assert np.array_equal(run.outputs, golden.run(net, xq))


def test_stages_tied_across_a_max_pool_keep_their_rate():
    """conv1 in logic at the rate of the stages behind its 2x2 pool (256 cycles a frame
    each): the pool emits a row only on every second input row, so the room for a
    pooled row behind it keeps the consumer busy; the interval is the model's (376
    cycles without that room, where the model says 277)."""
    cal, x, _ = digits("cnn_local")
    net = to_drain_order(import_onnx(ONNX_DATA / "cnn_local_legacy.onnx", calibration=cal))
    xq = to_ir_input(net, x[:8])
    folding = choose_folding(net, xq, max_multipliers=24, weights_in_logic="auto",
                             max_luts=84_000)
    assert folding.of("body.0").in_logic
    core = lower(net, folding)
    units = [s.unit for s in core.stages]
    pool = units.index("MaxPool")
    assert units[pool + 1] == "StreamFIFO"
    prediction = predict(net, folding, xq[1:])
    stages = prediction["stages"]
    assert [s["cycles"] for s in stages[:pool + 1]][1:] == [256.0] * pool  # tied upstream
    run = simulate_network(net, folding, xq, name="onnx_cnn_local_logic")
    assert np.array_equal(run.outputs, golden.run(net, xq))
    predicted = prediction["interval_cycles"]
    assert abs(run.interval_cycles - predicted) <= 0.01 * predicted, (run.interval_cycles,
                                                                        predicted)
