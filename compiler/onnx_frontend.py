"""The ONNX frontend: float and QDQ ONNX models to the integer IR.

:func:`import_onnx` reads a model exported by PyTorch (either exporter) or
quantized by ONNX Runtime (QDQ format) and returns an :class:`~.ir.Network`.
The work is a flat list of steps, each small and checkable:

1. **Load** with ``onnx.load`` (no external data yet), refuse external data
   outside the model's folder, run ``onnx.checker``.
2. **Check** every node's operator (:func:`check_supported`, also usable on
   its own as a fast first pass): one error lists every unsupported node.
   Only then is the external data (inside the model's folder) read.
3. **Fold constants**: ``Constant`` nodes, shape arithmetic
   (``Shape``/``Gather``/``Concat``/``Unsqueeze``/...), ``Cast`` of
   constants, ``DequantizeLinear`` of weights, with ``onnx.reference``
   evaluating each node whose inputs are all known; shapes come from ONNX
   shape inference with the batch fixed to 1.
4. **Strip QDQ**: every ``QuantizeLinear -> DequantizeLinear`` pair on an
   activation is removed and its scale remembered for the tensor; weight
   scales are remembered from the weights' ``DequantizeLinear``.
5. **Rewrite** to a fixed point (FINN/QONNX style: each rewrite is a
   function ``graph -> changed``): drop ``Identity``/``Dropout``/no-op
   casts and reshapes; merge duplicate nodes (two reshapes of one tensor);
   ``Conv``/``Gemm``/``MatMul`` become canonical layers; the k-WTA
   patterns become one ``KWTA`` node; reshapes or transposes around a k-WTA
   are folded into its axes; ``BatchNormalization`` and per-channel
   ``Mul``/``Add``/``Sub``/``Div`` by constants fold into the preceding
   layer's weights and bias (a scale per output channel keeps the zero
   pattern); ``Relu`` moves up through pooling, k-WTA and flattening (they
   commute with it: the boost is positive) and fuses into the layer's
   requantization.
6. **Lower** the remaining straight chain to IR steps in the IR's layout:
   maps are ``(H, W, C)``, conv kernels ``(ky, kx, c)``, and a flatten of
   ONNX's ``CHW`` order permutes the next linear layer's input columns (a
   global k-WTA right after a flatten moves before it, onto the map).
7. **Quantize**: int8 symmetric activations with per-tensor scales (from
   the QDQ model, or ``max|x| / 127`` of each layer's float output on the
   calibration data, computed by a float numpy pass over the recognised
   layers); int8 weights per output channel; int32 bias; fixed-point
   requantization. The last layer keeps int32 logits unless something
   follows it.
8. **Pack** each layer into overlays and insert ``ZeroSkip``/``Densify``
   adapters for the build mode.

k-WTA patterns
--------------
With ``key = x`` or ``key = x * b`` (``b`` a positive constant, the nupic
boost), ``idx``/``values`` from ``TopK(key, k, axis)`` (largest):

* threshold: ``thr = values[k-1]`` along the axis (``Slice``, ``Gather``
  or ``ReduceMin``, then any reshape), ``mask = key >= thr`` (or
  ``Less``/``Greater`` with the opposite polarity, ``Not``), output
  ``x * Cast(mask)`` or ``Where(mask, x, 0)`` / ``Where(not_mask, 0, x)``;
* gather/scatter: ``ScatterElements(zeros, idx, GatherElements(x, idx))``,
  or ``x * ScatterElements(zeros, idx, ones)``.

The ``TopK`` may run on a reshaped or transposed view of the key (a
flattened map: global k-WTA; a channels-last permute: local k-WTA), and the
whole pattern may sit between a view and its inverse. A selection over the
channels at each position is a :class:`~.ir.LocalKWTA`; over a whole vector
or map a :class:`~.ir.GlobalKWTA`.

Ties: the threshold form keeps every value equal to the k-th (more than k
winners); the IR keeps exactly k, the lower index winning (HWC order for a
map). On the same int8 input the IR's winners differ from the ONNX
model's only where keys tie at the k-th (or, when the boost cannot be
represented exactly, are within its rounding of it).

Boost: the IR's boost is an integer per unit (vector) or per channel
(map); see :func:`~.quantize.quantize_boost` for how the real factors are
scaled so that the integer keys rank like the real ones.

QDQ models: the IR uses the model's activation scales (one per tensor,
int8, zero point 0) and its per-channel int8 weights as they are; only the
requantization rounding differs (half up with a 16-bit multiplier, where
QDQ rounds half to even in float), and the k-WTA compares exact integer
keys where a QDQ model may also quantize the boosted keys and the
threshold. Scales the model lacks come from ``calibration``.

Limits: one input (float32, ``[batch, C, H, W]`` or ``[batch, N]``) and one
output; a straight chain (no residual adds or concatenations); no pooling
other than max pooling with stride equal to the window; no activation other
than ReLU (k-WTA sparsifies without one); the k-WTA selects over the
channels at each position or over the whole map or vector.
"""

from __future__ import annotations

import ast
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import ir
from .errors import CosparseError
from .packer import PackError, pack
from .quantize import quantize_boost, quantize_input, requant_for_range

__all__ = ["FrontendError", "import_onnx", "check_supported", "SUPPORTED_OPS", "MODES",
           "to_ir_input", "from_ir_output"]

#: Build modes: which streams are sparse and which weights are stored.
MODES = ("sparse-sparse", "sparse-weights", "dense")

#: Operators the frontend recognises on activations, and in what role.
SUPPORTED_OPS: dict[str, str] = {
    "Conv": "2-D convolution (group 1, dilation 1)",
    "Gemm": "linear layer",
    "MatMul": "linear layer (with a constant weight; an Add after it is the bias)",
    "BatchNormalization": "folded into the preceding Conv/Gemm (eval mode)",
    "Add": "bias after a layer", "Sub": "per-channel shift after a layer",
    "Mul": "per-channel scale after a layer, k-WTA boost or mask",
    "Div": "per-channel scale after a layer",
    "Relu": "fused into the preceding layer's requantization",
    "MaxPool": "max pooling with stride equal to the kernel",
    "Flatten": "map to vector", "Reshape": "map to vector, or a view inside a k-WTA",
    "Transpose": "a view around a k-WTA", "Identity": "dropped", "Dropout": "dropped",
    "TopK": "k-WTA", "Slice": "k-WTA threshold", "Gather": "k-WTA threshold",
    "ReduceMin": "k-WTA threshold", "Less": "k-WTA mask", "LessOrEqual": "k-WTA mask",
    "Greater": "k-WTA mask", "GreaterOrEqual": "k-WTA mask", "Not": "k-WTA mask",
    "Where": "k-WTA output", "Cast": "k-WTA mask", "GatherElements": "k-WTA winners",
    "ScatterElements": "k-WTA output", "Squeeze": "k-WTA threshold view",
    "Unsqueeze": "k-WTA threshold view", "Expand": "k-WTA threshold view",
    "QuantizeLinear": "QDQ activation scale", "DequantizeLinear": "QDQ scale",
}

#: Operators never evaluated, even on constants.
_NEVER_FOLD = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
               "Multinomial", "Bernoulli", "If", "Loop", "Scan"}
_VIEWS = ("Reshape", "Flatten", "Transpose")
_DEFAULT_DOMAINS = ("", "ai.onnx")
_LAYER = "CosparseLayer"  # canonical Conv / linear
_KWTA = "CosparseKWTA"
_MAX_REWRITES = 10_000


class FrontendError(CosparseError, ValueError):
    """The ONNX model cannot be imported; the message names the file, node(s) and limit."""


# --------------------------------------------------------------------------
# Loading


def _onnx():
    import onnx  # imported lazily: the IR and the golden model do not need it
    return onnx


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "") if text else type(e).__name__


