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

from .graph import (DEFAULT_DOMAINS, NEVER_FOLD, Graph, Node, QInfo, is_quant, onnx_module,
                    short_error)

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
    # QONNX's Quant keeps its input's shape: inference sees an Identity.
    nodes = [h.make_node("Identity", n.inputs[:1], n.outputs, name=n.name) if is_quant(n) else
             h.make_node(n.op, n.inputs, n.outputs, name=n.name, domain=n.domain or None,
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
    lo, hi = g.int_range.get(node.inputs[0], _type_range(q))
    g.qinfo[node.outputs[0]] = QInfo(scale=scale.ravel(), zero_point=zp.ravel(), axis=axis,
                                     lo=lo, hi=hi)
    return ((q.astype(np.int64) - zp) * scale).astype(np.float32)


def _type_range(q: np.ndarray) -> tuple[int, int]:
    """The range of an integer array's type (its values' for a type numpy does not know)."""
    try:
        info = np.iinfo(q.dtype)
        return int(info.min), int(info.max)
    except ValueError:
        return int(q.min(initial=0)), int(q.max(initial=0))


def quant_params(g: Graph, node: Node) -> dict:
    """A QONNX ``Quant``'s constants, checked: scale, zero point, range and rounding.

    Returns ``scale`` and ``zero_point`` (float64 arrays as given), ``lo`` and
    ``hi`` (the integer range: signed or unsigned, narrow or not, of the bit
    width) and ``signed``.
    """
    where = f"Quant {node.name!r}"
    names = node.inputs[1:4]
    if len(names) < 3 or any(x not in g.consts for x in names):
        raise g.fail(f"{where}: its scale, zero point and bit width must be constants")
    scale, zp, bits = (g.consts[x].astype(np.float64) for x in names)
    if bits.size != 1 or bits.ravel()[0] != round(float(bits.ravel()[0])) or \
            not 2 <= bits.ravel()[0] <= 8:
        raise g.fail(f"{where}: bit width {bits.ravel().tolist()}; the IR takes integer bit "
                     "widths from 2 to 8")
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise g.fail(f"{where}: its scale must be positive and finite")
    if np.any(zp != np.rint(zp)):
        raise g.fail(f"{where}: zero point {zp.ravel()[:4].tolist()} is not an integer")
    b = int(bits.ravel()[0])
    signed, narrow = bool(node.attrs.get("signed", 1)), bool(node.attrs.get("narrow", 0))
    lo, hi = ((-(1 << (b - 1)) + narrow, (1 << (b - 1)) - 1) if signed
              else (0, (1 << b) - 1 - narrow))
    return dict(scale=scale, zero_point=zp, lo=lo, hi=hi, signed=signed, bits=b)


def _broadcast_axis(g: Graph, where: str, v: np.ndarray, rank: int) -> int | None:
    """The one axis (of a rank-``rank`` tensor) a broadcast parameter varies along, or None."""
    if v.size == 1:
        return None
    shape = (1,) * (rank - v.ndim) + v.shape
    axes = [i for i, d in enumerate(shape) if d > 1]
    if len(axes) != 1:
        raise g.fail(f"{where}: a scale or zero point of shape {list(v.shape)} varies along "
                     "more than one axis; the IR takes one per tensor or per channel")
    return axes[0]


def _quant_const(g: Graph, node: Node) -> np.ndarray:
    """Fold QONNX ``Quant`` of a constant (a weight); remember its integer scale."""
    p = quant_params(g, node)
    w = g.consts[node.inputs[0]].astype(np.float64)
    where = f"Quant {node.name!r}"
    axis = _broadcast_axis(g, where, p["scale"], w.ndim)
    zaxis = _broadcast_axis(g, where, p["zero_point"], w.ndim)
    if zaxis is not None and zaxis != axis:
        raise g.fail(f"{where}: the zero point varies along another axis than the scale")
    q = np.clip(np.rint(w / p["scale"] + p["zero_point"]), p["lo"], p["hi"])
    scale = p["scale"].ravel() if axis is not None else p["scale"].reshape(1)
    zp = p["zero_point"].ravel() if zaxis is not None else p["zero_point"].reshape(1)
    g.qinfo[node.outputs[0]] = QInfo(scale=scale, zero_point=zp.astype(np.int64), axis=axis,
                                     lo=p["lo"], hi=p["hi"])
    return ((q - p["zero_point"]) * p["scale"]).astype(np.float32)


#: Ops whose folded output keeps its first input's source name (a weight's quantizers).
_KEEPS_ORIGIN = ("QuantizeLinear", "DequantizeLinear", "Clip", "Cast", "Identity", "Quant")


def _keep_origin(g: Graph, node: Node) -> None:
    if node.op in _KEEPS_ORIGIN and node.inputs and node.inputs[0]:
        src = node.inputs[0]
        g.origin[node.outputs[0]] = g.origin.get(src, src)


def _fold_constants(g: Graph) -> bool:
    """Evaluate every node whose inputs are known; record dequantized weights' scales."""
    changed = False
    for node in list(g.nodes):
        if is_quant(node) and all(x in g.consts for x in node.inputs if x):
            _keep_origin(g, node)
            values = [_quant_const(g, node)]
            g.consts[node.outputs[0]] = values[0]
            g.shapes[node.outputs[0]] = tuple(values[0].shape)
            g.remove(node)
            changed = True
            continue
        if node.domain not in DEFAULT_DOMAINS or node.op in NEVER_FOLD:
            continue
        data = [x for x in node.inputs if x]
        if node.op in ("Shape", "Size") and g.shape(data[0]) is not None:
            feeds = {data[0]: np.zeros(g.shape(data[0]), dtype=np.float32)}
        elif data and all(x in g.consts for x in data):
            feeds = {x: g.consts[x] for x in data}
        else:
            continue
        _keep_origin(g, node)
        if node.op == "DequantizeLinear":
            values = [_dequantize(g, node)]
        else:
            values = _evaluate(g, node, feeds)
        if node.op == "Clip" and values[0].dtype.kind in "iu" and len(data) == 3:
            # QCDQ: a Clip narrows quantized integers (a weight of fewer bits)
            lo, hi = g.int_range.get(data[0], _type_range(g.consts[data[0]]))
            g.int_range[node.outputs[0]] = (max(lo, int(feeds[data[1]])),
                                            min(hi, int(feeds[data[2]])))
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


_RANGE = ("the IR takes activations of at most 8 bits, signed or unsigned, with any zero "
          "point inside their range")


def _record(g: Graph, x: str, out: str, scale: float, lo: int, hi: int) -> None:
    """Remember activation ``x``'s scale, integer range and quantized tensor ``out``."""
    g.act_scale.setdefault(x, scale)
    g.act_range.setdefault(x, (lo, hi))
    g.act_quantized.setdefault(x, out)


def _strip_quant(g: Graph, node: Node) -> None:
    """Remove QONNX ``Quant`` on an activation, keeping its scale and range."""
    where = f"Quant {node.name!r} (on {node.inputs[0]!r})"
    p = quant_params(g, node)
    if p["scale"].size != 1 or p["zero_point"].size != 1:
        raise g.fail(f"{where} has a per-channel scale or zero point; activations need one "
                     "of each per tensor")
    zp = int(p["zero_point"].ravel()[0])
    if not p["lo"] <= zp <= p["hi"]:
        raise g.fail(f"{where} has zero point {zp} outside its range {p['lo']}..{p['hi']}; "
                     + _RANGE)
    x = node.inputs[0]
    _record(g, x, node.outputs[0], float(p["scale"].ravel()[0]), p["lo"] - zp, p["hi"] - zp)
    g.rewire(node.outputs[0], x)
    g.remove(node)


def _clip_range(g: Graph, clip: Node) -> tuple[float, float]:
    """The constant (min, max) of a Clip (absent bounds are infinite)."""
    lo = g.consts.get(clip.inputs[1]) if len(clip.inputs) > 1 and clip.inputs[1] else None
    hi = g.consts.get(clip.inputs[2]) if len(clip.inputs) > 2 and clip.inputs[2] else None
    if (len(clip.inputs) > 1 and clip.inputs[1] and lo is None) or \
            (len(clip.inputs) > 2 and clip.inputs[2] and hi is None):
        raise g.fail(f"Clip {clip.name!r}: its bounds must be constants")
    return (float("-inf") if lo is None else float(lo.ravel()[0]),
            float("inf") if hi is None else float(hi.ravel()[0]))


def strip_qdq(g: Graph) -> None:
    """Remove the quantizers on activations, keeping their scales and integer ranges.

    ``QuantizeLinear -> DequantizeLinear`` (QDQ), ``QuantizeLinear -> Clip ->
    DequantizeLinear`` (Brevitas's QCDQ) and QONNX's ``Quant``.
    """
    onnx = onnx_module()
    for node in [n for n in g.nodes if is_quant(n)]:
        _strip_quant(g, node)
    for q in [n for n in g.nodes if n.op == "QuantizeLinear"]:
        x = q.inputs[0]
        scale = g.consts.get(q.inputs[1])
        zp = g.consts.get(q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] else None
        where = f"QuantizeLinear {q.name!r} (on {x!r})"
        if len(q.inputs) > 2 and q.inputs[2] and zp is None:
            raise g.fail(f"{where} has a zero point {q.inputs[2]!r} that is not a constant")
        if scale is None or scale.size != 1:
            raise g.fail(f"{where} has a non-constant or per-axis scale; activations need one "
                         "constant scale per tensor")
        out_type = q.attrs.get("output_dtype", 0) or (
            onnx.helper.np_dtype_to_tensor_dtype(zp.dtype) if zp is not None
            else onnx.TensorProto.UINT8)
        type_name = onnx.TensorProto.DataType.Name(out_type)
        ranges = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255)}
        if out_type not in ranges or (zp is not None and zp.size != 1):
            raise g.fail(f"{where} quantizes to {type_name} with zero point "
                         f"{0 if zp is None else zp.ravel().tolist()}; " + _RANGE)
        lo, hi = ranges[out_type]
        z = 0 if zp is None else int(zp.ravel()[0])
        readers = g.consumers(q.outputs[0])
        clip = readers[0] if len(readers) == 1 and readers[0].op == "Clip" and \
            q.outputs[0] != g.output else None
        tail = clip.outputs[0] if clip else q.outputs[0]
        if clip is not None:
            c_lo, c_hi = _clip_range(g, clip)
            lo, hi = int(max(lo, np.ceil(c_lo))), int(min(hi, np.floor(c_hi)))
            readers = g.consumers(tail)
        if tail == g.output or any(r.op != "DequantizeLinear" for r in readers):
            raise g.fail(f"{where} feeds {', '.join(repr(r.name) for r in readers) or 'the output'}"
                         "; only QDQ models (QuantizeLinear -> DequantizeLinear around float "
                         "operators) are supported, not integer operators (QOperator format)")
        if not lo <= z <= hi:
            raise g.fail(f"{where}: zero point {z} outside the range {lo}..{hi}; " + _RANGE)
        for dq in readers:
            g.rewire(dq.outputs[0], x)
            g.remove(dq)
        g.remove(q, *([clip] if clip else []))
        _record(g, x, tail, float(scale.ravel()[0]), lo - z, hi - z)
    dq = next((n for n in g.nodes if n.op == "DequantizeLinear"), None)
    if dq is not None:
        raise g.fail(f"DequantizeLinear {dq.name!r} reads {dq.inputs[0]!r}, which is neither a "
                     "constant nor a quantized activation (an int8 model input is not supported: "
                     "the model takes float32 and quantizes it)")
