"""Graph rewrites to a fixed point: each rewrite is a function ``graph -> changed``.

They drop no-op nodes, merge duplicates, make ``Conv``/``Gemm``/``MatMul``
canonical layers, replace k-WTA patterns by k-WTA nodes (:mod:`.kwta`),
cancel transpose pairs, fold ``BatchNormalization`` and per-channel affine
constants into the preceding layer, and move ``Relu`` up into the layer's
requantization.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .graph import DEFAULT_DOMAINS, KWTA_OP, LAYER_OP, NEVER_FOLD, VIEWS, Graph, Node, QInfo
from .kwta import kwta_patterns, kwta_views
from .kwta_meaning import kwta_by_meaning
from ..ir import value_bits

__all__ = ["rewrite"]

#: Rewrites applied before the rewriting is declared not to settle.
_MAX_REWRITES = 10_000


def _drop_noops(g: Graph) -> bool:
    """Identity, Dropout (inference), casts to the same type and reshapes to the same shape;
    and nodes nothing reads (a view an exporter left behind)."""
    for n in g.nodes:
        if n.op not in NEVER_FOLD and not any(g.uses(o) for o in n.outputs if o):
            g.remove(n)
            return True
        src = n.inputs[0] if n.inputs else ""
        noop = n.op == "Identity" or (
            n.op == "Cast" and g.types.get(src) == n.attrs.get("to")) or (
            n.op in ("Reshape", "Flatten") and g.shape(src) is not None
            and g.shape(src) == g.shape(n.outputs[0]))
        if n.op == "Dropout":
            if len(n.outputs) > 1 and n.outputs[1] and g.uses(n.outputs[1]):
                raise g.fail(f"Dropout {n.name!r}: its mask output is used; only inference-mode "
                             "dropout (dropped) is supported")
            noop = True
        if noop:
            g.rewire(n.outputs[0], src)
            g.remove(n)
            return True
    return False


def _value_key(g: Graph, t: str) -> Any:
    """A tensor's identity for merging: small constants by value, the rest by name."""
    c = g.const(t)
    if c is not None and c.size <= 64:
        return (c.dtype.str, c.shape, c.tobytes())
    return t


def _merge_duplicates(g: Graph) -> bool:
    """Two identical nodes on the same inputs (e.g. two reshapes of x) become one."""
    seen: dict[tuple, Node] = {}
    for n in g.nodes:
        if n.domain not in DEFAULT_DOMAINS:
            continue
        sig = (n.op, tuple(_value_key(g, x) for x in n.inputs), repr(sorted(n.attrs.items())))
        first = seen.get(sig)
        if first is None:
            seen[sig] = n
            continue
        for old, new in zip(n.outputs, first.outputs):
            if old:
                g.rewire(old, new)
        g.remove(n)
        return True
    return False


def _per_tensor_or_axis(q: QInfo | None, axis: int, m: int) -> np.ndarray | None:
    """Per-output-channel weight scales from a dequantization, if it had them."""
    if q is None:
        return None
    if q.scale.size == 1:
        return np.full(m, float(q.scale.ravel()[0]))
    if q.axis is not None and q.axis == axis and q.scale.size == m:
        return q.scale.ravel().astype(np.float64)
    return None


