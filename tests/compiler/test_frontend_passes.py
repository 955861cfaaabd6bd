"""The frontend's passes one at a time: load, fold, rewrite and lower on small models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cosparse.compiler.frontend.check import attribute_problems  # noqa: E402
from cosparse.compiler.frontend.constants import fold_all, strip_qdq  # noqa: E402
from cosparse.compiler.frontend.graph import KWTA_OP, LAYER_OP, Graph  # noqa: E402
from cosparse.compiler.frontend.load import load_model, working_graph  # noqa: E402
from cosparse.compiler.frontend.lower import lower, straight_chain  # noqa: E402
from cosparse.compiler.frontend.rewrite import rewrite  # noqa: E402
from tests.helpers import ONNX_DATA, digits, quantize_qdq  # noqa: E402


def rewritten(path: Path) -> Graph:
    """The working graph of a model after folding, QDQ stripping and the rewrites."""
    g = working_graph(load_model(path), path)
    fold_all(g)
    strip_qdq(g)
    rewrite(g)
    return g


def conv_bn_relu_gemm(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    """Conv 2->3 (3x3 on 6x6), BatchNormalization, Relu, Flatten, Gemm 48->5; and its weight."""
    w2 = rng.normal(size=(5, 3 * 4 * 4)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1, name="fc")]
    inits = dict(w=rng.normal(size=(3, 2, 3, 3)), g=rng.uniform(0.5, 2, 3), b=rng.normal(size=3),
                 m=rng.normal(size=3), v=rng.uniform(0.5, 2, 3), w2=w2)
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k)
                     for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path, w2


def test_rewrite_folds_batchnorm_and_relu_into_the_layer(tmp_path):
    path, _ = conv_bn_relu_gemm(tmp_path, np.random.default_rng(0))
    g = rewritten(path)
    assert [n.op for n in g.nodes] == [LAYER_OP, "Flatten", LAYER_OP]
    conv = g.nodes[0].attrs
    assert conv["kind"] == "conv" and conv["relu"]
    assert conv["onnx_nodes"] == ["conv", "bn", "relu"]


def test_lower_permutes_the_linear_columns_after_a_flatten(tmp_path):
    path, w2 = conv_bn_relu_gemm(tmp_path, np.random.default_rng(1))
    g = rewritten(path)
    steps, layout = lower(g, straight_chain(g))
    assert [s.kind for s in steps] == ["conv", "flatten", "linear"]
    # ONNX flattens C, H, W; the IR flattens H, W, C.
    want = w2.reshape(5, 3, 4, 4).transpose(0, 2, 3, 1).reshape(5, -1)
    assert np.array_equal(steps[2].weight, want.astype(np.float64))
    assert not layout["is_map"]


@pytest.mark.parametrize("model, axes", [
    ("cnn_permute_legacy", [[1]]),  # TopK on a channels-last view: local
    ("cnn_local_legacy", [[1], [1]]),
    ("cnn_global_dynamo", [[1, 2, 3], [1]]),  # the whole map; then a flattened vector
    ("mlp_scatter_legacy", [[1], [1]]),
])
def test_kwta_patterns_become_one_node_each(model, axes):
    g = rewritten(ONNX_DATA / f"{model}.onnx")
    assert [n.attrs["axes"] for n in g.nodes if n.op == KWTA_OP] == axes
    assert {n.op for n in g.nodes} <= {LAYER_OP, KWTA_OP, "MaxPool", "Flatten", "Reshape"}


def test_strip_qdq_keeps_the_activation_scales(tmp_path):
    cal, _, _ = digits("mlp_threshold")
    path = quantize_qdq(ONNX_DATA / "mlp_threshold_legacy.onnx", tmp_path / "q.onnx", cal[:64])
    g = working_graph(load_model(path), path)
    fold_all(g)
    strip_qdq(g)
    assert not any(n.op in ("QuantizeLinear", "DequantizeLinear") for n in g.nodes)
    assert g.act_scale[g.input] > 0
    assert g.qinfo  # the weights' scales from their DequantizeLinear


def test_attribute_problems_name_each_attribute():
    assert attribute_problems("MaxPool", {"kernel_shape": [2, 2], "strides": [1, 1]}, None,
                              ["y"]) == ["strides=[1, 1] with kernel_shape=[2, 2] (stride must "
                                         "equal the kernel)"]
    assert attribute_problems("Conv", {"group": 2}, (4, 1, 3, 3), ["y"]) == [
        "group=2 (only group=1)"]
    assert attribute_problems("Relu", {}, None, ["y"]) == []