def _tensors_with_data(model) -> list:
    """Initializers and the tensors held by Constant nodes' attributes."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                tensors.append(a.t)
            tensors.extend(a.tensors)
    return tensors


def _check_external_data(model, path: Path) -> bool:
    """Refuse external data outside the model's folder; return whether there is any."""
    onnx = _onnx()
    base = os.path.realpath(path.parent)
    found = False
    for t in _tensors_with_data(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        target = os.path.realpath(os.path.join(base, loc))
        if not loc or os.path.commonpath([base, target]) != base:
            raise FrontendError(
                f"{path}: tensor {t.name!r} keeps its data in {loc!r}, which is outside the "
                f"model's folder {base}; the frontend reads external data only from files in "
                "the model's own folder")
        if not os.path.isfile(target):
            raise FrontendError(f"{path}: tensor {t.name!r} keeps its data in {loc!r}, but "
                                f"{target} does not exist")
    return found


def _load(path: Path):
    """Read, check and inline an ONNX model's graph; its external data stays on disk.

    Every external data file must lie in the model's own folder (checked
    before anything reads it); :func:`_attach_data` loads it later.
    """
    onnx = _onnx()
    if not path.is_file():
        raise FrontendError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise FrontendError(f"{path}: not a readable ONNX model; the file is malformed or "
                            f"truncated ({_short(e)})") from None
    external = _check_external_data(model, path)
    if not model.HasField("graph") or not model.graph.node:
        raise FrontendError(f"{path}: not a readable ONNX model; it holds no graph (a malformed "
                            "or truncated file)")
    try:
        # With external data the checker takes the path (it resolves the data files,
        # already known to lie in the model's folder, and allows models over 2 GB).
        onnx.checker.check_model(str(path) if external else model)
    except Exception as e:
        raise FrontendError(f"{path}: the ONNX checker rejects the model "
                            f"({_short(e)})") from None
    if model.functions:
        from onnx import inliner
        model = inliner.inline_local_functions(model)
    return model


def _attach_data(model, path: Path) -> None:
    """Load the external data (already checked to lie in the model's folder)."""
    if not _check_external_data(model, path):
        return
    try:
        _onnx().load_external_data_for_model(model, str(path.parent))
    except Exception as e:
        raise FrontendError(f"{path}: cannot read the model's external data "
                            f"({_short(e)})") from None


# --------------------------------------------------------------------------
# Supported-operator check (the fast pass)


def _attribute_problems(op: str, a: dict[str, Any], weight: tuple[int, ...] | None,
                        outputs: list[str]) -> list[str]:
    """Unsupported attributes of a recognised operator, as phrases naming them.

    ``a`` holds the node's attributes, ``weight`` the shape of its second
    input when known (a Conv's kernel).
    """
    bad = []
    if op == "Conv":
        kernel = a.get("kernel_shape")
        rank = len(kernel) if kernel is not None else len(weight) - 2 if weight else 2
        if rank != 2:
            bad.append(f"a {rank}-D kernel (only 2-D convolutions)")
        if a.get("group", 1) != 1:
            bad.append(f"group={a['group']} (only group=1)")
        if any(d != 1 for d in a.get("dilations", [])):
            bad.append(f"dilations={list(a['dilations'])} (only 1)")
    elif op == "MaxPool":
        kernel = list(a.get("kernel_shape", []))
        strides = list(a.get("strides", []) or [1] * len(kernel))
        if len(kernel) != 2:
            bad.append(f"a {len(kernel)}-D window (only 2-D pooling)")
        elif strides != kernel:
            bad.append(f"strides={strides} with kernel_shape={kernel} (stride must equal the "
                       "kernel)")
        if any(a.get("pads", [])):
            bad.append(f"pads={list(a['pads'])} (no padding)")
        if any(d != 1 for d in a.get("dilations", [])):
            bad.append(f"dilations={list(a['dilations'])} (only 1)")
        if len(outputs) > 1 and outputs[1]:
            bad.append("an Indices output")
    elif op == "TopK" and a.get("largest", 1) != 1:
        bad.append("largest=0 (k-WTA keeps the largest values)")
    elif op == "Gemm" and a.get("transA", 0):
        bad.append("transA=1")
    elif op == "Flatten" and a.get("axis", 1) != 1:
        bad.append(f"axis={a['axis']} (only axis=1, which keeps the batch)")
    elif op == "BatchNormalization" and a.get("training_mode", 0):
        bad.append("training_mode=1 (export the model in eval mode)")
    return bad


def _check_nodes(model, path: Path) -> None:
    """Raise one FrontendError listing every unsupported node and attribute."""
    onnx = _onnx()
    g = model.graph
    known = {t.name for t in g.initializer}
    dims = {t.name: tuple(t.dims) for t in g.initializer}
    unsupported, attrs = [], []
    for i, node in enumerate(g.node):
        name = node.name or f"{node.op_type}_{i}"
        if node.domain not in _DEFAULT_DOMAINS:
            unsupported.append(f"{name!r} ({node.domain}.{node.op_type})")
            continue
        const = node.op_type == "Constant" or node.op_type in ("Shape", "Size") or (
            all(x == "" or x in known for x in node.input) and node.input)
        if const and node.op_type not in _NEVER_FOLD:
            known.update(node.output)
            continue
        if node.op_type not in SUPPORTED_OPS:
            unsupported.append(f"{name!r} ({node.op_type})")
            continue
        values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        problems = _attribute_problems(node.op_type, values,
                                       dims.get(node.input[1]) if len(node.input) > 1 else None,
                                       list(node.output))
        if problems:
            attrs.append(f"{name!r} ({node.op_type}) has {' and '.join(problems)}")
    parts = []
    if unsupported:
        parts.append(f"{len(unsupported)} node(s) use operators the frontend does not support: "
                     f"{', '.join(unsupported)}. Supported operators: "
                     f"{', '.join(sorted(SUPPORTED_OPS))}, and any operator whose inputs are "
                     "all constant (it is folded)")
    if attrs:
        parts.append("; ".join(attrs))
    if parts:
        raise FrontendError(f"{path}: " + ". ".join(parts) + ".")


def check_supported(path: str | os.PathLike) -> None:
    """Fast first pass: raise if any node of the model cannot be imported.

    Reads the graph only (no external weight data), and checks every node's
    operator and the attributes of the recognised ones, before any folding,
    quantization or packing.

    Raises
    ------
    FrontendError
        One message listing every unsupported node (name and operator type)
        with the list of supported operators, and every recognised node with
        an unsupported attribute (group convolution, dilation, pooling
        stride unlike the kernel, ``TopK`` with ``largest=0``, ...); or the
        file is not a readable ONNX model.
    """
    p = Path(path)
    _check_nodes(_load(p), p)


# --------------------------------------------------------------------------
# The working graph


@dataclass(eq=False)
class _Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    scope: str = ""  # the PyTorch module path, when the exporter recorded it


@dataclass
class _QInfo:
    """How a constant was dequantized: ``real = (q - zero_point) * scale`` along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None


class _Graph:
    """A mutable, topologically ordered ONNX graph with folded constants and shapes."""

    def __init__(self, path: Path):
        self.path = path
        self.nodes: list[_Node] = []
        self.consts: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.types: dict[str, int] = {}
        self.input = ""
        self.input_shape: tuple[int, ...] = ()
        self.output = ""
        self.opsets: dict[str, int] = {}
        self.ir_version = 8
        self.act_scale: dict[str, float] = {}
        self.qinfo: dict[str, _QInfo] = {}
        self._fresh = 0

    # -- queries
    def producer(self, t: str) -> _Node | None:
        return next((n for n in self.nodes if t in n.outputs), None)

    def consumers(self, t: str) -> list[_Node]:
        return [n for n in self.nodes if t in n.inputs]

    def uses(self, t: str) -> int:
        return sum(n.inputs.count(t) for n in self.nodes) + (t == self.output)

    def const(self, t: str) -> np.ndarray | None:
        return self.consts.get(t)

    def shape(self, t: str) -> tuple[int, ...] | None:
        if t in self.consts:
            return tuple(self.consts[t].shape)
        return self.shapes.get(t)

    # -- edits
    def fresh(self, base: str) -> str:
        self._fresh += 1
        return f"{base}__cosparse{self._fresh}"

    def rewire(self, old: str, new: str) -> None:
        """Make every reader of ``old`` read ``new`` instead."""
        for n in self.nodes:
            n.inputs = [new if x == old else x for x in n.inputs]
        if self.output == old:
            self.output = new
        if old in self.act_scale and new not in self.act_scale:
            self.act_scale[new] = self.act_scale[old]

    def remove(self, *nodes: _Node) -> None:
        for n in nodes:
            if n in self.nodes:
                self.nodes.remove(n)

    def replace(self, old: list[_Node], new: _Node, at: _Node) -> None:
        """Put ``new`` where ``at`` is and remove ``old`` (``at`` included)."""
        self.nodes.insert(self.nodes.index(at), new)
        self.remove(*old)

    def fail(self, msg: str) -> FrontendError:
        return FrontendError(f"{self.path}: {msg}")


def _node_scope(node) -> str:
    """Module path of a node: the dynamo exporter's name scopes, or the legacy node name.

    Legacy names look like ``/net/conv1/Conv`` or ``/body/body.4/TopK`` (a
    segment may repeat its parent's path); both become ``net.conv1`` /
    ``body.4``.
    """
    parts: list[str] = []
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                parts = [s for s in ast.literal_eval(p.value)[1:-1] if s]
            except (ValueError, SyntaxError):
                parts = []
            break
    else:
        if node.name.startswith("/"):
            parts = [s for s in node.name.split("/") if s][:-1]
    path = ""
    for seg in parts:
        path = seg if path and seg.startswith(path + ".") else f"{path}.{seg}" if path else seg
    return path


def _const_value(onnx, node, opset: int) -> np.ndarray:
    a = node.attribute[0]
    if a.name == "value":
        return onnx.numpy_helper.to_array(a.t)
    if a.name in ("value_float", "value_floats"):
        return np.array(onnx.helper.get_attribute_value(a), dtype=np.float32)
    if a.name in ("value_int", "value_ints"):
        return np.array(onnx.helper.get_attribute_value(a), dtype=np.int64)
    from onnx.reference import ReferenceEvaluator
    return np.asarray(ReferenceEvaluator(node, opsets={"": opset}).run(None, {})[0])


def _graph(model, path: Path) -> _Graph:
    onnx = _onnx()
    g = _Graph(path)
    g.opsets = {o.domain: o.version for o in model.opset_import}
    g.ir_version = model.ir_version
    opset = g.opsets.get("", g.opsets.get("ai.onnx", 13))
    for t in model.graph.initializer:
        g.consts[t.name] = onnx.numpy_helper.to_array(t)
    inputs = [i for i in model.graph.input if i.name not in g.consts]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise g.fail(f"the model has {len(inputs)} input(s) and {len(model.graph.output)} "
                     "output(s); the frontend takes one input tensor and one output")
    inp = inputs[0]
    tt = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if tt.elem_type != onnx.TensorProto.FLOAT:
        raise g.fail(f"input {inp.name!r} has element type "
                     f"{onnx.TensorProto.DataType.Name(tt.elem_type)}; the frontend takes float32")
    if len(dims) not in (2, 4) or any(d is None or d < 1 for d in dims[1:]) or \
            dims[0] not in (None, 1):
        shown = ["?" if d is None else d for d in dims]
        raise g.fail(f"input {inp.name!r} has shape {shown}; the frontend takes [batch, C, H, W] "
                     "(NCHW) or [batch, N] with every dimension but the batch fixed")
    g.input, g.input_shape = inp.name, (1, *dims[1:])
    g.shapes[g.input] = g.input_shape
    g.output = model.graph.output[0].name
    for i, n in enumerate(model.graph.node):
        if n.op_type == "Constant" and n.domain in _DEFAULT_DOMAINS:
            g.consts[n.output[0]] = _const_value(onnx, n, opset)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        g.nodes.append(_Node(n.op_type, n.name or f"{n.op_type}_{i}", list(n.input),
                             list(n.output), attrs, n.domain, _node_scope(n)))
    return g


def _infer_shapes(g: _Graph) -> None:
    """Static shapes and element types of every tensor (batch 1), by ONNX shape inference."""
    onnx = _onnx()
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
        raise g.fail(f"ONNX shape inference failed ({_short(e)})") from None
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        tt = vi.type.tensor_type
        g.types[vi.name] = tt.elem_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            g.shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)


# --------------------------------------------------------------------------
# Constant folding and QDQ


def _evaluate(g: _Graph, node: _Node, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run one node on constant inputs with ``onnx.reference``, at the model's opsets."""
    onnx = _onnx()
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
                         f"inputs ({_short(e)})") from None
    return [np.asarray(v) for v in out]


def _dequantize(g: _Graph, node: _Node) -> np.ndarray:
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
    g.qinfo[node.outputs[0]] = _QInfo(scale=scale.ravel(), zero_point=zp.ravel(), axis=axis)
    return ((q.astype(np.int64) - zp) * scale).astype(np.float32)


def _fold_constants(g: _Graph) -> bool:
    """Evaluate every node whose inputs are known; record dequantized weights' scales."""
    changed = False
    for node in list(g.nodes):
        if node.domain not in _DEFAULT_DOMAINS or node.op in _NEVER_FOLD:
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


def _fold_all(g: _Graph) -> None:
    _infer_shapes(g)
    while _fold_constants(g):
        _infer_shapes(g)
    if g.output in g.consts:
        raise g.fail(f"the output {g.output!r} does not depend on the input")


def _strip_qdq(g: _Graph) -> None:
    """Remove QuantizeLinear -> DequantizeLinear pairs on activations, keeping their scales."""
    onnx = _onnx()
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
    dq = next((n for n in g.nodes if n.op == "DequantizeLinear"), None)
    if dq is not None:
        raise g.fail(f"DequantizeLinear {dq.name!r} reads {dq.inputs[0]!r}, which is neither a "
                     "constant nor a quantized activation (an int8 model input is not supported: "
                     "the model takes float32 and quantizes it)")


# --------------------------------------------------------------------------
# Rewrites (each: graph -> changed)


def _drop_noops(g: _Graph) -> bool:
    """Identity, Dropout (inference), casts to the same type and reshapes to the same shape."""
    for n in g.nodes:
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


def _value_key(g: _Graph, t: str) -> Any:
    """A tensor's identity for merging: small constants by value, the rest by name."""
    c = g.const(t)
    if c is not None and c.size <= 64:
        return (c.dtype.str, c.shape, c.tobytes())
    return t


def _merge_duplicates(g: _Graph) -> bool:
    """Two identical nodes on the same inputs (e.g. two reshapes of x) become one."""
    seen: dict[tuple, _Node] = {}
    for n in g.nodes:
        if n.domain not in _DEFAULT_DOMAINS:
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


def _per_tensor_or_axis(q: _QInfo | None, axis: int, m: int) -> np.ndarray | None:
    """Per-output-channel weight scales from a dequantization, if it had them."""
    if q is None or np.any(q.zero_point != 0):
        return None
    if q.scale.size == 1:
        return np.full(m, float(q.scale.ravel()[0]))
    if q.axis is not None and q.axis == axis and q.scale.size == m:
        return q.scale.ravel().astype(np.float64)
    return None


def _canonical_layers(g: _Graph) -> bool:
    """Conv, Gemm and MatMul with constant weights become canonical layer nodes.

    A canonical layer holds float ``weight`` ([M, C, kh, kw] or [M, N]),
    ``bias`` [M], ``relu``, and ``w_scale`` (per-channel weight scales taken
    from a QDQ model, or None).
    """
    for n in g.nodes:
        if n.op not in ("Conv", "Gemm", "MatMul") or n.domain not in _DEFAULT_DOMAINS:
            continue
        w = g.const(n.inputs[1])
        if w is None:
            raise g.fail(f"{n.op} {n.name!r}: its weight {n.inputs[1]!r} is not a constant")
        b = g.const(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
        q = g.qinfo.get(n.inputs[1])
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
        layer = _Node(_LAYER, n.name, [n.inputs[0]], list(n.outputs[:1]), dict(
            kind=kind, weight=weight, bias=bias, relu=False, w_scale=w_scale,
            weight_name=n.inputs[1], onnx_nodes=[n.name], scale_names=[n.outputs[0]], **attrs),
            scope=n.scope)
        g.replace([n], layer, n)
        return True
    return False


def _conv_attrs(g: _Graph, n: _Node, w: np.ndarray) -> dict:
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


def _fold_affine(g: _Graph) -> bool:
    """BatchNormalization and per-channel Mul/Add/Sub/Div after a layer fold into it."""
    for n in g.nodes:
        if n.op not in ("BatchNormalization", "Mul", "Add", "Sub", "Div"):
            continue
        for pos, x in enumerate(n.inputs[:2] if n.op != "BatchNormalization" else n.inputs[:1]):
            layer = g.producer(x)
            if layer is not None and layer.op == _LAYER and not layer.attrs["relu"] \
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
        la["weight"] = la["weight"] * a.reshape((-1,) + (1,) * (la["weight"].ndim - 1))
        la["bias"] = la["bias"] * a + c
        if not np.all(a == 1):
            la["w_scale"] = None  # the model's integer weights no longer apply
        la["onnx_nodes"].append(n.name)
        layer.outputs = [n.outputs[0]]
        la["scale_names"].append(n.outputs[0])
        g.remove(n)
        return True
    return False


def _hoist_relu(g: _Graph) -> bool:
    """Relu commutes with max pooling, views and k-WTA (positive boost): move it up."""
    for r in g.nodes:
        if r.op != "Relu":
            continue
        y = r.inputs[0]
        p = g.producer(y)
        if p is None or p.op not in ("MaxPool", _KWTA, *_VIEWS) or g.uses(y) != 1:
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


def _fuse_relu(g: _Graph) -> bool:
    """A Relu right after a layer becomes that layer's requantization clamp."""
    for r in g.nodes:
        if r.op != "Relu":
            continue
        layer = g.producer(r.inputs[0])
        if layer is None or layer.op != _LAYER or layer.attrs["relu"] or g.uses(r.inputs[0]) != 1:
            continue
        layer.attrs["relu"] = True
        layer.attrs["onnx_nodes"].append(r.name)
        layer.attrs["scale_names"].append(r.outputs[0])
        layer.outputs = [r.outputs[0]]
        g.remove(r)
        return True
    return False


def _cancel_transposes(g: _Graph) -> bool:
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


# --------------------------------------------------------------------------
# k-WTA patterns


def _runs(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Align two shapes of one row-major buffer into runs of axes with equal products."""
    runs, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        ia, jb, pa, pb = [], [], 1, 1
        if i < len(a):
            ia.append(i); pa *= a[i]; i += 1  # noqa: E702
        if j < len(b):
            jb.append(j); pb *= b[j]; j += 1  # noqa: E702
        while pa != pb:
            if pa < pb and i < len(a):
                ia.append(i); pa *= a[i]; i += 1  # noqa: E702
            elif pb < pa and j < len(b):
                jb.append(j); pb *= b[j]; j += 1  # noqa: E702
            else:
                return None
        runs.append((ia, jb))
    return runs


def _group_through_view(g: _Graph, view: _Node, group: list[int]) -> list[int] | None:
    """The axes of a view's input that a group of its output's axes covers, or None."""
    src, dst = g.shape(view.inputs[0]), g.shape(view.outputs[0])
    if src is None or dst is None:
        return None
    if view.op == "Transpose":
        perm = list(view.attrs.get("perm", range(len(src))[::-1]))
        return sorted(perm[a] for a in group)
    runs = _runs(src, dst)
    if runs is None:
        return None
    out = []
    for ia, jb in runs:
        big = [j for j in jb if dst[j] > 1]
        inside = [j for j in big if j in group]
        if big and len(inside) == len(big):
            out += [i for i in ia if src[i] > 1]
        elif inside:
            return None  # the group splits an axis of the view's input
    return sorted(out)


def _is_zero(g: _Graph, t: str) -> bool:
    c = g.const(t)
    return c is not None and c.size > 0 and not np.any(c)


def _unwrap(g: _Graph, t: str, ops: tuple[str, ...], nodes: list[_Node]) -> str:
    while True:
        p = g.producer(t)
        if p is None or p.op not in ops:
            return t
        nodes.append(p)
        t = p.inputs[0]


@dataclass
class _KwtaMatch:
    x: str
    out: str
    key: str
    topk: _Node
    k: int
    axis: int  # TopK axis on its input
    nodes: list[_Node]  # every node of the pattern (replaced by one KWTA node)
    exact: bool  # gather/scatter: exactly k winners; threshold: ties kept


_COMPARES = {  # op -> (position of the key, True if "compare true" means "winner")
    "GreaterOrEqual": (0, True), "LessOrEqual": (1, True),
    "Less": (0, False), "Greater": (1, False),
}


def _topk_k(g: _Graph, topk: _Node) -> int | None:
    kk = g.const(topk.inputs[1]) if len(topk.inputs) > 1 else None
    if kk is None:
        kk = topk.attrs.get("k")  # opset 1 attribute
        return None if kk is None else int(kk)
    return int(kk.ravel()[0])


def _topk_axis(g: _Graph, topk: _Node) -> int:
    rank = len(g.shape(topk.inputs[0]) or (0,))
    return topk.attrs.get("axis", -1) % rank


def _threshold_source(g: _Graph, thr: str, nodes: list[_Node]) -> tuple[_Node, int] | None:
    """The TopK whose values give ``thr``, and which of its values (0-based)."""
    t = _unwrap(g, thr, ("Reshape", "Unsqueeze", "Squeeze", "Expand", "Identity", "Flatten"), nodes)
    p = g.producer(t)
    if p is None or p.op not in ("Slice", "Gather", "ReduceMin"):
        return None
    topk = g.producer(p.inputs[0])
    if topk is None or topk.op != "TopK" or topk.outputs[0] != p.inputs[0]:
        return None
    kk = _topk_k(g, topk)
    vshape = g.shape(p.inputs[0])
    if kk is None or vshape is None:
        return None
    axis = _topk_axis(g, topk)
    if p.op == "ReduceMin":
        axes = p.attrs.get("axes")
        if axes is None and len(p.inputs) > 1 and p.inputs[1]:
            axes = g.const(p.inputs[1])
        if axes is None or [int(a) % len(vshape) for a in np.ravel(axes)] != [axis]:
            return None
        j = kk - 1
    else:
        if not topk.attrs.get("sorted", 1):
            return None  # unsorted values: which one is the k-th is unknown
        if p.op == "Gather":
            idx = g.const(p.inputs[1])
            if idx is None or idx.size != 1 or p.attrs.get("axis", 0) % len(vshape) != axis:
                return None
            j = int(idx.ravel()[0]) % kk
        else:
            j = _slice_index(g, p, vshape, axis)
            if j is None:
                return None
    nodes += [p, topk]
    return topk, j


def _slice_index(g: _Graph, p: _Node, shape: tuple[int, ...], axis: int) -> int | None:
    """The one index a Slice keeps along ``axis`` (others kept whole), or None."""
    if len(p.inputs) >= 3:
        starts, ends = g.const(p.inputs[1]), g.const(p.inputs[2])
        axes = g.const(p.inputs[3]) if len(p.inputs) > 3 and p.inputs[3] else None
        steps = g.const(p.inputs[4]) if len(p.inputs) > 4 and p.inputs[4] else None
        if starts is None or ends is None or (len(p.inputs) > 3 and p.inputs[3] and axes is None):
            return None
    else:  # opset < 10 attributes
        starts, ends, axes, steps = (p.attrs.get(a) for a in ("starts", "ends", "axes", None))
    starts, ends = np.ravel(starts), np.ravel(ends)
    axes = np.arange(len(starts)) if axes is None else np.ravel(axes)
    steps = np.ones(len(starts), np.int64) if steps is None else np.ravel(steps)
    j = None
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % len(shape)
        kept = range(*slice(int(max(min(s, 2**62), -2**62)), int(max(min(e, 2**62), -2**62)),
                            int(st)).indices(shape[a]))
        if a == axis:
            if len(kept) != 1:
                return None
            j = kept[0]
        elif len(kept) != shape[a]:
            return None
    return j


def _exclusive(g: _Graph, nodes: list[_Node], out: str) -> bool:
    """Whether every tensor the pattern makes, except ``out``, is read only inside it."""
    inside = set(map(id, nodes))
    for n in nodes:
        for t in n.outputs:
            if t == out or not t:
                continue
            if t == g.output or any(id(c) not in inside for c in g.consumers(t)):
                return False
    return True


def _key_source(g: _Graph, key: str, x: str,
                nodes: list[_Node]) -> tuple[str, np.ndarray | None] | None:
    """``key`` is ``x`` or ``x * b`` with constant ``b``: return (x, b)."""
    if key == x:
        return x, None
    p = g.producer(key)
    if p is not None and p.op == "Mul":
        for a, c in (p.inputs, p.inputs[::-1]):
            b = g.const(c)
            if b is not None and a == x:
                nodes.append(p)
                return a, b
    return None


def _match_threshold(g: _Graph, node: _Node) -> _KwtaMatch | None:
    """TopK, the k-th value as threshold, a compare, and a mask applied to x."""
    nodes = [node]
    if node.op == "Where":
        cond, a, b = node.inputs
        if _is_zero(g, b) and not _is_zero(g, a):
            x, keep = a, True
        elif _is_zero(g, a) and not _is_zero(g, b):
            x, keep = b, False
        else:
            return None
    elif node.op == "Mul":
        for x, cond in (node.inputs, node.inputs[::-1]):
            root = g.producer(_unwrap(g, cond, ("Cast", "Not"), []))
            if g.const(cond) is None and root is not None and root.op in _COMPARES:
                break
        else:
            return None
        keep = True
    else:
        return None
    while (p := g.producer(cond)) is not None and p.op in ("Cast", "Not"):
        keep ^= p.op == "Not"
        nodes.append(p)
        cond = p.inputs[0]
    cmp = g.producer(cond)
    if cmp is None or cmp.op not in _COMPARES:
        return None
    nodes.append(cmp)
    key_pos, winners = _COMPARES[cmp.op]
    if keep != winners:
        return None
    key, thr = cmp.inputs[key_pos], cmp.inputs[1 - key_pos]
    found = _threshold_source(g, thr, nodes)
    if found is None:
        return None
    topk, j = found
    axis = _topk_axis(g, topk)
    t = topk.inputs[0]
    while t != key:  # the TopK may see a reshaped / transposed view of the key
        p = g.producer(t)
        if p is None or p.op not in _VIEWS or len(nodes) > 40:
            return None
        nodes.append(p)
        t = p.inputs[0]
    src = _key_source(g, key, x, nodes)
    if src is None:
        return None
    m = _KwtaMatch(x=x, out=node.outputs[0], key=key, topk=topk, k=j + 1, axis=axis,
                   nodes=nodes, exact=False)
    return m if _exclusive(g, nodes, m.out) else None


def _match_scatter(g: _Graph, node: _Node) -> _KwtaMatch | None:
    """ScatterElements of the TopK winners into zeros (values, or a mask times x)."""
    nodes = [node]
    mask_x = None
    if node.op == "Mul":
        for x, m in (node.inputs, node.inputs[::-1]):
            p = g.producer(_unwrap(g, m, ("Cast",), []))
            if p is not None and p.op == "ScatterElements" and g.const(x) is None:
                mask_x = x
                m = _unwrap(g, m, ("Cast",), nodes)
                node = p
                nodes.append(p)
                break
        else:
            return None
    elif node.op != "ScatterElements":
        return None
    data, idx, upd = node.inputs[:3]
    if node.attrs.get("reduction", b"none") not in (b"none", "none") or not _is_zero(g, data):
        return None
    topk = g.producer(idx)
    if topk is None or topk.op != "TopK" or topk.outputs[1] != idx:
        return None
    rank = len(g.shape(data) or ())
    axis = _topk_axis(g, topk)
    if node.attrs.get("axis", 0) % max(rank, 1) != axis:
        return None
    if mask_x is None:
        gat = g.producer(upd)
        if gat is None or gat.op != "GatherElements" or gat.inputs[1] != idx or \
                gat.attrs.get("axis", 0) % rank != axis:
            return None
        x = gat.inputs[0]
        nodes.append(gat)
    else:
        ones = g.const(upd)
        if ones is None or not np.all(ones == 1):
            return None
        x = mask_x
    nodes.append(topk)
    src = _key_source(g, topk.inputs[0], x, nodes)
    k = _topk_k(g, topk)
    if src is None or k is None or g.shape(x) != g.shape(data):
        return None
    m = _KwtaMatch(x=x, out=nodes[0].outputs[0], key=topk.inputs[0], topk=topk, k=k, axis=axis,
                   nodes=nodes, exact=True)
    return m if _exclusive(g, nodes, m.out) else None


def _group_on_x(g: _Graph, m: _KwtaMatch) -> list[int] | None:
    """The axes of x the TopK selects over (mapped back through views of the key)."""
    group = [m.axis]
    t = m.topk.inputs[0]
    while t != m.key:
        view = g.producer(t)
        group = _group_through_view(g, view, group)
        if group is None:
            return None
        t = view.inputs[0]
    return group


def _boost_over_group(g: _Graph, where: str, b: np.ndarray | None, shape: tuple[int, ...],
                      group: list[int]) -> np.ndarray | None:
    """The boost as an array over the group's axes (in x's order), checked positive."""
    if b is None:
        return None
    try:
        ok = np.broadcast_shapes(b.shape, shape) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise g.fail(f"k-WTA {where}: boost of shape {b.shape} does not broadcast to the "
                     f"selected tensor's shape {shape}")
    full = np.broadcast_to(b.astype(np.float64), shape)
    pick = tuple(slice(None) if a in group else 0 for a in range(len(shape)))
    part = full[pick]
    expect = np.broadcast_to(part.reshape([shape[a] if a in group else 1
                                           for a in range(len(shape))]), shape)
    if not np.array_equal(full, expect):
        raise g.fail(f"k-WTA {where}: the boost varies along axes the k-WTA does not select over; "
                     "the IR has one boost per unit (vector) or per channel (map)")
    if not np.all(np.isfinite(part)) or np.any(part <= 0):
        raise g.fail(f"k-WTA {where}: boost factors must be positive, found "
                     f"{float(part.min()):.6g}")
    return part


def _make_kwta(g: _Graph, m: _KwtaMatch) -> None:
    where = f"at TopK {m.topk.name!r}"
    group = _group_on_x(g, m)
    shape = g.shape(m.x)
    if group is None or shape is None or not group or 0 in group:
        raise g.fail(f"k-WTA {where}: cannot tell which axes of {m.x!r} it selects over (the "
                     "TopK runs on a view that mixes the batch or splits an axis)")
    boost_c = next((g.const(i) for n in m.nodes if n.op == "Mul" and m.key in n.outputs
                    for i in n.inputs if g.const(i) is not None), None)
    boost = _boost_over_group(g, where, boost_c, shape, group)
    kwta = _Node(_KWTA, m.topk.name, [m.x], [m.out], dict(
        k=m.k, axes=group, boost=boost, exact=m.exact, onnx_nodes=[n.name for n in m.nodes],
        onnx_in=m.x, onnx_out=m.out), scope=m.topk.scope)
    anchor = max(m.nodes, key=g.nodes.index)
    g.replace(m.nodes, kwta, anchor)


def _kwta_patterns(g: _Graph) -> bool:
    """Replace the first k-WTA pattern found by a KWTA node."""
    for n in g.nodes:
        m = _match_threshold(g, n) or _match_scatter(g, n)
        if m is not None:
            _make_kwta(g, m)
            return True
    return False


def _kwta_views(g: _Graph) -> bool:
    """view -> KWTA -> inverse view becomes KWTA on the view's input."""
    for n in g.nodes:
        if n.op != _KWTA:
            continue
        pin = g.producer(n.inputs[0])
        readers = g.consumers(n.outputs[0])
        if pin is None or pin.op not in _VIEWS or g.uses(n.inputs[0]) != 1 or \
                len(readers) != 1 or g.uses(n.outputs[0]) != 1:
            continue
        pout = readers[0]
        src = pin.inputs[0]
        if pout.op not in _VIEWS or g.shape(pout.outputs[0]) != g.shape(src) or \
                (pin.op == "Transpose") != (pout.op == "Transpose"):
            continue
        if pin.op == "Transpose":
            rank = len(g.shape(src))
            p1 = list(pin.attrs.get("perm", range(rank)[::-1]))
            p2 = list(pout.attrs.get("perm", range(rank)[::-1]))
            if [p1[i] for i in p2] != list(range(rank)):
                continue
        group = _group_through_view(g, pin, n.attrs["axes"])
        if not group or 0 in group:
            continue
        boost = n.attrs["boost"]
        if boost is not None:
            if pin.op == "Transpose":
                src_axes = [p1[a] for a in n.attrs["axes"]]
                boost = np.transpose(boost, np.argsort(src_axes))
            else:
                boost = boost.reshape([g.shape(src)[a] for a in group])
        n.attrs.update(axes=group, boost=boost, onnx_in=src, onnx_out=pout.outputs[0])
        n.attrs["onnx_nodes"] += [pin.name, pout.name]
        n.inputs, n.outputs = [src], [pout.outputs[0]]
        g.remove(pin, pout)
        return True
    return False


_REWRITES: tuple[Callable[[_Graph], bool], ...] = (
    _drop_noops, _merge_duplicates, _canonical_layers, _kwta_patterns, _kwta_views,
    _cancel_transposes, _fold_affine, _fuse_relu, _hoist_relu)


def _rewrite(g: _Graph) -> None:
    """Apply the rewrites, the first that changes something each time, to a fixed point."""
    for _ in range(_MAX_REWRITES):
        if not any(r(g) for r in _REWRITES):
            return
    raise g.fail("the graph rewrites did not settle (an internal error)")


# --------------------------------------------------------------------------
# Lowering to IR steps


@dataclass(eq=False)
class _Step:
    """One IR layer before quantization, in the IR's layout, with float parameters."""

    kind: str  # conv | linear | pool | local_kwta | global_kwta | flatten
    name: str
    node: _Node | None = None
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
    channels: int = 0  # of the map a flatten flattens
    scale_names: list[str] = field(default_factory=list)
    onnx_nodes: list[str] = field(default_factory=list)
    onnx_in: str = ""
    onnx_out: str = ""


def _chain(g: _Graph) -> list[_Node]:
    """The nodes from input to output, which must form one straight chain."""
    leftover = [n for n in g.nodes if n.op not in (_LAYER, _KWTA, "MaxPool", "Relu", *_VIEWS)]
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


def _lower(g: _Graph, chain: list[_Node]) -> tuple[list[_Step], dict]:
    """Walk the chain in the IR's layout; return the steps and the output layout facts."""
    shape = g.input_shape
    is_map = len(shape) == 4
    order: tuple[str, ...] = ("C", "H", "W")
    dims = dict(zip(order, shape[1:])) if is_map else {}
    perm = None if is_map else np.arange(shape[1])
    steps: list[_Step] = []

    def need_map(n: _Node, what: str) -> None:
        if not is_map:
            raise g.fail(f"{what} {n.name!r} needs a feature map, but its input is a vector")
        if order != ("C", "H", "W"):
            raise g.fail(f"{what} {n.name!r} reads a map in {''.join(order)} order; it must be "
                         "NCHW (transpose back before it)")

    for n in chain:
        before = len(steps)
        a = n.attrs
        out_shape = g.shape(n.outputs[0])
        if n.op == _LAYER and a["kind"] == "conv":
            need_map(n, "Conv")
            w = a["weight"]
            if w.shape[1] != dims["C"]:
                raise g.fail(f"Conv {n.name!r}: weight has {w.shape[1]} input channels, the "
                             f"input has {dims['C']}")
            steps.append(_Step("conv", n.name, n, w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1),
                               a["bias"], a["w_scale"], a["relu"], a["kernel"], a["stride"],
                               a["padding"]))
            dims = dict(zip(order, out_shape[1:]))
        elif n.op == _LAYER:
            if is_map:
                raise g.fail(f"linear layer {n.name!r} reads a feature map; flatten it first")
            w = a["weight"]
            if w.shape[1] != len(perm):
                raise g.fail(f"linear layer {n.name!r}: weight has {w.shape[1]} inputs, the "
                             f"input vector has {len(perm)}")
            steps.append(_Step("linear", n.name, n, w[:, perm], a["bias"], a["w_scale"], a["relu"]))
            perm = np.arange(w.shape[0])
        elif n.op == "MaxPool":
            need_map(n, "MaxPool")
            kernel = tuple(int(v) for v in a["kernel_shape"])
            stride = tuple(int(v) for v in a.get("strides", [1, 1]))
            problems = _attribute_problems(n.op, a, None, n.outputs)
            if problems:
                raise g.fail(f"MaxPool {n.name!r} has {' and '.join(problems)}")
            if a.get("ceil_mode", 0) and any((d - k) % s for d, k, s in
                                             zip((dims["H"], dims["W"]), kernel, stride)):
                raise g.fail(f"MaxPool {n.name!r} has ceil_mode=1 on a {dims['H']}x{dims['W']} "
                             f"map that the {kernel} window does not tile; only floor mode")
            steps.append(_Step("pool", n.name, n, kernel=kernel, stride=stride))
            dims = dict(zip(order, out_shape[1:]))
        elif n.op == _KWTA:
            steps.append(_kwta_step(g, n, is_map, order, dims, perm))
        elif n.op in ("Flatten", "Reshape"):
            if len(out_shape) != 2:
                raise g.fail(f"{n.op} {n.name!r} makes shape {list(out_shape)}; only flattening "
                             "a map to [batch, C*H*W] is supported outside a k-WTA")
            if is_map:
                perm = _flatten_perm(dims, order)
                steps.append(_Step("flatten", n.name, n, channels=dims["C"]))
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
    return _kwta_before_flatten(steps), layout


def _kwta_before_flatten(steps: list[_Step]) -> list[_Step]:
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
        out[i], out[i + 1] = kwta, flat
    return out


def _annotate(step: _Step, n: _Node) -> None:
    step.onnx_nodes = list(n.attrs.get("onnx_nodes", [n.name]))
    step.scale_names = list(n.attrs.get("scale_names", [])) + [n.outputs[0]]
    step.onnx_in = n.attrs.get("onnx_in", n.inputs[0])
    step.onnx_out = n.outputs[0]


def _kwta_step(g: _Graph, n: _Node, is_map: bool, order: tuple[str, ...], dims: dict,
               perm: np.ndarray | None) -> _Step:
    a = n.attrs
    where = f"k-WTA {n.name!r}"
    boost = a["boost"]
    if not is_map:
        if a["axes"] != [1]:
            raise g.fail(f"{where} selects over axes {a['axes']} of a vector")
        return _Step("global_kwta", n.name, n, k=a["k"], exact=a["exact"],
                     boost=None if boost is None else boost.ravel()[perm])
    letters = [order[ax - 1] for ax in a["axes"]]
    if letters == ["C"] or (sorted(letters) == ["C", "H", "W"]):
        local = letters == ["C"]
        if boost is not None and not local:  # over (order) axes -> per channel
            full = boost.reshape([dims[x] for x in order])
            by_c = np.moveaxis(full, order.index("C"), 0).reshape(dims["C"], -1)
            if np.any(by_c != by_c[:, :1]):
                raise g.fail(f"{where}: a global k-WTA over a map needs one boost per channel; "
                             "this boost varies across positions")
            boost = by_c[:, 0]
        return _Step("local_kwta" if local else "global_kwta", n.name, n, k=a["k"],
                     exact=a["exact"], boost=None if boost is None else boost.ravel())
    raise g.fail(f"{where} selects over the {'/'.join(letters)} axes of a map; the IR selects "
                 "over the channels at each position (local) or over the whole map (global)")


# --------------------------------------------------------------------------
# Float pass (calibration) and quantization


def _conv_float(x: np.ndarray, s: _Step) -> np.ndarray:
    from numpy.lib.stride_tricks import sliding_window_view
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = s.kernel, s.stride, s.padding
    x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]  # B,Ho,Wo,C,kh,kw
    cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(*win.shape[:3], -1)
    return cols @ s.weight.T + s.bias


