"""Lowering: the rewritten graph's straight chain to IR steps in the IR's layout.

Maps are ``(H, W, C)`` and conv kernels ``(ky, kx, c)``; a flatten of ONNX's
``CHW`` order permutes the next linear layer's input columns, and a global
k-WTA right after a flatten moves before it, onto the map. Steps keep float
parameters; :mod:`.assemble` quantizes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .check import attribute_problems
from .graph import KWTA_OP, LAYER_OP, VIEWS, Graph, Node

__all__ = ["Step", "straight_chain", "lower"]


@dataclass(eq=False)
class Step:
    """One IR layer before quantization, in the IR's layout, with float parameters."""

    kind: str  # conv | linear | pool | local_kwta | global_kwta | flatten
    name: str
    node: Node | None = None
    weight: np.ndarray | None = None  # [M, fan_in], IR fan-in order
    bias: np.ndarray | None = None
    w_scale: np.ndarray | None = None
    relu: bool = False
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    k: int = 0
    boost: np.ndarray | None = None  # float, per channel (map) or per unit (vector)
    exact: bool = False
    key_scale: float | None = None  # a QDQ model's scale of the boosted key
    key_range: tuple[int, int] | None = None  # ... and its integer range, zero point off
    out_scale: float | None = None  # a QDQ model's scale of a k-WTA's output
    out_name: str | None = None  # ... the tensor quantized with it
    post: tuple[np.ndarray, np.ndarray] | None = None  # (a, c): y = a * x + c, x rounded
    mid_name: str | None = None  # ... to this QDQ tensor's scale
    tie_order: str = "stream"  # a global k-WTA over a map: "channel-major" for CHW
    bias_quantized: bool = True  # the model's bias is int32 at the accumulator scale
    weight_bits: int = 8  # the model's weight quantizer's signed bits
    order: tuple[str, ...] = ()  # a flatten: the map's axes of more than one element, in order
    channels: int = 0  # of the map a flatten flattens
    scale_names: list[str] = field(default_factory=list)
    onnx_nodes: list[str] = field(default_factory=list)
    onnx_in: str = ""
    onnx_out: str = ""


def straight_chain(g: Graph) -> list[Node]:
    """The nodes from input to output, which must form one straight chain."""
    leftover = [n for n in g.nodes if n.op not in (LAYER_OP, KWTA_OP, "MaxPool", "Relu", *VIEWS)]
    if leftover:
        raise g.fail(
            f"{len(leftover)} node(s) are supported only as part of a recognised pattern and "
            f"could not be matched: {', '.join(f'{n.name!r} ({n.op})' for n in leftover)}. "
            "Recognised: k-WTA as TopK with a threshold compare (Slice/Gather of the k-th "
            "value, GreaterOrEqual/Less, then Mul or Where) or with GatherElements + "
            "ScatterElements into zeros, on x or x * boost; BatchNormalization/Mul/Add/Sub/Div "
            "by per-channel constants right after a Conv, Gemm or MatMul")
    chain, t, seen = [], g.input, set()
    while t != g.output:
        readers = g.consumers(t)
        if len(readers) != 1:
            names = ", ".join(f"{n.name!r} ({n.op})" for n in readers) or "nothing"
            raise g.fail(f"tensor {t!r} is read by {names}; the frontend supports a straight "
                         "chain of layers from the input to the output")
        n = readers[0]
        data = [x for x in n.inputs if x and x not in g.consts]
        if data != [t] or id(n) in seen:
            raise g.fail(f"node {n.name!r} ({n.op}) combines several tensors ({data}); the "
                         "frontend supports a straight chain of layers")
        seen.add(id(n))
        chain.append(n)
        t = n.outputs[0]
    rest = [n for n in g.nodes if id(n) not in seen]
    if rest:
        raise g.fail(f"node(s) {', '.join(repr(n.name) for n in rest)} do not lie on the path "
                     "from the input to the output")
    return chain


def _flatten_perm(dims: dict[str, int], order: tuple[str, ...]) -> np.ndarray:
    """``perm[i]``: the ONNX flat index (in ``order``) of IR flat index ``i`` (HWC)."""
    idx = np.arange(dims["C"] * dims["H"] * dims["W"]).reshape([dims[a] for a in order])
    return idx.transpose([order.index(a) for a in "HWC"]).ravel()


