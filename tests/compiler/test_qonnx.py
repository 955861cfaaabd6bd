"""Models quantized by Brevitas: QONNX (``Quant``) and QCDQ exports, both torch exporters."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx
from cosparse.compiler import ir
from cosparse.compiler.frontend import FrontendError, check_supported, import_onnx, to_ir_input
from cosparse.sim import golden
from tests.helpers import ONNX_DATA as DATA, digits

EXPORTS = [f"{fmt}_{exp}" for fmt in ("qonnx", "qcdq") for exp in ("legacy", "dynamo")]


@pytest.mark.parametrize("model", ["bv_cnn", "bv_mlp"])
def test_every_export_is_the_same_network(model):
    """QONNX and QCDQ, TorchScript and dynamo: the same IR computes the same integers."""
    _, x, _ = digits(model)
    nets = [import_onnx(DATA / f"{model}_{e}.onnx") for e in EXPORTS]
    outs = [golden.run(n, to_ir_input(n, x)) for n in nets]
    for n, y in zip(nets[1:], outs[1:]):
        assert np.array_equal(y, outs[0]), n.meta["source"]
    assert all(n.meta["quantization"] == "qdq" for n in nets)


def test_narrow_ranges_and_rounding_come_from_the_model():
    cnn = import_onnx(DATA / "bv_cnn_qonnx_legacy.onnx")
    conv = next(la for la in cnn.layers if isinstance(la, ir.OverlayConv))
    assert conv.requant.bounds == (0, 15) and conv.requant.rounding == "half-even"  # uint4
    w = np.concatenate([conv.overlays.weights.ravel()])
    assert -7 <= w.min() and w.max() <= 7  # narrow signed 4-bit weights
    assert conv.weight_bits == 4  # ... in 4-bit memory slots and products
    mlp = import_onnx(DATA / "bv_mlp_qcdq_dynamo.onnx")
    first, second = [la for la in mlp.layers if isinstance(la, ir.OverlayLinear)][:2]
    assert first.requant.bounds == (0, 127)  # uint7 after QuantReLU
    assert second.requant.bounds == (-128, 127)  # QuantIdentity int8
    assert np.abs(first.overlays.weights).max() <= 31  # 6-bit narrow weights
    assert (first.weight_bits, second.weight_bits) == (6, 8)  # the Clip's range, declared


@pytest.mark.parametrize("form", ["qcdq", "qonnx"])
@pytest.mark.parametrize("model", ["bv_cnn", "bv_mlp"])
def test_golden_reproduces_onnxruntime(model, form):
    from cosparse.compiler.fidelity import layer_agreement
    pytest.importorskip("onnxruntime")
    _, x, _ = digits(model)
    path = DATA / f"{model}_{form}_legacy.onnx"
    net = import_onnx(path)
    # Brevitas leaves biases in float: the requantization adds them at the output's scale
    assert any(getattr(la, "requant", None) is not None and la.requant.offset is not None
               for la in net.layers)
    fid = layer_agreement(path, net, x)  # QONNX: Quant run as QuantizeLinear, Clip, Dequantize
    compared = [a for a in fid.layers if a.equal is not None]
    assert len(compared) >= 3
    # measured: 100.000% at every layer, both forms, both networks
    assert fid.worst() == 1.0, [(a.layer, a.equal) for a in compared]
    assert fid.worst_alone() == 1.0, [(a.layer, a.alone) for a in compared]
    assert fid.top1 == 1.0


def _edited(tmp_path, edit, name="m.onnx"):
    model = onnx.load(str(DATA / "bv_cnn_qonnx_legacy.onnx"))
    edit(model)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _quant_nodes(model):
    return [n for n in model.graph.node if n.op_type == "Quant"]


def _init(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def _set_const(model, name, value):
    t = _init(model, name)
    t.CopyFrom(numpy_helper.from_array(np.asarray(value, dtype=numpy_helper.to_array(t).dtype),
                                       name))


def _act_quant(model):
    """The Quant after the ReLU (unsigned): the last activation Quant before the pool."""
    return next(n for n in _quant_nodes(model)
                if next(a.i for a in n.attribute if a.name == "signed") == 0)


def test_unsigned_8_bit_activations_are_int9(tmp_path):
    """An 8-bit QuantReLU (Brevitas's default): 0..255, carried as int9 values."""
    def edit(model):
        q = _act_quant(model)
        model.graph.initializer.append(numpy_helper.from_array(np.array(8.0, np.float32),
                                                               q.input[3] + "_8"))
        q.input[3] = q.input[3] + "_8"
    net = import_onnx(_edited(tmp_path, edit))
    conv = next(la for la in net.layers if isinstance(la, ir.OverlayConv))
    assert conv.requant.bounds == (0, 255)
    specs = net.specs()
    assert specs[net.layers.index(conv) + 1].dtype == "int9"
    linear = next(la for la in net.layers if isinstance(la, ir.OverlayLinear))
    assert linear.input_bound == 255
    _, x, _ = digits("bv_cnn")
    y = golden.run(net, to_ir_input(net, x), trace=True).outputs[net.layers.index(conv)]
    assert y.dtype == np.int16 and 0 <= y.min() and y.max() <= 255


@pytest.mark.parametrize("value, match", [(9.0, r"bit width \[9\.0\]"), (1.0, r"bit width")])
def test_bit_widths_outside_2_to_8_are_refused(tmp_path, value, match):
    def edit(model):
        q = _act_quant(model)
        model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32),
                                                               "bits_x"))
        q.input[3] = "bits_x"
    with pytest.raises(FrontendError, match=match):
        import_onnx(_edited(tmp_path, edit))