def _kwta_float(x: np.ndarray, k: int, boost: np.ndarray | None) -> np.ndarray:
    """Threshold-form k-WTA over the last axis: ties at the k-th value are kept."""
    key = x if boost is None else x * boost
    thr = -np.partition(-key, k - 1, axis=-1)[..., k - 1:k]
    return np.where(key >= thr, x, 0.0)


def _float_step(s: _Step, x: np.ndarray) -> np.ndarray:
    if s.kind in ("conv", "linear"):
        y = _conv_float(x, s) if s.kind == "conv" else x @ s.weight.T + s.bias
        return np.maximum(y, 0) if s.relu else y
    if s.kind == "pool":
        (kh, kw), (sh, sw) = s.kernel, s.stride
        b, h, w, c = x.shape
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
        x = x[:, :ho * sh, :wo * sw].reshape(b, ho, sh, wo, sw, c)
        return x[:, :, :kh, :, :kw].max(axis=(2, 4))
    if s.kind == "local_kwta":
        return _kwta_float(x, s.k, s.boost)
    if s.kind == "global_kwta":
        boost = None if s.boost is None else np.tile(s.boost, x[0].size // s.boost.size)
        return _kwta_float(x.reshape(len(x), -1), s.k, boost).reshape(x.shape)
    return x.reshape(len(x), -1)  # flatten


def _float_maxima(steps: list[_Step], x: np.ndarray, chunk: int = 64) -> list[float]:
    """max |y| of every step's float output over a batch (in the IR layout)."""
    peaks = [0.0] * len(steps)
    for start in range(0, len(x), chunk):
        y = x[start:start + chunk].astype(np.float64)
        for i, s in enumerate(steps):
            y = _float_step(s, y)
            peaks[i] = max(peaks[i], float(np.abs(y).max(initial=0.0)))
    return peaks


def _ir_layout(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def _check_calibration(g: _Graph, calibration: Any) -> np.ndarray:
    want = g.input_shape[1:]
    expect = f"float32 [N, {', '.join(map(str, want))}]"
    if not isinstance(calibration, np.ndarray):
        raise g.fail(f"calibration must be a numpy array {expect}, got "
                     f"{type(calibration).__name__}")
    if calibration.dtype.kind != "f" or calibration.ndim != len(want) + 1 or \
            tuple(calibration.shape[1:]) != want or len(calibration) < 1:
        raise g.fail(f"calibration data must be {expect} (the model input without its batch "
                     f"dimension, N >= 1), got {calibration.dtype} {list(calibration.shape)}")
    if not np.all(np.isfinite(calibration)):
        raise g.fail("calibration data holds NaN or infinite values")
    return calibration


def _scale_from_peak(peak: float) -> float:
    return peak / 127 if peak > 0 else 1.0


def _qdq_scale(g: _Graph, steps: list[_Step], i: int) -> float | None:
    """Scale of step i's output in a QDQ model: its own tensors, then scale-keeping successors."""
    for name in reversed(steps[i].scale_names):
        if name in g.act_scale:
            return g.act_scale[name]
    for s in steps[i + 1:]:
        if s.kind in ("conv", "linear"):
            break
        for name in reversed(s.scale_names):
            if name in g.act_scale:
                return g.act_scale[name]
    return None


def _quantize_layer(g: _Graph, s: _Step, s_in: float, s_out: float | None) -> dict:
    """int8 weights, int32 bias, accumulator scales and requantization of one layer."""
    w = s.weight
    if s.w_scale is not None:
        w_scale = s.w_scale
    else:
        peak = np.abs(w).max(axis=1)
        w_scale = np.where(peak > 0, peak / 127, 1.0)
    wq = np.clip(np.rint(w / w_scale[:, None]), -128, 127).astype(np.int8)
    acc_scale = s_in * w_scale
    bq = np.rint(s.bias / acc_scale)
    if np.any(np.abs(bq) >= 2**31):
        raise g.fail(f"layer {s.name!r}: bias {float(np.abs(s.bias).max()):.6g} does not fit "
                     f"int32 at the accumulator scale {float(acc_scale.min()):.3g}")
    rq = None
    if s_out is not None:
        try:
            rq = requant_for_range(acc_scale / s_out, relu=s.relu)
        except ValueError as e:
            raise g.fail(f"layer {s.name!r}: cannot requantize ({e})") from None
    return dict(weights=wq, bias=bq.astype(np.int32), acc_scale=acc_scale, requant=rq)


# --------------------------------------------------------------------------
# Names, packing, adapters


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name).strip("._") or "layer"


_STEP_WORDS = {"conv": "conv", "linear": "linear", "pool": "pool", "local_kwta": "kwta",
               "global_kwta": "kwta", "flatten": "flatten"}


def _weight_module(name: str) -> str:
    """``fc1.weight`` (or its QDQ forms ``fc1.weight_quantized`` ...) -> ``fc1``."""
    name = re.sub(r"(_DequantizeLinear_Output|_quantized|_dequantized)$", "", name)
    return name[:-len(".weight")] if name.endswith(".weight") else ""


def _name_steps(steps: list[_Step]) -> None:
    """IR layer names from the PyTorch module paths (weight names, exporter scopes)."""
    scopes = [_weight_module(s.node.attrs.get("weight_name", "")) or s.node.scope
              for s in steps]
    taken: set[str] = set()
    for s, scope in zip(steps, scopes):
        word = _STEP_WORDS[s.kind]
        container = any(o != scope and o.startswith(scope + ".") for o in scopes)
        base = _clean(f"{scope}.{word}" if scope and container else scope or word)
        name, i = base, 2
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        s.name = name


def _kernels_for(g: _Graph, steps: list[_Step], kernels_per_overlay: dict | None,
                 mode: str) -> dict[str, int | None]:
    layers = [s for s in steps if s.kind in ("conv", "linear")]
    if mode == "dense":
        if kernels_per_overlay:
            raise g.fail("kernels_per_overlay does not apply to mode 'dense', which keeps every "
                         "weight with one kernel per overlay")
        return {s.name: 1 for s in layers}
    chosen: dict[str, int | None] = {s.name: None for s in layers}
    for key, k in (kernels_per_overlay or {}).items():
        hit = [s for s in layers if key == s.name or key in s.onnx_nodes]
        if not hit:
            raise g.fail(f"kernels_per_overlay names {key!r}, which is not a layer; the "
                         f"layers are {', '.join(s.name for s in layers)}")
        for s in hit:
            chosen[s.name] = k
    return chosen


def _with_adapters(layers: list[ir.Layer], mode: str) -> list[ir.Layer]:
    """ZeroSkip before a dense-fed overlay layer (sparse-sparse); Densify after a k-WTA
    feeding one (sparse-weights, dense)."""
    overlay = (ir.OverlayConv, ir.OverlayLinear)
    out: list[ir.Layer] = []
    fmt = "dense"
    for i, layer in enumerate(layers):
        if mode == "sparse-sparse" and isinstance(layer, overlay) and fmt == "dense":
            out.append(ir.ZeroSkip(f"{layer.name}.zero_skip"))
            fmt = "sparse"
        out.append(layer)
        fmt = layer.output_format(fmt)
        if mode != "sparse-sparse" and isinstance(layer, (ir.LocalKWTA, ir.GlobalKWTA)):
            nxt = next((x for x in layers[i + 1:] if not isinstance(x, (ir.MaxPool, ir.Flatten))),
                       None)
            if isinstance(nxt, overlay):
                out.append(ir.Densify(f"{layer.name}.densify"))
                fmt = "dense"
    return out


# --------------------------------------------------------------------------
# The entry point


def import_onnx(path: str | os.PathLike, *, calibration: np.ndarray | None = None,
                mode: str = "sparse-sparse", kernels_per_overlay: dict[str, int] | None = None,
                name: str | None = None) -> ir.Network:
    """Import an ONNX model (float or QDQ) as a quantized, packed :class:`~.ir.Network`.

    Parameters
    ----------
    path : path-like
        The ``.onnx`` file. External data is read only from files in the
        model's own folder.
    calibration : ndarray of float32, shape (N, *input shape), optional
        Sample inputs (the model's input shape without the batch). Needed for
        a float model: each layer's activation scale is ``max|y| / 127`` of
        its float output over these samples. A QDQ model takes its scales
        from the model; calibration then only fills scales it lacks.
    mode : {"sparse-sparse", "sparse-weights", "dense"}
        ``sparse-sparse``: overlay layers process only non-zero inputs (a
        ``ZeroSkip`` precedes a layer whose input stream is dense, such as
        the network input). ``sparse-weights``: overlay layers process every
        input (a ``Densify`` follows each k-WTA that feeds one). ``dense``:
        as ``sparse-weights``, and every weight, zero or not, is stored
        (one kernel per overlay).
    kernels_per_overlay : dict of str to int, optional
        ``K`` per layer, by IR layer name or ONNX node name; other layers let
        the packer choose.
    name : str, optional
        Network name; the file's stem by default.

    Returns
    -------
    ir.Network
        ``meta`` holds ``source``, ``input_shape``, ``input_layout``
        (``"NCHW"`` or ``"vector"``), ``output_shape``, ``output_layout``,
        ``mode``, ``input_scale``, ``output_scale``, ``quantization``
        (``"qdq"`` or ``"calibration"``), the boost quantization per k-WTA
        and, per IR layer, the ONNX nodes it came from. :func:`to_ir_input`
        and :func:`from_ir_output` convert model-layout arrays.

    Raises
    ------
    FrontendError
        The file is unreadable, uses unsupported operators or attributes,
        points to external data outside its folder, is a float model without
        calibration data, or the calibration data has the wrong shape.
    """
    if mode not in MODES:
        raise FrontendError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    p = Path(path)
    model = _load(p)
    _check_nodes(model, p)  # the fast pass, before reading weights held outside the file
    _attach_data(model, p)
    g = _graph(model, p)
    del model
    _fold_all(g)
    _strip_qdq(g)
    _rewrite(g)
    steps, layout = _lower(g, _chain(g))
    if not any(s.kind in ("conv", "linear") for s in steps):
        raise g.fail("the model has no Conv, Gemm or MatMul layer")
    _name_steps(steps)
    if calibration is not None:
        calibration = _check_calibration(g, calibration)
    net = _build(g, steps, calibration, mode, _kernels_for(g, steps, kernels_per_overlay, mode),
                 name or p.stem)
    net.meta.update(_layout_meta(g, layout, net))
    net.meta["source"] = p.name
    return net


def _overlay_layer(g: _Graph, s: _Step, s_in: float, s_out: float | None, k: int | None,
                   mode: str) -> ir.Layer:
    """Quantize and pack one conv or linear step."""
    q = _quantize_layer(g, s, s_in, s_out)
    try:
        ov = pack(q["weights"], k, dense=mode == "dense")
    except PackError as e:
        raise g.fail(f"layer {s.name!r}: {e}") from None
    common = dict(overlays=ov, bias=q["bias"], requant=q["requant"],
                  out_scale=float(s_out or 1.0),
                  acc_scale=tuple(float(v) for v in q["acc_scale"]))
    if s.kind == "conv":
        return ir.OverlayConv(s.name, kernel=s.kernel, stride=s.stride, padding=s.padding,
                              **common)
    return ir.OverlayLinear(s.name, **common)


def _kwta_layer(s: _Step) -> tuple[ir.Layer, dict]:
    """The IR k-WTA of a step, and how its boost was quantized."""
    boost, info = (None, {"shift": None, "exact": True}) if s.boost is None \
        else quantize_boost(s.boost)
    info = dict(info, k=s.k, onnx_form="gather-scatter" if s.exact else "threshold")
    cls = ir.LocalKWTA if s.kind == "local_kwta" else ir.GlobalKWTA
    return cls(s.name, k=s.k, boost=boost), info


class _Scales:
    """Activation scales: the QDQ model's where it has them, else from calibration."""

    def __init__(self, g: _Graph, steps: list[_Step], calibration: np.ndarray | None):
        self.g, self.steps, self.calibration = g, steps, calibration
        self.qdq = bool(g.act_scale)
        self._peaks: list[float] | None = None

    def input(self) -> float:
        s = self.g.act_scale.get(self.g.input)
        return s or self._calibrated(None, f"the input {self.g.input!r}")

    def output(self, i: int) -> float:
        s = _qdq_scale(self.g, self.steps, i) if self.qdq else None
        return s or self._calibrated(i, f"the output of {self.steps[i].name!r}")

    def _calibrated(self, i: int | None, what: str) -> float:
        g, cal = self.g, self.calibration
        if cal is None:
            why = f"the QDQ model has no scale for {what}" if self.qdq else \
                "the model is a float model"
            raise g.fail(f"{why}; pass calibration data (--calibration X.npy: float32 [N, "
                         f"{', '.join(map(str, g.input_shape[1:]))}] sample inputs) to compute "
                         "activation scales")
        if i is None:
            return _scale_from_peak(float(np.abs(cal).max()))
        if self._peaks is None:
            self._peaks = _float_maxima(self.steps, _ir_layout(cal))
        return _scale_from_peak(self._peaks[i])


def _build(g: _Graph, steps: list[_Step], calibration: np.ndarray | None, mode: str,
           kfor: dict[str, int | None], name: str) -> ir.Network:
    """Quantize and pack the steps into a validated network with its meta facts."""
    scales = _Scales(g, steps, calibration)
    s_in = input_scale = scales.input()
    layers: list[ir.Layer] = []
    kwta: dict[str, dict] = {}
    for i, s in enumerate(steps):
        if s.kind in ("conv", "linear"):
            logits = i == len(steps) - 1 and not s.relu  # int32 accumulators out
            s_out = None if logits else scales.output(i)
            layers.append(_overlay_layer(g, s, s_in, s_out, kfor[s.name], mode))
            s_in = s_out or s_in
        elif s.kind == "pool":
            layers.append(ir.MaxPool(s.name, kernel=s.kernel, stride=s.stride))
        elif s.kind in ("local_kwta", "global_kwta"):
            layer, kwta[s.name] = _kwta_layer(s)
            layers.append(layer)
        else:
            layers.append(ir.Flatten(s.name))
    net = ir.Network(name, ir.TensorSpec(_ir_shape(g.input_shape), "int8", float(input_scale)),
                     _with_adapters(layers, mode))
    try:
        out = net.specs()[-1]
    except ir.ManifestError as e:
        raise g.fail(f"the imported network is not valid: {e}") from None
    net.meta.update(
        mode=mode, input_scale=float(input_scale),
        output_scale=list(out.scale) if isinstance(out.scale, tuple) else out.scale,
        quantization="qdq" if scales.qdq else "calibration", kwta=kwta,
        layers={s.name: {"onnx_nodes": s.onnx_nodes, "onnx_input": s.onnx_in,
                         "onnx_output": s.onnx_out} for s in steps})
    return net


def _ir_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[2], shape[3], shape[1]) if len(shape) == 4 else (shape[1],)