def _canonical_layers(g: Graph) -> bool:
    """Conv, Gemm and MatMul with constant weights become canonical layer nodes.

    A canonical layer holds float ``weight`` ([M, C, kh, kw] or [M, N]),
    ``bias`` [M], ``relu``, and ``w_scale`` (per-channel weight scales taken
    from a QDQ model, or None).
    """
    for n in g.nodes:
        if n.op not in ("Conv", "Gemm", "MatMul") or n.domain not in DEFAULT_DOMAINS:
            continue
        w = g.const(n.inputs[1])
        if w is None:
            raise g.fail(f"{n.op} {n.name!r}: its weight {n.inputs[1]!r} is not a constant")
        b = g.const(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
        q = g.qinfo.get(n.inputs[1])
        if q is not None and np.any(q.zero_point != 0):
            raise g.fail(f"{n.op} {n.name!r}: its weight {n.inputs[1]!r} is quantized with zero "
                         f"point {q.zero_point.ravel()[:4].tolist()}; the IR's weights are "
                         "symmetric integers (zero point 0): quantize the weights symmetric "
                         "(WeightSymmetric=True, or a symmetric weight quantizer)")
        if n.op == "Conv":
            attrs = _conv_attrs(g, n, w)
            weight = w.astype(np.float64)
            w_scale = _per_tensor_or_axis(q, 0, w.shape[0])
        elif n.op == "Gemm":
            if w.ndim != 2:
                raise g.fail(f"Gemm {n.name!r}: weight {n.inputs[1]!r} is not 2-D")
            trans = bool(n.attrs.get("transB", 0))
            alpha, beta = n.attrs.get("alpha", 1.0), n.attrs.get("beta", 1.0)
            weight = alpha * (w if trans else w.T).astype(np.float64)
            w_scale = _per_tensor_or_axis(q, 0 if trans else 1, weight.shape[0])
            if w_scale is not None:
                w_scale = w_scale * abs(alpha)
            if b is not None:
                b = beta * b
            attrs = {}
        else:  # MatMul
            xs = g.shape(n.inputs[0])
            if w.ndim != 2 or xs is None or len(xs) != 2:
                raise g.fail(f"MatMul {n.name!r}: only [batch, N] x constant [N, M] is supported, "
                             f"got {xs} x {w.shape}")
            weight = w.T.astype(np.float64)
            w_scale = _per_tensor_or_axis(q, 1, weight.shape[0])
            attrs = {}
        m = weight.shape[0]
        if b is None:
            bias = np.zeros(m)
        else:
            try:
                bias = np.broadcast_to(np.asarray(b, np.float64).reshape(-1), (m,)).copy()
            except ValueError:
                raise g.fail(f"{n.op} {n.name!r}: bias of shape {b.shape} is not one value per "
                             f"output channel ({m})") from None
        kind = "conv" if n.op == "Conv" else "linear"
        # The model's bias is integers at the accumulator's scale (a dequantized int32)
        # or absent; else it is a float the requantization adds at the output's scale.
        exact_bias = b is None or (n.inputs[2] in g.qinfo and n.op != "Gemm") or (
            n.inputs[2] in g.qinfo and n.attrs.get("beta", 1.0) == 1.0)
        # A weight quantized to fewer bits than 8 keeps its narrow integers.
        wbits = 8 if q is None else min(8, value_bits(q.lo, q.hi))
        layer = Node(LAYER_OP, n.name, [n.inputs[0]], list(n.outputs[:1]), dict(
            kind=kind, weight=weight, bias=bias, relu=False, w_scale=w_scale,
            bias_quantized=exact_bias, weight_bits=wbits,
            weight_name=g.origin.get(n.inputs[1], n.inputs[1]), onnx_nodes=[n.name],
            scale_names=[n.outputs[0]], **attrs),
            scope=n.scope)
        g.replace([n], layer, n)
        return True
    return False


def _conv_attrs(g: Graph, n: Node, w: np.ndarray) -> dict:
    if w.ndim != 4:
        raise g.fail(f"Conv {n.name!r} has a {w.ndim - 2}-D kernel; only 2-D convolutions are "
                     "supported")
    if n.attrs.get("group", 1) != 1:
        raise g.fail(f"Conv {n.name!r} has group={n.attrs['group']}; only group=1 is supported")
    if any(d != 1 for d in n.attrs.get("dilations", [1, 1])):
        raise g.fail(f"Conv {n.name!r} has dilations={list(n.attrs['dilations'])}; only 1")
    kh, kw = w.shape[2:]
    strides = tuple(int(s) for s in n.attrs.get("strides", [1, 1]))
    auto = n.attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", "VALID"):
        p = [int(x) for x in n.attrs.get("pads", [0, 0, 0, 0])] if auto == "NOTSET" else [0] * 4
        pads = (p[0], p[1], p[2], p[3])
    else:  # SAME_UPPER / SAME_LOWER
        _, _, h, wd = g.shape(n.inputs[0])
        total = [max((math.ceil(size / s) - 1) * s + k - size, 0)
                 for size, s, k in ((h, strides[0], kh), (wd, strides[1], kw))]
        lo = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        pads = (lo[0], lo[1], total[0] - lo[0], total[1] - lo[1])
    if any(p >= k for p, k in zip(pads, (kh, kw, kh, kw))):
        raise g.fail(f"Conv {n.name!r} has pads={list(pads)}; each pad must be smaller than the "
                     f"kernel {kh}x{kw}")
    return {"kernel": (int(kh), int(kw)), "stride": strides, "padding": pads}


def _per_channel(c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """A constant that broadcasts to ``shape`` and varies only along axis 1, as a vector."""
    try:
        if np.broadcast_shapes(c.shape, shape) != tuple(shape):
            return None
    except ValueError:
        return None
    full = np.broadcast_to(c.astype(np.float64), shape)
    first = full[(0, slice(None)) + (0,) * (len(shape) - 2)]
    if not np.array_equal(full, np.broadcast_to(first.reshape((1, -1) + (1,) * (len(shape) - 2)),
                                                shape)):
        return None
    return first.copy()


def _fold_affine(g: Graph) -> bool:
    """BatchNormalization and per-channel Mul/Add/Sub/Div after a layer fold into it."""
    for n in g.nodes:
        if n.op not in ("BatchNormalization", "Mul", "Add", "Sub", "Div"):
            continue
        for pos, x in enumerate(n.inputs[:2] if n.op != "BatchNormalization" else n.inputs[:1]):
            layer = g.producer(x)
            if layer is not None and layer.op == LAYER_OP and not layer.attrs["relu"] \
                    and g.uses(x) == 1:
                break
        else:
            if n.op == "BatchNormalization":
                raise g.fail(f"BatchNormalization {n.name!r} does not follow a Conv, Gemm or "
                             "MatMul directly; it can only be folded into one")
            continue
        shape = g.shape(x)
        if n.op == "BatchNormalization":
            vals = [g.const(t) for t in n.inputs[1:5]]
            if any(v is None for v in vals):
                raise g.fail(f"BatchNormalization {n.name!r}: its parameters are not constant")
            gamma, beta, mean, var = (v.astype(np.float64) for v in vals)
            a = gamma / np.sqrt(var + n.attrs.get("epsilon", 1e-5))
            c = beta - mean * a
        else:
            other = g.const(n.inputs[1 - pos])
            vec = None if other is None else _per_channel(other, shape)
            if vec is None:
                continue
            one, zero = np.ones_like(vec), np.zeros_like(vec)
            if n.op == "Mul":
                a, c = vec, zero
            elif n.op == "Add":
                a, c = one, vec
            elif n.op == "Sub":
                a, c = (one, -vec) if pos == 0 else (-one, vec)
            elif pos == 0 and np.all(vec != 0):  # Div by a constant
                a, c = 1 / vec, zero
            else:
                continue
        la = layer.attrs
        if la.get("post") is not None and x in g.act_scale:
            raise g.fail(f"{n.op} {n.name!r} follows a layer the model already rounds twice "
                         f"({layer.name!r}, then after {', '.join(la['onnx_nodes'][1:])}): a "
                         "third rounding is not supported; fold the affine ops together or "
                         "drop the quantizer between them")
        if la.get("post") is not None:  # after a second rounding: part of it
            pa, pc = la["post"]
            la["post"] = (pa * a, pc * a + c)
        elif x in g.act_scale:
            # The model rounds the layer's output to ``x``'s scale before this affine
            # and again after it: the affine stays a second rounding (ir.Rescale).
            la["post"], la["mid_name"] = (a, c), x
        else:
            la["weight"] = la["weight"] * a.reshape((-1,) + (1,) * (la["weight"].ndim - 1))
            la["bias"] = la["bias"] * a + c
            la["bias_quantized"] = False
            if not np.all(a == 1):
                la["w_scale"] = None  # scaled weights are not the model's integer weights
        la["onnx_nodes"].append(n.name)
        layer.outputs = [n.outputs[0]]
        la["scale_names"].append(n.outputs[0])
        g.remove(n)
        return True
    return False


def _hoist_relu(g: Graph) -> bool:
    """Relu commutes with max pooling, views and k-WTA (positive boost): move it up."""
    for r in g.nodes:
        if r.op != "Relu":
            continue
        y = r.inputs[0]
        p = g.producer(y)
        if p is None or p.op not in ("MaxPool", KWTA_OP, *VIEWS) or g.uses(y) != 1:
            continue
        z, out = p.inputs[0], r.outputs[0]
        r.inputs, r.outputs = [z], [y]
        p.inputs = [y, *p.inputs[1:]]
        p.outputs = [out]
        g.shapes[y] = g.shape(z)
        g.nodes.remove(r)
        g.nodes.insert(g.nodes.index(p), r)
        return True
    return False


def _fuse_relu(g: Graph) -> bool:
    """A Relu right after a layer becomes that layer's requantization clamp."""
    for r in g.nodes:
        if r.op != "Relu":
            continue
        layer = g.producer(r.inputs[0])
        if layer is None or layer.op != LAYER_OP or layer.attrs["relu"] or g.uses(r.inputs[0]) != 1:
            continue
        layer.attrs["relu"] = True
        layer.attrs["onnx_nodes"].append(r.name)
        layer.attrs["scale_names"].append(r.outputs[0])
        layer.outputs = [r.outputs[0]]
        g.remove(r)
        return True
    return False


def _cancel_transposes(g: Graph) -> bool:
    for n in g.nodes:
        if n.op != "Transpose":
            continue
        p = g.producer(n.inputs[0])
        if p is None or p.op != "Transpose" or g.uses(n.inputs[0]) != 1:
            continue
        rank = len(g.shape(p.inputs[0]) or ())
        perm1 = list(p.attrs.get("perm", range(rank)[::-1]))
        perm2 = list(n.attrs.get("perm", range(rank)[::-1]))
        if [perm1[i] for i in perm2] == list(range(rank)):
            g.rewire(n.outputs[0], p.inputs[0])
            g.remove(p, n)
            return True
    return False


_REWRITES: tuple[Callable[[Graph], bool], ...] = (
    _drop_noops, _merge_duplicates, _canonical_layers, kwta_patterns, kwta_views,
    _cancel_transposes, _fold_affine, _fuse_relu, _hoist_relu, kwta_by_meaning)


def rewrite(g: Graph) -> None:
    """Apply the rewrites, the first that changes something each time, to a fixed point."""
    for _ in range(_MAX_REWRITES):
        if not any(r(g) for r in _REWRITES):
            return
    raise g.fail("the graph rewrites did not settle (an internal error)")