def lower(g: Graph, chain: list[Node]) -> tuple[list[Step], dict]:
    """Walk the chain in the IR's layout; return the steps and the output layout facts."""
    shape = g.input_shape
    is_map = len(shape) == 4
    order: tuple[str, ...] = ("C", "H", "W")
    dims = dict(zip(order, shape[1:])) if is_map else {}
    perm = None if is_map else np.arange(shape[1])
    steps: list[Step] = []

    def need_map(n: Node, what: str) -> None:
        if not is_map:
            raise g.fail(f"{what} {n.name!r} needs a feature map, but its input is a vector")
        if order != ("C", "H", "W"):
            raise g.fail(f"{what} {n.name!r} reads a map in {''.join(order)} order; it must be "
                         "NCHW (transpose back before it)")

    for n in chain:
        before = len(steps)
        a = n.attrs
        out_shape = g.shape(n.outputs[0])
        if n.op == LAYER_OP and a["kind"] == "conv":
            need_map(n, "Conv")
            w = a["weight"]
            if w.shape[1] != dims["C"]:
                raise g.fail(f"Conv {n.name!r}: weight has {w.shape[1]} input channels, the "
                             f"input has {dims['C']}")
            steps.append(Step("conv", n.name, n, w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1),
                              a["bias"], a["w_scale"], a["relu"], a["kernel"], a["stride"],
                              a["padding"], post=a.get("post"), mid_name=a.get("mid_name"),
                              bias_quantized=a.get("bias_quantized", True),
                              weight_bits=a.get("weight_bits", 8)))
            dims = dict(zip(order, out_shape[1:]))
        elif n.op == LAYER_OP:
            if is_map:
                raise g.fail(f"linear layer {n.name!r} reads a feature map; flatten it first")
            w = a["weight"]
            if w.shape[1] != len(perm):
                raise g.fail(f"linear layer {n.name!r}: weight has {w.shape[1]} inputs, the "
                             f"input vector has {len(perm)}")
            steps.append(Step("linear", n.name, n, w[:, perm], a["bias"], a["w_scale"], a["relu"],
                              post=a.get("post"), mid_name=a.get("mid_name"),
                              bias_quantized=a.get("bias_quantized", True),
                              weight_bits=a.get("weight_bits", 8)))
            perm = np.arange(w.shape[0])
        elif n.op == "MaxPool":
            need_map(n, "MaxPool")
            steps.append(_pool_step(g, n, dims))
            dims = dict(zip(order, out_shape[1:]))
        elif n.op == KWTA_OP:
            steps.append(_kwta_step(g, n, is_map, order, dims, perm))
        elif n.op in ("Flatten", "Reshape"):
            if len(out_shape) != 2:
                raise g.fail(f"{n.op} {n.name!r} makes shape {list(out_shape)}; only flattening "
                             "a map to [batch, C*H*W] is supported outside a k-WTA")
            if is_map:
                perm = _flatten_perm(dims, order)
                steps.append(Step("flatten", n.name, n, channels=dims["C"],
                                  order=tuple(a for a in order if dims[a] > 1)))
                is_map = False
        elif n.op == "Transpose":
            p = list(a.get("perm", [3, 2, 1, 0]))
            if not is_map or p[0] != 0:
                raise g.fail(f"Transpose {n.name!r} (perm {p}) is supported only as a view "
                             "around a k-WTA or between map layouts keeping the batch first")
            order = tuple(order[i - 1] for i in p[1:])
        else:  # a Relu that could not be fused
            raise g.fail(f"Relu {n.name!r} does not follow a Conv, Gemm or MatMul (through "
                         "pooling, k-WTA or flattening), so it cannot be fused into a "
                         "requantization")
        if len(steps) > before:
            _annotate(steps[-1], n)
    layout = {"is_map": is_map, "order": order, "perm": perm}
    _kwta_out_scale(g, steps)
    return _kwta_before_flatten(steps), layout


def _pool_step(g: Graph, n: Node, dims: dict[str, int]) -> Step:
    """The step of a MaxPool on an NCHW map of size ``dims``, its attributes checked."""
    a = n.attrs
    kernel = tuple(int(v) for v in a["kernel_shape"])
    stride = tuple(int(v) for v in a.get("strides", [1, 1]))
    problems = attribute_problems(n.op, a, None, n.outputs)
    if problems:
        raise g.fail(f"MaxPool {n.name!r} has {' and '.join(problems)}")
    if a.get("ceil_mode", 0) and any((d - k) % s for d, k, s in
                                     zip((dims["H"], dims["W"]), kernel, stride)):
        raise g.fail(f"MaxPool {n.name!r} has ceil_mode=1 on a {dims['H']}x{dims['W']} "
                     f"map that the {kernel} window does not tile; only floor mode")
    return Step("pool", n.name, n, kernel=kernel, stride=stride)


