"""Constant folding and QDQ: evaluate what does not depend on the input, strip Q/DQ pairs.

:func:`fold_all` evaluates every node whose inputs are all known (``Constant``
nodes, shape arithmetic, casts, ``DequantizeLinear`` of weights, whose
scales it remembers) with ``onnx.reference``, with shapes from ONNX shape
inference at batch 1. :func:`strip_qdq` then removes each
``QuantizeLinear -> DequantizeLinear`` pair on an activation and remembers
its scale for the tensor.
"""

from __future__ import annotations

import numpy as np

from .graph import DEFAULT_DOMAINS, NEVER_FOLD, Graph, Node, QInfo, onnx_module, short_error

__all__ = ["fold_all", "strip_qdq"]


def _infer_shapes(g: Graph) -> None:
    """Static shapes and element types of every tensor (batch 1), by ONNX shape inference."""
    onnx = onnx_module()
    h = onnx.helper
    used = {x for n in g.nodes for x in n.inputs}
    inputs = [h.make_tensor_value_info(g.input, onnx.TensorProto.FLOAT, g.input_shape)]
    inits = []
    for name, v in g.consts.items():
        if name not in used:
            continue
        if v.size <= 4096 or v.dtype.kind in "iub":
            inits.append(onnx.numpy_helper.from_array(v, name))
        else:  # large float weights: their shape is all inference needs
            inputs.append(h.make_tensor_value_info(name, h.np_dtype_to_tensor_dtype(v.dtype),
                                                   v.shape))
    nodes = [h.make_node(n.op, n.inputs, n.outputs, name=n.name, domain=n.domain or None,
                         **n.attrs) for n in g.nodes]
    graph = h.make_graph(nodes, "g", inputs,
                         [h.make_tensor_value_info(g.output, onnx.TensorProto.FLOAT, None)],
                         initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid(d, v) for d, v in g.opsets.items()])
    model.ir_version = g.ir_version
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:
        raise g.fail(f"ONNX shape inference failed ({short_error(e)})") from None
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        tt = vi.type.tensor_type
        g.types[vi.name] = tt.elem_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            g.shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)


def _evaluate(g: Graph, node: Node, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run one node on constant inputs with ``onnx.reference``, at the model's opsets."""
    onnx = onnx_module()
    h = onnx.helper
    from onnx.reference import ReferenceEvaluator
    proto = h.make_node(node.op, node.inputs, node.outputs, domain=node.domain or None,
                        **node.attrs)
    inputs = [h.make_tensor_value_info(name, h.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for name, v in feeds.items()]
    outputs = [h.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
               for name in node.outputs if name]
    model = h.make_model(h.make_graph([proto], "fold", inputs, outputs),
                         opset_imports=[h.make_opsetid(d, v) for d, v in g.opsets.items()])
    try:
        out = ReferenceEvaluator(model).run(None, feeds)
    except Exception as e:
        try:  # onnx.reference lacks some old versions: the latest one, where unchanged
            out = ReferenceEvaluator(proto).run(None, feeds)
        except Exception:
            raise g.fail(f"cannot evaluate node {node.name!r} ({node.op}) on its constant "
                         f"inputs ({short_error(e)})") from None
    return [np.asarray(v) for v in out]


def _dequantize(g: Graph, node: Node) -> np.ndarray:
    """Fold ``DequantizeLinear`` of a constant and remember its scale (per tensor or axis)."""
    q = g.consts[node.inputs[0]]
    scale = g.consts[node.inputs[1]].astype(np.float64)
    zp_name = node.inputs[2] if len(node.inputs) > 2 else ""
    zp = g.consts[zp_name].astype(np.int64) if zp_name else np.zeros(1, np.int64)
    if node.attrs.get("block_size", 0):
        raise g.fail(f"DequantizeLinear {node.name!r}: blocked quantization is not supported")
    axis = None
    if scale.size > 1:
        axis = node.attrs.get("axis", 1) % q.ndim
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), (zp.reshape(shape) if zp.size > 1 else zp)
    g.qinfo[node.outputs[0]] = QInfo(scale=scale.ravel(), zero_point=zp.ravel(), axis=axis)
    return ((q.astype(np.int64) - zp) * scale).astype(np.float32)


def _fold_constants(g: Graph) -> bool:
    """Evaluate every node whose inputs are known; record dequantized weights' scales."""
    changed = False
    for node in list(g.nodes):
        if node.domain not in DEFAULT_DOMAINS or node.op in NEVER_FOLD:
            continue
        data = [x for x in node.inputs if x]
        if node.op in ("Shape", "Size") and g.shape(data[0]) is not None:
            feeds = {data[0]: np.zeros(g.shape(data[0]), dtype=np.float32)}
        elif data and all(x in g.consts for x in data):
            feeds = {x: g.consts[x] for x in data}
        else:
            continue
        if node.op == "DequantizeLinear":
            values = [_dequantize(g, node)]
        else:
            values = _evaluate(g, node, feeds)
        for name, v in zip(node.outputs, values):
            g.consts[name] = v
            g.shapes[name] = tuple(v.shape)
        g.remove(node)
        changed = True
    return changed


def fold_all(g: Graph) -> None:
    """Fold every constant subgraph, re-inferring shapes until nothing changes."""
    _infer_shapes(g)
    while _fold_constants(g):
        _infer_shapes(g)
    if g.output in g.consts:
        raise g.fail(f"the output {g.output!r} does not depend on the input")


def strip_qdq(g: Graph) -> None:
    """Remove QuantizeLinear -> DequantizeLinear pairs on activations, keeping their scales."""
    onnx = onnx_module()
    for q in [n for n in g.nodes if n.op == "QuantizeLinear"]:
        x = q.inputs[0]
        scale = g.consts.get(q.inputs[1])
        zp = g.consts.get(q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] else None
        where = f"QuantizeLinear {q.name!r} (on {x!r})"
        if scale is None or scale.size != 1:
            raise g.fail(f"{where} has a non-constant or per-axis scale; activations need one "
                         "constant scale per tensor")
        out_type = q.attrs.get("output_dtype", 0) or (
            onnx.helper.np_dtype_to_tensor_dtype(zp.dtype) if zp is not None
            else onnx.TensorProto.UINT8)
        if out_type != onnx.TensorProto.INT8 or (zp is not None and np.any(zp != 0)):
            raise g.fail(f"{where} quantizes to {onnx.TensorProto.DataType.Name(out_type)} with "
                         f"zero point {0 if zp is None else zp.ravel().tolist()}; the IR's "
                         "activations are int8 symmetric (quantize with activation_type=QInt8 "
                         "and ActivationSymmetric=True)")
        readers = g.consumers(q.outputs[0])
        if q.outputs[0] == g.output or any(r.op != "DequantizeLinear" for r in readers):
            raise g.fail(f"{where} feeds {', '.join(repr(r.name) for r in readers) or 'the output'}"
                         "; only QDQ models (QuantizeLinear -> DequantizeLinear around float "
                         "operators) are supported, not integer operators (QOperator format)")
        for dq in readers:
            g.rewire(dq.outputs[0], x)
            g.remove(dq)
        g.remove(q)
        g.act_scale.setdefault(x, float(scale.ravel()[0]))
        g.act_quantized.setdefault(x, q.outputs[0])
    dq = next((n for n in g.nodes if n.op == "DequantizeLinear"), None)
    if dq is not None:
        raise g.fail(f"DequantizeLinear {dq.name!r} reads {dq.inputs[0]!r}, which is neither a "
                     "constant nor a quantized activation (an int8 model input is not supported: "
                     "the model takes float32 and quantizes it)")