def _layout_meta(g: _Graph, layout: dict, net: ir.Network) -> dict:
    meta = {"input_shape": list(g.input_shape[1:]),
            "input_layout": "NCHW" if len(g.input_shape) == 4 else "vector",
            "output_shape": list(g.shape(g.output)[1:])}
    if layout["is_map"]:
        meta["output_layout"] = "N" + "".join(layout["order"])
    else:
        meta["output_layout"] = "vector"
        if not np.array_equal(layout["perm"], np.arange(len(layout["perm"]))):
            meta["output_permutation"] = [int(v) for v in layout["perm"]]
    return meta


# --------------------------------------------------------------------------
# Converting arrays between the model's layout and the IR's


def to_ir_input(net: ir.Network, x: np.ndarray) -> np.ndarray:
    """Quantize float inputs in the model's layout (``[N, *input_shape]``) to the IR's int8."""
    x = np.asarray(x)
    if net.meta.get("input_layout") == "NCHW":
        x = x.transpose(0, 2, 3, 1)
    return quantize_input(x, net.input.scale)


def from_ir_output(net: ir.Network, y: np.ndarray) -> np.ndarray:
    """Dequantize IR outputs to float32 in the model's layout (``[N, *output_shape]``)."""
    out = net.output
    y = y.astype(np.float64) * np.asarray(out.scale, dtype=np.float64)
    layout = net.meta.get("output_layout", "vector")
    perm = net.meta.get("output_permutation")  # IR element n is the model's perm[n] (last axis)
    if perm is not None:
        z = np.empty_like(y)
        z[..., np.asarray(perm)] = y
        y = z
    if layout != "vector":  # IR (H, W, C) -> the model's order of C, H, W
        order = layout[1:]
        y = y.transpose([0] + [1 + "HWC".index(a) for a in order])
    return y.astype(np.float32)