def test_other_rounding_modes_and_binary_quantizers_are_refused(tmp_path):
    def floor(model):
        q = _act_quant(model)
        for a in q.attribute:
            if a.name == "rounding_mode":
                a.s = b"FLOOR"
    with pytest.raises(FrontendError, match=r"rounding_mode=FLOOR \(only ROUND"):
        check_supported(_edited(tmp_path, floor, "floor.onnx"))

    def bipolar(model):
        q = _act_quant(model)
        q.op_type = "BipolarQuant"
        del q.input[2:]
        for a in list(q.attribute):
            q.attribute.remove(a)
    with pytest.raises(FrontendError, match=r"BipolarQuant\): binary"):
        check_supported(_edited(tmp_path, bipolar, "bipolar.onnx"))


def test_activation_zero_points_come_off(tmp_path):
    """A zero point z inside the range: the values are q - z, 0 inactive."""
    def edit(model):
        q = _act_quant(model)
        model.graph.initializer.append(numpy_helper.from_array(np.array(3.0, np.float32), "zp3"))
        q.input[2] = "zp3"
    net = import_onnx(_edited(tmp_path, edit))
    conv = next(la for la in net.layers if isinstance(la, ir.OverlayConv))
    assert conv.requant.bounds == (0, 12)  # uint4 with zero point 3 (-3..12), after a ReLU


def test_zero_point_outside_the_range_is_refused(tmp_path):
    def edit(model):
        q = _act_quant(model)
        model.graph.initializer.append(numpy_helper.from_array(np.array(20.0, np.float32),
                                                               "zp20"))
        q.input[2] = "zp20"
    with pytest.raises(FrontendError, match=r"zero point 20 outside its range 0\.\.15"):
        import_onnx(_edited(tmp_path, edit))


def test_qcdq_clip_narrows_an_int8_activation(tmp_path):
    """QuantizeLinear -> Clip -> DequantizeLinear on a hand-made layer: the Clip's range."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.5, (6, 8)).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "z"], ["xd"]),
             helper.make_node("Gemm", ["xd", "w", "b"], ["h"], transB=1),
             helper.make_node("QuantizeLinear", ["h", "sh", "z"], ["hq"]),
             helper.make_node("Clip", ["hq", "lo", "hi"], ["hc"]),
             helper.make_node("DequantizeLinear", ["hc", "sh", "z"], ["hd"]),
             helper.make_node("Gemm", ["hd", "w2", "b2"], ["y"], transB=1)]
    inits = {"sx": np.float32(0.02), "z": np.int8(0), "sh": np.float32(0.05),
             "lo": np.int8(-8), "hi": np.int8(7), "w": w, "b": np.zeros(6, np.float32),
             "w2": rng.normal(0, 0.5, (3, 6)).astype(np.float32), "b2": np.zeros(3, np.float32)}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    path = tmp_path / "clip.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    net = import_onnx(path)
    first = next(la for la in net.layers if isinstance(la, ir.OverlayLinear))
    assert first.requant.bounds == (-8, 7)
    x = rng.normal(0, 1, (64, 8)).astype(np.float32)
    trace = golden.run(net, to_ir_input(net, x), trace=True).outputs
    hidden = trace[net.layers.index(first)]
    assert hidden.min() == -8 and hidden.max() == 7  # the range is reached and kept


def test_asymmetric_weights_are_refused_by_name(tmp_path):
    def edit(model):
        wq = next(n for n in _quant_nodes(model)
                  if next(a.i for a in n.attribute if a.name == "signed") == 1
                  and n.input[0] not in ("x",))  # a weight's Quant
        model.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32),
                                                               "wzp"))
        wq.input[2] = "wzp"
    with pytest.raises(FrontendError, match=r"weight .* zero point \[1\]; .*symmetric"):
        import_onnx(_edited(tmp_path, edit))