def _kwta_before_flatten(steps: list[Step]) -> list[Step]:
    """Flatten then a global k-WTA becomes the k-WTA on the map, then Flatten.

    The two select the same winners (the IR flattens in HWC order, the
    k-WTA's lower-index tie rule included) when the boost is one per
    channel; the map form keeps the boost per channel, as the IR stores it.
    """
    out = list(steps)
    for i in range(len(out) - 1):
        flat, kwta = out[i], out[i + 1]
        if flat.kind != "flatten" or kwta.kind != "global_kwta":
            continue
        channels = flat.channels
        if kwta.boost is not None:
            rows = kwta.boost.reshape(-1, channels)
            if np.any(rows != rows[:1]):
                continue  # a boost per unit of the map: keep the vector form
            kwta.boost = rows[0].copy()
        kwta.tie_order = _tie_order(flat.order)
        out[i], out[i + 1] = kwta, flat
    return out


def _tie_order(kept: tuple[str, ...]) -> str:
    """A global k-WTA's tie order over a map flattened with its axes of more than one
    element in this order: "channel-major" for C first then H, W (an NCHW map), else the
    IR's stream order (HWC; an order with C between H and W is not reproduced)."""
    chw = len(kept) > 1 and kept[0] == "C" and list(kept[1:]) == [a for a in "HW" if a in kept]
    return "channel-major" if chw else "stream"


def _kwta_out_scale(g: Graph, steps: list[Step]) -> None:
    """Each k-WTA step's output scale in a QDQ model: its own quantizer's, or else that
    of a flatten right after it (the last quantizer before the next layer reads it)."""
    for i, s in enumerate(steps):
        if s.kind in ("local_kwta", "global_kwta"):
            names = [s.onnx_out]
            for f in steps[i + 1:]:
                if f.kind != "flatten":
                    break
                names += f.scale_names
            quantized = [t for t in names if t in g.act_scale]
            if quantized:
                s.out_name = quantized[-1]
                s.out_scale = g.act_scale[s.out_name]


def _annotate(step: Step, n: Node) -> None:
    step.onnx_nodes = list(n.attrs.get("onnx_nodes", [n.name]))
    step.scale_names = list(n.attrs.get("scale_names", [])) + [n.outputs[0]]
    step.onnx_in = n.attrs.get("onnx_in", n.inputs[0])
    step.onnx_out = n.outputs[0]


def _kwta_step(g: Graph, n: Node, is_map: bool, order: tuple[str, ...], dims: dict,
               perm: np.ndarray | None) -> Step:
    a = n.attrs
    where = f"k-WTA {n.name!r}"
    boost = a["boost"]
    if not is_map:
        if a["axes"] != [1]:
            raise g.fail(f"{where} selects over axes {a['axes']} of a vector")
        return Step("global_kwta", n.name, n, k=a["k"], exact=a["exact"],
                    key_scale=a.get("key_scale"), key_range=a.get("key_range"),
                    boost=None if boost is None else boost.ravel()[perm])
    letters = [order[ax - 1] for ax in a["axes"]]
    ones = {x for x in "CHW" if dims[x] == 1}  # an axis of one element is in any group
    if set(letters) - ones == {"C"} - ones or set(letters) | ones == {"C", "H", "W"}:
        local = set(letters) | ones != {"C", "H", "W"} or ones >= {"H", "W"}
        if boost is not None and not local:  # over (order) axes -> per channel
            full = boost.reshape([dims[x] for x in order])
            by_c = np.moveaxis(full, order.index("C"), 0).reshape(dims["C"], -1)
            if np.any(by_c != by_c[:, :1]):
                raise g.fail(f"{where}: a global k-WTA over a map needs one boost per channel; "
                             "this boost varies across positions")
            boost = by_c[:, 0]
        flat = tuple(x for x in (order[ax - 1] for ax in sorted(a["axes"])) if dims[x] > 1)
        return Step("local_kwta" if local else "global_kwta", n.name, n, k=a["k"],
                    exact=a["exact"], key_scale=a.get("key_scale"),
                    key_range=a.get("key_range"), boost=None if boost is None else boost.ravel(),
                    tie_order="stream" if local else _tie_order(flat))
    raise g.fail(f"{where} selects over the {'/'.join(letters)} axes of a map; the IR selects "
                 "over the channels at each position (local) or over the whole map (global)")
