"""The ONNX frontend against ONNX Runtime.

The models in ``data/`` are small dual-sparse networks trained briefly on
the 8x8 digits and exported by both PyTorch exporters
(``scripts/make_test_models.py``); others are built here with
``onnx.helper``. The key check: the golden model on the quantized input,
dequantized, is close to ONNX Runtime's float output, and each k-WTA picks
the same winners as the ONNX subgraph it came from, except at ties.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cosparse.compiler import ir  # noqa: E402
from cosparse.compiler.frontend import (FrontendError, check_supported,  # noqa: E402
                                        from_ir_output, import_onnx, to_ir_input)
from cosparse.compiler.packer import unpack  # noqa: E402
from cosparse.compiler.quantize import boost_ranking_exact, quantize_boost  # noqa: E402
from cosparse.sim import golden  # noqa: E402
from tests.helpers import ONNX_DATA as DATA, digits, quantize_qdq  # noqa: E402

MODELS = ["mlp_threshold", "mlp_scatter", "cnn_local", "cnn_global", "cnn_permute"]
EXPORTERS = ["legacy", "dynamo"]


# --------------------------------------------------------------------------
# Helpers


def run_ort(model, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime on a path or a ModelProto, one input."""
    src = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def run_ort_qdq(path: Path, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime on a QDQ model with its exact QDQ semantics, logits unquantized.

    Graph optimizations are off, so every operator runs in float between its
    Q/DQ pairs (the fused int8 kernels saturate on AVX2 machines without
    VNNI, where ONNX Runtime recommends ``reduce_range``), and the output's
    QuantizeLinear/DequantizeLinear pair is removed (it clips the logits
    that the IR keeps as int32).
    """
    model = onnx.load(str(path))
    g = model.graph
    dq = next(n for n in g.node if n.output[0] == g.output[0].name)
    q = next(n for n in g.node if n.output[0] == dq.input[0])
    g.node.remove(dq)
    g.node.remove(q)
    for n in g.node:
        n.output[:] = [g.output[0].name if t == q.input[0] else t for t in n.output]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3  # the output's scale is an initializer nothing reads
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def run_golden(net: ir.Network, x: np.ndarray) -> np.ndarray:
    return from_ir_output(net, golden.run(net, to_ir_input(net, x)))


def errors(y: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """Max and mean |error| relative to the reference's range, and argmax agreement."""
    span = float(ref.max() - ref.min())
    err = np.abs(y - ref)
    return float(err.max() / span), float(err.mean() / span), float(
        (y.argmax(1) == ref.argmax(1)).mean())


def save(model, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_model(nodes, inits: dict[str, np.ndarray], in_shape, out_shape, opset: int = 18):
    """A model with input x and output y; a leading "N" is a symbolic batch."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def sparse_weights(rng, shape, density=0.5, low=0.2):
    """Random weights, |w| >= low where kept (so int8 rounding keeps every non-zero)."""
    w = rng.uniform(low, 1.0, shape) * rng.choice([-1, 1], shape)
    return (w * (rng.random(shape) < density)).astype(np.float32)


@pytest.fixture(scope="module")
def imported():
    """Each data model imported once (sparse-sparse, calibrated on the digits)."""
    cache = {}

    def get(model: str, exporter: str = "legacy", **kw) -> ir.Network:
        key = (model, exporter, tuple(sorted(kw.items())))
        if key not in cache:
            cal, _, _ = digits(model)
            if "kernels_per_overlay" in kw:
                kw["kernels_per_overlay"] = dict(kw["kernels_per_overlay"])
            cache[key] = import_onnx(DATA / f"{model}_{exporter}.onnx", calibration=cal, **kw)
        return cache[key]
    return get


# --------------------------------------------------------------------------
# Whole networks against ONNX Runtime

# Bounds on the digits test split (measured: max 0.11-0.17, mean 0.006-0.012,
# argmax agreement 0.94-0.99; the large single errors are k-WTA winners that
# flip where two keys are within a quantization step).
MAX_ERR, MEAN_ERR, AGREE = 0.25, 0.025, 0.92


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("model", MODELS)
def test_golden_matches_onnxruntime(imported, model, exporter):
    net = imported(model, exporter)
    _, x, labels = digits(model)
    ref = run_ort(DATA / f"{model}_{exporter}.onnx", x)
    y = run_golden(net, x)
    assert y.shape == ref.shape == (len(x), 10)
    max_err, mean_err, agree = errors(y, ref)
    assert max_err < MAX_ERR and mean_err < MEAN_ERR and agree >= AGREE, (max_err, mean_err, agree)
    # Quantized accuracy stays within 3 points of the float model's.
    assert (y.argmax(1) == labels).mean() >= (ref.argmax(1) == labels).mean() - 0.03


@pytest.mark.parametrize("model", MODELS)
def test_both_exporters_give_the_same_network(imported, model):
    a, b = imported(model, "legacy"), imported(model, "dynamo")
    assert [type(x) for x in a.layers] == [type(x) for x in b.layers]
    _, x, _ = digits(model)
    ya, yb = run_golden(a, x), run_golden(b, x)
    # Same weights and scales up to float rounding: outputs agree almost everywhere.
    assert (ya.argmax(1) == yb.argmax(1)).mean() >= 0.97


EXPECTED_LAYERS = {
    "mlp_threshold": ["zero_skip", "overlay_linear", "global_kwta", "overlay_linear",
                      "global_kwta", "overlay_linear"],
    "mlp_scatter": ["zero_skip", "overlay_linear", "global_kwta", "overlay_linear",
                    "global_kwta", "overlay_linear"],
    "cnn_local": ["zero_skip", "overlay_conv", "max_pool", "local_kwta", "overlay_conv",
                  "local_kwta", "max_pool", "flatten", "overlay_linear"],
    "cnn_global": ["zero_skip", "overlay_conv", "max_pool", "global_kwta", "overlay_conv",
                   "global_kwta", "flatten", "overlay_linear"],
    "cnn_permute": ["zero_skip", "overlay_conv", "local_kwta", "max_pool", "flatten",
                    "overlay_linear"],
}


@pytest.mark.parametrize("model", MODELS)
def test_layer_chain_and_meta(imported, model):
    net = imported(model)
    kinds = [layer.kind for layer in net.layers]
    if model == "cnn_global":  # the second k-WTA's flatten may come before or after it
        kinds = [k for k in kinds if k != "flatten"]
        assert kinds == [k for k in EXPECTED_LAYERS[model] if k != "flatten"]
    else:
        assert kinds == EXPECTED_LAYERS[model]
    m = net.meta
    vector = model.startswith("mlp")
    assert m["source"] == f"{model}_legacy.onnx" and m["mode"] == "sparse-sparse"
    assert m["input_shape"] == ([64] if vector else [1, 8, 8])
    assert m["input_layout"] == ("vector" if vector else "NCHW")
    assert m["output_shape"] == [10] and m["output_layout"] == "vector"
    assert m["quantization"] == "calibration"
    assert net.input.shape == ((64,) if vector else (8, 8, 1))
    assert m["input_scale"] == net.input.scale
    # Logits stay int32, one scale per class.
    assert net.output.dtype == "int32" and m["output_scale"] == list(net.output.scale)
    assert net.layers[-1].requant is None


def test_kwta_boost_and_k(imported):
    net = imported("cnn_local")
    kwtas = [x for x in net.layers if isinstance(x, (ir.LocalKWTA, ir.GlobalKWTA))]
    assert [x.k for x in kwtas] == [4, 4]
    assert kwtas[0].boost is not None and kwtas[0].boost.shape == (16,)  # per channel
    assert kwtas[1].boost is None  # no boost in the model
    info = net.meta["kwta"]
    assert info[kwtas[0].name]["onnx_form"] == "threshold"
    assert info[kwtas[1].name]["onnx_form"] == "gather-scatter"
    assert info[kwtas[0].name]["shift"] is not None and info[kwtas[1].name]["k"] == 4
    mlp = imported("mlp_threshold")
    first = next(x for x in mlp.layers if isinstance(x, ir.GlobalKWTA))
    assert first.k == 24 and first.boost.shape == (96,)  # per unit


def test_saved_network_loads_and_runs_the_same(imported, tmp_path):
    net = imported("cnn_global")
    ir.save(net, tmp_path)
    again = ir.load(tmp_path)
    assert again.meta == net.meta
    _, x, _ = digits("cnn_global")
    xq = to_ir_input(net, x)
    assert np.array_equal(golden.run(again, xq), golden.run(net, xq))


# --------------------------------------------------------------------------
# k-WTA winners against the ONNX subgraph they came from


def _onnx_kwta(path: Path, src: str, dst: str, x_ir: np.ndarray) -> np.ndarray:
    """Run the ONNX k-WTA subgraph ``src -> dst`` on IR-layout input; return IR layout."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.value_info}
    sub = onnx.utils.Extractor(model).extract_model([src], [dst])
    n = len(x_ir)
    if x_ir.ndim == 2:  # a vector out of a linear layer: same order
        return run_ort(sub, x_ir)
    h, w, c = x_ir.shape[1:]
    x = x_ir.transpose(0, 3, 1, 2)
    if rank[src] == 2:  # the k-WTA sees ONNX's CHW flatten of the map
        x = x.reshape(n, -1)
    y = run_ort(sub, np.ascontiguousarray(x))
    return y.reshape(n, c, h, w).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("model", MODELS)
def test_kwta_winners_match_onnx_except_ties(imported, model, exporter):
    """Feed each k-WTA's golden input to its ONNX subgraph: same winners but at ties."""
    net = imported(model, exporter)
    _, x, _ = digits(model)
    trace = golden.run(net, to_ir_input(net, x), trace=True).outputs
    specs = net.specs()
    checked = 0
    for i, layer in enumerate(net.layers):
        if not isinstance(layer, (ir.LocalKWTA, ir.GlobalKWTA)):
            continue
        src = net.meta["layers"][layer.name]
        xin = trace[i - 1]
        got = _onnx_kwta(DATA / f"{model}_{exporter}.onnx", src["onnx_input"],
                         src["onnx_output"], (xin * specs[i].scale).astype(np.float32))
        keep_onnx, keep_golden = got != 0, trace[i] != 0
        # Keys in the golden model's integers; groups: channels (local) or everything (global).
        key = xin.astype(np.int64) * (1 if layer.boost is None else layer.boost.astype(np.int64))
        if isinstance(layer, ir.GlobalKWTA):
            key, keep_onnx, keep_golden = (a.reshape(len(a), -1)
                                           for a in (key, keep_onnx, keep_golden))
        kth = -np.partition(-key, layer.k - 1, axis=-1)[..., layer.k - 1:layer.k]
        differ = keep_onnx != keep_golden
        # Every difference is a tie with the k-th key (within the boost's rounding).
        near = np.abs(key - kth) <= 2e-3 * np.maximum(np.abs(kth), 1)
        assert np.all(near[differ]), f"{layer.name}: {int((differ & ~near).sum())} non-tie misses"
        assert differ.mean() < 0.02, layer.name
        checked += 1
    assert checked >= 1


# --------------------------------------------------------------------------
# Weights: layout, packing, BatchNorm folding


def _onnx_weight(path: Path, node_name: str) -> np.ndarray:
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.name == node_name)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return init[node.input[1]].astype(np.float64)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_unpacked_weights_are_the_quantized_onnx_weights(imported, exporter):
    """Conv (ky, kx, c) flattening and the CHW -> HWC flatten permutation, exactly."""
    net = imported("cnn_global", exporter)
    path = DATA / f"cnn_global_{exporter}.onnx"
    specs = net.specs()
    for i, layer in enumerate(net.layers):
        if not isinstance(layer, (ir.OverlayConv, ir.OverlayLinear)):
            continue
        w = _onnx_weight(path, net.meta["layers"][layer.name]["onnx_nodes"][0])
        if isinstance(layer, ir.OverlayConv):
            w = w.transpose(0, 2, 3, 1).reshape(len(w), -1)
        else:  # Gemm (transB) after the flatten of the [32, 2, 2] map
            assert w.shape == (10, 128)
            perm = np.arange(128).reshape(32, 2, 2).transpose(1, 2, 0).ravel()
            w = w[:, perm]
        w_scale = np.asarray(layer.acc_scale) / specs[i].scale
        expect = np.rint(w / w_scale[:, None]).astype(np.int8)
        assert np.array_equal(unpack(layer.overlays), expect), layer.name
        assert np.abs(expect).max() == 127  # per-channel symmetric range used


def test_batchnorm_folds_into_conv_keeping_the_zero_pattern(imported):
    path = DATA / "cnn_local_legacy.onnx"
    model = onnx.load(str(path))
    assert "BatchNormalization" in {n.op_type for n in model.graph.node}
    net = imported("cnn_local")
    conv = net.layers[1]
    assert "/body/body.1/BatchNormalization" in net.meta["layers"][conv.name]["onnx_nodes"]
    w = _onnx_weight(path, "/body/body.0/Conv").transpose(0, 2, 3, 1).reshape(16, -1)
    q = unpack(conv.overlays)
    assert np.all(q[w == 0] == 0)  # no new non-zero
    assert np.count_nonzero(q) >= 0.95 * np.count_nonzero(w)  # few small weights round to 0


def test_batchnorm_and_relu_after_conv_exactly(tmp_path):
    rng = np.random.default_rng(1)
    w = sparse_weights(rng, (8, 3, 3, 3))
    bn = [rng.uniform(-2, 2, 8), rng.normal(0, 0.5, 8), rng.normal(0, 0.5, 8),
          rng.uniform(0.5, 2, 8)]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    inits = dict(w=w, g=bn[0], b=bn[1], m=bn[2], v=bn[3],
                 w2=sparse_weights(rng, (5, 8 * 6 * 6), 0.3))
    inits = {k: np.asarray(v, np.float32) for k, v in inits.items()}
    path = save(make_model(nodes, inits, ["N", 3, 6, 6], ["N", 5]), tmp_path / "bn.onnx")
    x = rng.normal(size=(64, 3, 6, 6)).astype(np.float32)
    net = import_onnx(path, calibration=x)
    conv = net.layers[1]
    assert isinstance(conv, ir.OverlayConv) and conv.requant.relu
    q = unpack(conv.overlays)
    assert np.array_equal(q != 0, w.transpose(0, 2, 3, 1).reshape(8, -1) != 0)
    max_err, mean_err, agree = errors(run_golden(net, x), run_ort(path, x))
    assert max_err < 0.05 and mean_err < 0.01 and agree >= 0.95


# --------------------------------------------------------------------------
# Build modes and kernels per overlay


def test_modes_insert_adapters_and_keep_outputs(imported):
    sparse = imported("cnn_local")
    weights = imported("cnn_local", mode="sparse-weights")
    dense = imported("cnn_local", mode="dense")
    assert [x.kind for x in weights.layers] == [
        "overlay_conv", "max_pool", "local_kwta", "densify", "overlay_conv", "local_kwta",
        "densify", "max_pool", "flatten", "overlay_linear"]
    assert weights.formats()[-1] == "dense" and dense.meta["mode"] == "dense"
    assert [x.kind for x in dense.layers] == [x.kind for x in weights.layers]
    # In sparse-sparse every overlay layer reads a sparse stream.
    fmts = sparse.formats()
    for i, layer in enumerate(sparse.layers):
        if isinstance(layer, (ir.OverlayConv, ir.OverlayLinear)):
            assert fmts[i] == "sparse", layer.name
    for layer in dense.layers:
        if isinstance(layer, (ir.OverlayConv, ir.OverlayLinear)):
            ov = layer.overlays
            assert ov.kernels_per_overlay == 1 and ov.words == ov.fan_in  # every weight stored
    _, x, _ = digits("cnn_local")
    xq = to_ir_input(sparse, x)
    y = golden.run(sparse, xq)
    assert np.array_equal(golden.run(weights, xq), y)
    assert np.array_equal(golden.run(dense, xq), y)


def test_kernels_per_overlay_by_layer_or_onnx_name(imported):
    net = imported("cnn_local", kernels_per_overlay=(("body.0", 4), ("/body/body.4/Conv", 8)))
    convs = [x for x in net.layers if isinstance(x, ir.OverlayConv)]
    assert [c.overlays.kernels_per_overlay for c in convs] == [4, 8]


def test_kernels_per_overlay_errors(tmp_path):
    cal, _, _ = digits("cnn_local")
    with pytest.raises(FrontendError, match=r"'nope'.*the layers are body\.0, body\.4, body\.9"):
        import_onnx(DATA / "cnn_local_legacy.onnx", calibration=cal,
                    kernels_per_overlay={"nope": 2})
    with pytest.raises(FrontendError, match="does not apply to mode 'dense'"):
        import_onnx(DATA / "cnn_local_legacy.onnx", calibration=cal, mode="dense",
                    kernels_per_overlay={"body.0": 2})
    with pytest.raises(FrontendError, match="mode must be one of"):
        import_onnx(DATA / "cnn_local_legacy.onnx", calibration=cal, mode="fast")


# --------------------------------------------------------------------------
# QDQ models from ONNX Runtime's static quantizer


@pytest.mark.parametrize("model,exporter", [("cnn_local", "dynamo"), ("mlp_threshold", "legacy")])
def test_qdq_model_takes_scales_and_weights_from_the_model(model, exporter, tmp_path):
    cal, x, labels = digits(model)
    float_path = DATA / f"{model}_{exporter}.onnx"
    path = quantize_qdq(float_path, tmp_path / "qdq.onnx", cal[:128])
    net = import_onnx(path)  # no calibration needed
    assert net.meta["quantization"] == "qdq"
    q = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert net.input.scale == pytest.approx(float(init["x_scale"]))
    # The first layer's int8 weights are the model's, in the IR's order.
    first = next(x for x in net.layers if isinstance(x, (ir.OverlayConv, ir.OverlayLinear)))
    wq = next(v for k, v in init.items() if k.endswith("weight_quantized") and v.ndim >= 2
              and v.shape[0] == first.overlays.num_kernels
              and v[0].size == first.overlays.fan_in)
    wq = wq.transpose(0, 2, 3, 1).reshape(len(wq), -1) if wq.ndim == 4 else wq
    assert np.array_equal(unpack(first.overlays), wq)
    # Against the QDQ model's semantics and against the float model. (The QDQ
    # model also quantizes the boosted keys and the threshold to 8 bits, which
    # makes more ties; the IR compares exact integer keys.)
    y = run_golden(net, x)
    max_err, mean_err, agree = errors(y, run_ort_qdq(path, x))
    assert max_err < MAX_ERR and mean_err < MEAN_ERR and agree >= AGREE, (max_err, mean_err, agree)
    max_err, mean_err, agree = errors(y, run_ort(float_path, x))
    assert max_err < MAX_ERR and mean_err < MEAN_ERR and agree >= AGREE, (max_err, mean_err, agree)
    float_acc = (run_ort(float_path, x).argmax(1) == labels).mean()
    assert (y.argmax(1) == labels).mean() >= float_acc - 0.03


def test_qdq_conv_chain_matches_onnxruntime_qdq(tmp_path):
    """Without k-WTA the QDQ model's own integer semantics are the IR's, up to rounding."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    inits = dict(w1=sparse_weights(rng, (8, 1, 3, 3)), b1=rng.normal(0, 0.1, 8),
                 w2=sparse_weights(rng, (16, 8, 3, 3), 0.25), b2=rng.normal(0, 0.1, 16),
                 w3=sparse_weights(rng, (10, 16 * 2 * 2), 0.5), b3=rng.normal(0, 0.1, 10))
    inits = {k: np.asarray(v, np.float32) for k, v in inits.items()}
    src = save(make_model(nodes, inits, ["N", 1, 8, 8], ["N", 10]), tmp_path / "f.onnx")
    cal, x, _ = digits("cnn_local")
    path = quantize_qdq(src, tmp_path / "qdq.onnx", cal[:128])
    net = import_onnx(path)
    y = run_golden(net, x)
    # Equal up to rounding (the IR rounds half up with a 16-bit multiplier, QDQ
    # rounds half to even in float): measured max 0.2%, mean 0.001% of the range.
    max_err, mean_err, agree = errors(y, run_ort_qdq(path, x))
    assert max_err < 0.01 and mean_err < 0.001 and agree == 1.0, (max_err, mean_err, agree)


def test_qdq_asymmetric_activations_are_int9(tmp_path):
    """ONNX Runtime's defaults (uint8 activations with zero points): the zero points come
    off, the values are int9 (the input 0..255), and the golden model follows the model."""
    from cosparse.compiler.fidelity import layer_agreement
    cal, x, _ = digits("mlp_threshold")
    path = quantize_qdq(DATA / "mlp_threshold_legacy.onnx", tmp_path / "u8.onnx", cal[:128],
                        symmetric=False)
    net = import_onnx(path)
    assert net.input.dtype == "int9" and net.input.bounds[0] <= 0 < 127 < net.input.bounds[1]
    first = next(la for la in net.layers if isinstance(la, ir.OverlayLinear))
    assert first.input_bound > 128
    assert to_ir_input(net, x).dtype == np.int16
    fid = layer_agreement(path, net, x)
    hidden = [a.equal for a in fid.layers[:-1] if a.equal is not None]
    # measured: 99.98% at the first layer and its k-WTA, 99.82% at the second layer (the
    # few first-layer values that round the other way flip k-WTA winners, and each flip
    # moves many sums), 99.15% of the quantized logits, every class the same
    assert hidden and min(hidden) >= 0.998, fid.layers
    assert fid.layers[-1].equal >= 0.99 and fid.top1 == 1.0, fid.layers


# --------------------------------------------------------------------------
# Patterns built with onnx.helper


def _dense_chain(tmp_path, nodes, inits, in_shape, out_shape, rng, name="m.onnx"):
    path = save(make_model(nodes, inits, in_shape, out_shape), tmp_path / name)
    x = rng.normal(size=(128, *in_shape[1:])).astype(np.float32)
    net = import_onnx(path, calibration=x)
    return net, errors(run_golden(net, x), run_ort(path, x))


def test_matmul_add_identity_dropout(tmp_path):
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Identity", ["x"], ["i"]),
             helper.make_node("MatMul", ["i", "w1"], ["m"]),
             helper.make_node("Add", ["b1", "m"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Dropout", ["r", "ratio"], ["d"]),
             helper.make_node("Gemm", ["d", "w2", "b2"], ["y"], alpha=0.5, beta=2.0)]
    inits = dict(w1=sparse_weights(rng, (16, 32)), b1=rng.normal(size=32).astype(np.float32),
                 ratio=np.array(0.3, np.float32), w2=sparse_weights(rng, (32, 6)),
                 b2=rng.normal(size=6).astype(np.float32))
    net, (max_err, mean_err, agree) = _dense_chain(tmp_path, nodes, inits, ["N", 16], ["N", 6],
                                                   rng)
    assert [x.kind for x in net.layers] == ["zero_skip", "overlay_linear", "zero_skip",
                                            "overlay_linear"]
    assert net.layers[1].requant.relu
    assert max_err < 0.05 and mean_err < 0.01 and agree >= 0.95, (max_err, mean_err, agree)


def test_conv_same_padding_stride_and_channel_scale(tmp_path):
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], auto_pad="SAME_UPPER",
                              strides=[2, 2]),
             helper.make_node("Mul", ["c", "s"], ["m"]),
             helper.make_node("Sub", ["m", "t"], ["n"]),
             helper.make_node("MaxPool", ["n"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Relu", ["p"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    inits = dict(w=sparse_weights(rng, (6, 2, 3, 3)), b=rng.normal(size=6).astype(np.float32),
                 s=rng.uniform(0.5, 2, (1, 6, 1, 1)).astype(np.float32),
                 t=rng.normal(size=(6, 1, 1)).astype(np.float32),
                 shape=np.array([0, -1], np.int64), w2=sparse_weights(rng, (4, 6 * 2 * 2)))
    net, (max_err, mean_err, agree) = _dense_chain(tmp_path, nodes, inits, ["N", 2, 9, 9],
                                                   ["N", 4], rng)
    conv = net.layers[1]
    assert conv.padding == (1, 1, 1, 1) and conv.stride == (2, 2) and conv.requant.relu
    assert max_err < 0.05 and mean_err < 0.01 and agree >= 0.95, (max_err, mean_err, agree)


def _kwta_model(tmp_path, rng, pattern: str, boost: bool):
    """Linear 16 -> 32, a k-WTA (k=8) in one of the patterns, Linear 32 -> 4."""
    b = np.exp(rng.normal(0, 0.3, (1, 32))).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1)]
    key = "h"
    if boost:
        nodes.append(helper.make_node("Mul", ["b", "h"], ["key"]))
        key = "key"
    nodes.append(helper.make_node("TopK", [key, "k"], ["vals", "idx"], axis=-1))
    if pattern == "reducemin":
        nodes += [helper.make_node("ReduceMin", ["vals", "ax"], ["thr"], keepdims=1),
                  helper.make_node("GreaterOrEqual", [key, "thr"], ["mask"]),
                  helper.make_node("Where", ["mask", "h", "zero"], ["o"])]
    elif pattern == "not_less":
        nodes += [helper.make_node("Gather", ["vals", "last"], ["t0"], axis=1),
                  helper.make_node("Unsqueeze", ["t0", "ax"], ["thr"]),
                  helper.make_node("Greater", ["thr", key], ["lose"]),
                  helper.make_node("Not", ["lose"], ["win"]),
                  helper.make_node("Cast", ["win"], ["mf"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["mf", "h"], ["o"])]
    elif pattern == "scatter_mask":
        nodes += [helper.make_node("ScatterElements", ["zeros", "idx", "ones"], ["m"], axis=1),
                  helper.make_node("Mul", ["h", "m"], ["o"])]
    nodes.append(helper.make_node("Gemm", ["o", "w2"], ["y"], transB=1))
    inits = dict(w1=sparse_weights(rng, (32, 16)), w2=sparse_weights(rng, (4, 32)), b=b,
                 k=np.array([8], np.int64), ax=np.array([1], np.int64),
                 zero=np.array(0, np.float32), last=np.array(-1, np.int64),
                 zeros=np.zeros((1, 32), np.float32), ones=np.ones((1, 8), np.float32))
    used = {i for n in nodes for i in n.input}
    return make_model(nodes, {k: v for k, v in inits.items() if k in used}, [1, 16], [1, 4])


@pytest.mark.parametrize("boost", [False, True])
@pytest.mark.parametrize("pattern", ["reducemin", "not_less", "scatter_mask"])
def test_other_kwta_forms(tmp_path, pattern, boost):
    rng = np.random.default_rng(4)
    path = save(_kwta_model(tmp_path, rng, pattern, boost), tmp_path / "k.onnx")
    net = import_onnx(path, calibration=rng.normal(size=(64, 16)).astype(np.float32))
    kwta = net.layers[2]
    assert isinstance(kwta, ir.GlobalKWTA) and kwta.k == 8
    assert (kwta.boost is not None) == boost
    # A batch of one at a time: the helper models have a fixed batch of 1.
    xs = rng.normal(size=(64, 16)).astype(np.float32)
    ref = np.concatenate([run_ort(path, xs[i:i + 1]) for i in range(len(xs))])
    max_err, mean_err, agree = errors(run_golden(net, xs), ref)
    assert max_err < MAX_ERR and mean_err < MEAN_ERR and agree >= AGREE, (max_err, mean_err, agree)


# --------------------------------------------------------------------------
# Boost quantization


def test_boost_all_equal_is_none():
    assert quantize_boost(np.full(5, 0.7))[0] is None


def test_boost_keeps_the_ranking_of_int8_keys():
    q, info = quantize_boost(np.array([1.0, 1.5, 2.0]))
    assert q.tolist() == [2, 3, 4] and info == {"shift": 1, "exact": True}
    b = np.exp(np.random.default_rng(0).normal(0, 0.25, 64))
    q, info = quantize_boost(b)
    assert q.max() <= ir.MAX_BOOST and q.min() >= 1
    assert info["exact"] == boost_ranking_exact(b, q)
    # Proportional to the real boost within the rounding of the chosen shift.
    ratio = q / (b / b.min() * 2.0 ** info["shift"])
    assert np.all(np.abs(ratio - 1) <= 0.5 / 2.0 ** info["shift"])


def test_boost_beyond_16_bits_clamps_and_rejects_non_positive():
    q, info = quantize_boost(np.array([1e-6, 1.0, 2.0]))
    assert info["shift"] is None and q.tolist() == [1, 32768, 65535]
    with pytest.raises(ValueError):
        quantize_boost(np.array([1.0, 0.0]))


# --------------------------------------------------------------------------
# Bad input


def _conv_model(**conv_attrs):
    rng = np.random.default_rng(5)
    c_in = 4
    w = sparse_weights(rng, (4, c_in // conv_attrs.get("group", 1), 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", **conv_attrs),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    return make_model(nodes, {"w": w, "w2": np.ones((2, 4 * 4 * 4), np.float32)},
                      [1, c_in, 6, 6] if "dilations" not in conv_attrs else [1, c_in, 8, 8],
                      [1, 2])


def test_unsupported_ops_are_all_listed(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Sigmoid", ["c"], ["s"], name="act"),
             helper.make_node("Flatten", ["s"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w2"], ["g"], transB=1, name="fc"),
             helper.make_node("Softmax", ["g"], ["y"], name="prob")]
    path = save(make_model(nodes, {"w": np.ones((2, 1, 3, 3), np.float32),
                                   "w2": np.ones((3, 2 * 4 * 4), np.float32)},
                           [1, 1, 6, 6], [1, 3]), tmp_path / "bad_ops.onnx")
    for call in (lambda: check_supported(path), lambda: import_onnx(path)):
        with pytest.raises(FrontendError) as e:
            call()
        msg = str(e.value)
        assert "bad_ops.onnx" in msg and "2 node(s)" in msg
        assert "'act' (Sigmoid)" in msg and "'prob' (Softmax)" in msg
        assert "Supported operators: Add, BatchNormalization, Cast, Clip, Conv" in msg
        assert "\n" not in msg


@pytest.mark.parametrize("attrs,words", [
    ({"group": 2}, "group=2"),
    ({"dilations": [2, 2]}, "dilations=[2, 2]"),
])
def test_conv_attributes_are_named(tmp_path, attrs, words):
    path = save(_conv_model(**attrs), tmp_path / "conv.onnx")
    for call in (lambda: check_supported(path), lambda: import_onnx(path)):
        with pytest.raises(FrontendError, match=re.escape(f"'conv' (Conv) has {words}")):
            call()


def test_every_attribute_problem_in_one_message(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", group=2),
             helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2],
                              strides=[1, 1]),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("TopK", ["f", "k"], ["v", "i"], name="topk", largest=0),
             helper.make_node("Gemm", ["v", "w2"], ["y"], transB=1, name="fc")]
    path = save(make_model(nodes, {"w": np.ones((2, 1, 3, 3), np.float32),
                                   "k": np.array([2], np.int64),
                                   "w2": np.ones((3, 2), np.float32)},
                           [1, 2, 6, 6], [1, 3]), tmp_path / "attrs.onnx")
    with pytest.raises(FrontendError) as e:
        check_supported(path)
    msg = str(e.value)
    assert "'conv' (Conv) has group=2" in msg
    assert "'pool' (MaxPool) has strides=[1, 1] with kernel_shape=[2, 2]" in msg
    assert "'topk' (TopK) has largest=0" in msg


def test_malformed_and_truncated_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe not a protobuf \x00" * 10)
    with pytest.raises(FrontendError, match=r"junk\.onnx: not a readable ONNX model"):
        import_onnx(junk)
    data = (DATA / "cnn_local_legacy.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[:len(data) // 2])
    for call in (lambda: check_supported(cut), lambda: import_onnx(cut)):
        with pytest.raises(FrontendError, match=r"cut\.onnx"):
            call()
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(FrontendError, match=r"empty\.onnx: not a readable ONNX model"):
        import_onnx(empty)
    with pytest.raises(FrontendError, match="no such ONNX file"):
        import_onnx(tmp_path / "missing.onnx")


def _external_model(folder: Path) -> Path:
    model = onnx.load(str(DATA / "mlp_threshold_legacy.onnx"))
    path = folder / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.bin", size_threshold=0)
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    path = _external_model(tmp_path)
    check_supported(path)  # reads the graph only
    cal, x, _ = digits("mlp_threshold")
    net = import_onnx(path, calibration=cal)
    ref = import_onnx(DATA / "mlp_threshold_legacy.onnx", calibration=cal)
    assert np.array_equal(golden.run(net, to_ir_input(net, x)),
                          golden.run(ref, to_ir_input(ref, x)))


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_external_data_outside_the_folder_is_refused(tmp_path, where):
    inner = tmp_path / "model"
    inner.mkdir()
    path = _external_model(inner)
    target = tmp_path / "secret.bin"
    shutil.move(inner / "ext.bin", target)
    location = "../secret.bin" if where == "parent" else str(target)
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(model, str(path))
    for call in (lambda: check_supported(path), lambda: import_onnx(path)):
        with pytest.raises(FrontendError, match="outside the model's folder"):
            call()


def test_calibration_is_required_and_checked():
    path = DATA / "cnn_local_legacy.onnx"
    with pytest.raises(FrontendError, match="float model; pass calibration data"):
        import_onnx(path)
    with pytest.raises(FrontendError, match=r"float32 \[N, 1, 8, 8\].*got float32 \[10, 64\]"):
        import_onnx(path, calibration=np.zeros((10, 64), np.float32))
    with pytest.raises(FrontendError, match=r"got int64 \[4, 1, 8, 8\]"):
        import_onnx(path, calibration=np.zeros((4, 1, 8, 8), np.int64))
    with pytest.raises(FrontendError, match="NaN"):
        import_onnx(path, calibration=np.full((4, 1, 8, 8), np.nan, np.float32))


def test_unmatched_pattern_names_the_nodes(tmp_path):
    # A TopK whose values feed the next layer directly is not a k-WTA.
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1, name="fc1"),
             helper.make_node("TopK", ["h", "k"], ["v", "i"], name="topk"),
             helper.make_node("Gemm", ["v", "w2"], ["y"], transB=1, name="fc2")]
    path = save(make_model(nodes, {"w1": np.ones((8, 4), np.float32),
                                   "k": np.array([2], np.int64),
                                   "w2": np.ones((3, 2), np.float32)}, [1, 4], [1, 3]),
                tmp_path / "topk.onnx")
    check_supported(path)  # every operator is known ...
    with pytest.raises(FrontendError, match=r"could not be matched: 'topk' \(TopK\)"):
        import_onnx(path, calibration=np.ones((2, 4), np.float32))  # ... the pattern is not


# --------------------------------------------------------------------------
# Output layouts and a network at the benchmark's size


def test_map_output_and_flattened_output_layouts(tmp_path):
    rng = np.random.default_rng(7)
    w = sparse_weights(rng, (6, 2, 3, 3))
    for flatten in (False, True):
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c"], ["r"]),
                 helper.make_node("MaxPool", ["r"], ["p" if flatten else "y"],
                                  kernel_shape=[2, 2], strides=[2, 2])]
        if flatten:
            nodes.append(helper.make_node("Flatten", ["p"], ["y"]))
        out = ["N", 6 * 3 * 3] if flatten else ["N", 6, 3, 3]
        path = save(make_model(nodes, {"w": w}, ["N", 2, 6, 6], out), tmp_path / "o.onnx")
        x = rng.normal(size=(32, 2, 6, 6)).astype(np.float32)
        net = import_onnx(path, calibration=x)
        assert net.meta["output_layout"] == ("vector" if flatten else "NCHW")
        assert ("output_permutation" in net.meta) == flatten
        y, ref = run_golden(net, x), run_ort(path, x)
        assert y.shape == ref.shape
        assert np.abs(y - ref).max() < 0.02 * np.abs(ref).max()


def _gsc_model(rng) -> onnx.ModelProto:
    """The benchmark's topology (brief section 4) with complementary weights."""
    from cosparse.compiler import zoo

    def comp(m, c, k, kk):
        w = zoo.complementary_weights(m, c * k * k, kk, rng).astype(np.float32) / 64
        return w.reshape(m, k, k, c).transpose(0, 3, 1, 2) if k > 1 else w

    b = {i: np.exp(rng.normal(0, 0.2, n)).astype(np.float32) for i, n in ((1, 64), (2, 64),
                                                                          (3, 1500))}
    inits = dict(w1=comp(64, 1, 5, 2), w2=comp(64, 64, 5, 8), w3=comp(1500, 1600, 1, 25),
                 w4=comp(12, 1500, 1, 1), b1=b[1].reshape(1, 64, 1, 1),
                 b2=b[2].reshape(1, 64, 1, 1), b3=b[3].reshape(1, 1500),
                 k8=np.array([8], np.int64), k150=np.array([150], np.int64),
                 s=np.array([7], np.int64), e=np.array([8], np.int64),
                 ax=np.array([1], np.int64), zero=np.array(0, np.float32),
                 z=np.zeros((1, 1500), np.float32))
    nodes = []
    x = "x"
    for i, (w, b_) in enumerate((("w1", "b1"), ("w2", "b2")), 1):
        nodes += [helper.make_node("Conv", [x, w], [f"c{i}"]),
                  helper.make_node("MaxPool", [f"c{i}"], [f"p{i}"], kernel_shape=[2, 2],
                                   strides=[2, 2]),
                  helper.make_node("Mul", [f"p{i}", b_], [f"key{i}"]),
                  helper.make_node("TopK", [f"key{i}", "k8"], [f"v{i}", f"i{i}"], axis=1),
                  helper.make_node("Slice", [f"v{i}", "s", "e", "ax"], [f"t{i}"]),
                  helper.make_node("Less", [f"key{i}", f"t{i}"], [f"lose{i}"]),
                  helper.make_node("Where", [f"lose{i}", "zero", f"p{i}"], [f"o{i}"])]
        x = f"o{i}"
    nodes += [helper.make_node("Flatten", [x], ["f"]),
              helper.make_node("Gemm", ["f", "w3"], ["h"], transB=1),
              helper.make_node("Mul", ["h", "b3"], ["key3"]),
              helper.make_node("TopK", ["key3", "k150"], ["v3", "i3"], axis=1),
              helper.make_node("GatherElements", ["h", "i3"], ["g3"], axis=1),
              helper.make_node("ScatterElements", ["z", "i3", "g3"], ["o3"], axis=1),
              helper.make_node("Gemm", ["o3", "w4"], ["y"], transB=1)]
    return make_model(nodes, inits, [1, 1, 32, 32], [1, 12])


def test_benchmark_sized_network(tmp_path):
    """gsc-cs shapes: the packer finds the complementary groups (about 2 s on one core)."""
    rng = np.random.default_rng(8)
    path = save(_gsc_model(rng), tmp_path / "gsc.onnx")
    cal = rng.normal(size=(16, 1, 32, 32)).astype(np.float32)
    net = import_onnx(path, calibration=cal)
    overlays = {x.name: x.overlays for x in net.layers if hasattr(x, "overlays")}
    assert [ov.kernels_per_overlay for ov in overlays.values()] == [2, 8, 25, 1]
    assert [ov.lanes for ov in overlays.values()] == [32, 8, 60, 12]
    assert all(ov.fill > 0.95 for ov in overlays.values())  # int8 rounding zeros a few
    # Random weights on random inputs are chaotic through three k-WTAs (near
    # ties everywhere), so only the first layer is compared with ONNX Runtime.
    x = rng.normal(size=(4, 1, 32, 32)).astype(np.float32)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    conv1 = onnx.utils.Extractor(model).extract_model(["x"], ["c1"])
    ref = np.concatenate([run_ort(conv1, x[i:i + 1]) for i in range(len(x))])
    trace = golden.run(net, to_ir_input(net, x), trace=True).outputs
    got = trace[1] * net.specs()[2].scale  # after zero-skip and conv1
    assert np.abs(got.transpose(0, 3, 1, 2) - ref).max() < 0.02 * np.abs(ref).max()
    assert golden.run(net, to_ir_input(net, x)).shape == (4, 12)


@pytest.mark.parametrize("name", ["digits_cs.onnx", "digits_cs_dynamo.onnx"])
def test_trained_digits_example(name):
    """The trained example network (examples/, scripts/train_digits.py), both exporters."""
    root = Path(__file__).resolve().parents[2] / "examples"
    if not (root / name).exists():
        pytest.skip("examples/ not present")
    cal = np.load(root / "digits_calib.npy")
    test = np.load(root / "digits_test.npz")
    x, labels = test["x"], test["y"]
    net = import_onnx(root / name, calibration=cal)
    assert [layer.kind for layer in net.layers] == [
        "zero_skip", "overlay_conv", "max_pool", "local_kwta", "flatten", "overlay_linear",
        "global_kwta", "overlay_linear"]
    ref = run_ort(root / name, x)
    y = run_golden(net, x)
    max_err, mean_err, agree = errors(y, ref)  # measured 0.119, 0.0142, 0.994
    assert max_err < MAX_ERR and mean_err < MEAN_ERR and agree >= 0.98, (max_err, mean_err, agree)
    assert (y.argmax(1) == labels).mean() >= (ref.argmax(1) == labels).mean() - 0.01


def test_opset_11_shape_arithmetic_is_folded(tmp_path):
    """x.reshape(x.shape[0], -1) as the legacy exporter writes it at opset 11."""
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Shape", ["c"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]),  # an attribute before 13
             helper.make_node("Concat", ["n1", "minus1"], ["new_shape"], axis=0),
             helper.make_node("Reshape", ["c", "new_shape"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    inits = dict(w=sparse_weights(rng, (4, 1, 3, 3)), zero=np.array(0, np.int64),
                 minus1=np.array([-1], np.int64), w2=sparse_weights(rng, (3, 4 * 4 * 4)))
    path = save(make_model(nodes, inits, ["N", 1, 6, 6], ["N", 3], opset=11),
                tmp_path / "op11.onnx")
    x = rng.normal(size=(64, 1, 6, 6)).astype(np.float32)
    net = import_onnx(path, calibration=x)
    assert [layer.kind for layer in net.layers] == ["zero_skip", "overlay_conv", "flatten",
                                                    "zero_skip", "overlay_linear"]
    max_err, mean_err, agree = errors(run_golden(net, x), run_ort(path, x))
    assert max_err < 0.05 and mean_err < 0.01 and agree >= 0.95, (max_err, mean_err, agree)
