"""Fidelity to a quantized model: the golden model's activations against ONNX Runtime's.

A model that arrives quantized (QDQ, QCDQ) states every activation's
integer value: the output of each activation's ``QuantizeLinear``. The IR
layer made from an ONNX layer should compute the same integers.
:func:`layer_agreement` runs both on the same inputs and reports, per IR
layer, the fraction of elements equal to ONNX Runtime's and the largest
difference, and the share of inputs whose top-1 class agrees.

Each layer is measured twice: chained (the golden model end to end, so a
rare difference early on, a near-tie rounded the other way, can change a
k-WTA's winners and with them many values after it) and alone (the layer
fed ONNX Runtime's own values of its input: what the layer's integer
semantics reproduce).

ONNX Runtime runs the QDQ graph with graph optimizations off by default,
so each operator computes in float between its Q/DQ pairs, as the graph
says; ``optimized=True`` measures the fused integer kernels instead (on
AVX2 machines without VNNI they may saturate: ONNX Runtime's own
``reduce_range`` advice).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import ir
from .errors import CosparseError
from .frontend.layout import from_ir_output, to_ir_input
from ..sim import golden

__all__ = ["FidelityError", "LayerAgreement", "Fidelity", "layer_agreement", "format_table"]


class FidelityError(CosparseError, ValueError):
    """The comparison cannot run: no ONNX Runtime, not a quantized model, bad inputs."""


@dataclass(frozen=True)
class LayerAgreement:
    """One IR layer against the model's quantized tensor.

    ``equal`` is the fraction of elements whose integer value is ONNX
    Runtime's, the golden model run end to end; ``alone`` the same with the
    layer fed ONNX Runtime's values of its input (None where that input is
    not the model's: the layer before had no quantized tensor);
    ``max_diff`` the largest |difference| in integer steps (chained);
    ``tensor`` the model's quantized tensor (None when the layer has none:
    its agreements are then None).
    """

    layer: str
    kind: str
    tensor: str | None
    elements: int
    equal: float | None
    max_diff: int | None
    alone: float | None = None


@dataclass(frozen=True)
class Fidelity:
    """Per-layer agreement and the top-1 agreement of the outputs."""

    layers: list[LayerAgreement]
    top1: float
    inputs: int

    def worst(self) -> float:
        """The lowest per-layer agreement (1.0 when no layer was compared)."""
        vals = [a.equal for a in self.layers if a.equal is not None]
        return min(vals, default=1.0)

    def worst_alone(self) -> float:
        """The lowest agreement of a layer fed ONNX Runtime's input (1.0: none compared)."""
        vals = [a.alone for a in self.layers if a.alone is not None]
        return min(vals, default=1.0)

    def to_dict(self) -> dict:
        return {"inputs": self.inputs, "top1": self.top1, "worst_layer": self.worst(),
                "worst_layer_alone": self.worst_alone(),
                "layers": [a.__dict__ for a in self.layers]}


def _session(model, optimized: bool):
    try:
        import onnxruntime as ort
    except ImportError:
        raise FidelityError("measuring fidelity needs ONNX Runtime: pip install onnxruntime"
                            ) from None
    opts = ort.SessionOptions()
    if not optimized:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _qonnx_as_qcdq(model):
    """A QONNX model's ``Quant`` nodes as ONNX Runtime runs them: a constant's folded into
    its dequantized values, an activation's as ``QuantizeLinear -> Clip ->
    DequantizeLinear`` (the same integers: ``clip(round_half_even(x / s) + z, lo, hi)``).
    Returns the model and, per activation ``Quant``'s output, the tensor of its integers
    (the ``Clip``'s output). A model without ``Quant`` comes back as it is."""
    import onnx
    from onnx import helper, numpy_helper

    from .frontend.graph import QONNX_DOMAINS
    quants = [n for n in model.graph.node if n.op_type == "Quant" and n.domain in QONNX_DOMAINS]
    if not quants:
        return model, {}
    g = model.graph
    ints = {}
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    nodes = []
    for n in g.node:
        if n not in quants:
            nodes.append(n)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if any(t not in consts for t in n.input[1:4]):
            raise FidelityError(f"Quant {n.name!r}: its scale, zero point and bit width must "
                                "be constants")
        scale, zp, bits = (consts[t].astype(np.float64) for t in n.input[1:4])
        b, signed, narrow = int(bits.ravel()[0]), int(attrs.get("signed", 1)), \
            int(attrs.get("narrow", 0))
        lo, hi = ((-(1 << (b - 1)) + narrow, (1 << (b - 1)) - 1) if signed
                  else (0, (1 << b) - 1 - narrow))
        if n.input[0] in consts:  # a weight: fold it
            x = consts[n.input[0]].astype(np.float64)
            q = np.clip(np.rint(x / scale + zp), lo, hi)
            y = ((q - zp) * scale).astype(np.float32)
            g.initializer.append(numpy_helper.from_array(y, n.output[0]))
            consts[n.output[0]] = y
            continue
        if scale.size != 1 or zp.size != 1:
            raise FidelityError(f"Quant {n.name!r}: a per-channel activation quantizer; the "
                                "comparison runs per-tensor activation quantizers")
        dtype = np.int8 if signed else np.uint8
        names = [f"{n.output[0]}__{k}" for k in ("scale", "zp", "lo", "hi", "q", "c")]
        g.initializer.extend([
            numpy_helper.from_array(np.array(scale.ravel()[0], np.float32), names[0]),
            numpy_helper.from_array(np.array(int(zp.ravel()[0]), dtype), names[1]),
            numpy_helper.from_array(np.array(lo, dtype), names[2]),
            numpy_helper.from_array(np.array(hi, dtype), names[3])])
        nodes += [helper.make_node("QuantizeLinear", [n.input[0], names[0], names[1]],
                                   [names[4]]),
                  helper.make_node("Clip", [names[4], names[2], names[3]], [names[5]]),
                  helper.make_node("DequantizeLinear", [names[5], names[0], names[1]],
                                   [n.output[0]])]
        ints[n.output[0]] = names[5]
    del g.node[:]
    g.node.extend(nodes)
    opsets = {o.domain: o for o in model.opset_import}
    if "" in opsets and opsets[""].version < 13:
        opsets[""].version = 13  # Clip on integers
    return onnx.shape_inference.infer_shapes(model), ints


def _to_ir(a: np.ndarray, spec: ir.TensorSpec) -> np.ndarray | None:
    """ONNX Runtime's tensor ``a[B, ...]`` in the IR's layout for ``spec``, or None."""
    shape = spec.shape
    if a.ndim == 4 and len(shape) == 3 and a.shape[1:] == (shape[2], shape[0], shape[1]):
        return a.transpose(0, 2, 3, 1)
    if a.ndim == 2 and len(shape) == 3 and a.shape[1] == int(np.prod(shape)):
        h, w, c = shape  # a map the model holds flattened in CHW order
        return a.reshape(len(a), c, h, w).transpose(0, 2, 3, 1)
    if a.ndim == 2 and len(shape) == 1 and a.shape[1] == shape[0]:
        return a
    return None


def _quantizers(model) -> dict[str, tuple[float, int]]:
    """``(scale, zero point)`` of each QuantizeLinear output (and of a Clip right after
    one) with a constant per-tensor scale."""
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1] in inits and inits[n.input[1]].size == 1:
            zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            out[n.output[0]] = (float(inits[n.input[1]].ravel()[0]),
                                0 if zp is None else int(zp.ravel()[0]))
    for n in model.graph.node:
        if n.op_type == "Clip" and n.input[0] in out:
            out[n.output[0]] = out[n.input[0]]
    return out


def _quantize_logits(acc: np.ndarray, acc_scale, quantizer: tuple[float, int],
                     dtype) -> np.ndarray:
    """int32 accumulators as a QuantizeLinear of their real values (half to even, saturated),
    the zero point subtracted again."""
    scale, zp = quantizer
    info = np.iinfo(dtype)
    real = acc.astype(np.float64) * np.asarray(acc_scale, dtype=np.float64)
    return np.clip(np.rint(real / scale) + zp, info.min, info.max).astype(np.int64) - zp


def layer_agreement(model_path: str | os.PathLike, net: ir.Network, x: np.ndarray, *,
                    optimized: bool = False) -> Fidelity:
    """Compare the golden model on ``net`` with ONNX Runtime on the model it came from.

    Parameters
    ----------
    model_path : path-like
        The quantized ONNX model ``net`` was imported from.
    net : ir.Network
        Its import (``meta["layers"]`` names each layer's quantized tensor).
    x : ndarray of float32, shape (N, *input shape)
        Inputs in the model's layout.
    optimized : bool
        Run ONNX Runtime with its graph optimizations (fused integer
        kernels) instead of the graph's own float-between-QDQ semantics.

    Returns
    -------
    Fidelity

    Raises
    ------
    FidelityError
        ONNX Runtime is missing, the network was not imported from a
        quantized model, or ``x`` is not float inputs of the model's shape.
    """
    import onnx
    if net.meta.get("quantization") != "qdq":
        raise FidelityError(f"network {net.name!r} was not imported from a quantized (QDQ) "
                            "model: its activations have no integer values to compare with")
    want = tuple(net.meta.get("input_shape", ()))
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or x.shape[1:] != want or not len(x):
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
        raise FidelityError(f"inputs must be float [N, {', '.join(map(str, want))}], got {got}")
    model, ints = _qonnx_as_qcdq(onnx.load(str(model_path)))
    g = model.graph
    layer_meta = {name: {k: ints.get(v, v) if k == "onnx_quantized" else v
                         for k, v in m.items()}
                  for name, m in net.meta.get("layers", {}).items()}
    # A layer's quantized tensor, or else its float output (a pool or k-WTA between
    # quantizers keeps its input's grid: its values divided by the scale are integers).
    wanted = [m.get("onnx_quantized") or m.get("onnx_output") for m in layer_meta.values()]
    wanted = [t for t in wanted if t]
    have = {o.name for o in g.output}
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for name in dict.fromkeys(wanted):
        if name not in have:
            g.output.append(onnx.helper.make_tensor_value_info(
                name, types.get(name, onnx.TensorProto.INT8), None))
    sess = _session(model, optimized)
    names = [o.name for o in sess.get_outputs()]
    inp = sess.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else len(x)  # a model of batch 1
    runs = [sess.run(None, {inp.name: x[i:i + batch].astype(np.float32)})
            for i in range(0, len(x), batch)]
    got = {name: np.concatenate([r[j] for r in runs]) for j, name in enumerate(names)}
    trace = golden.run(net, to_ir_input(net, x), trace=True).outputs
    specs = net.specs()
    quantizers = _quantizers(model)
    rows = []
    feed, fed = to_ir_input(net, x), True  # a layer's input, and whether it is the model's
    for i, layer in enumerate(net.layers):
        alone_y = golden.run_layer(layer, feed)
        if isinstance(layer, (ir.ZeroSkip, ir.Densify, ir.Flatten)):
            feed = alone_y
            continue  # the previous layer's values, in another stream or shape
        lm = layer_meta.get(layer.name, {})
        tensor = lm.get("onnx_quantized")
        ref = None
        if tensor is not None:
            zp = quantizers.get(tensor, (1.0, 0))[1]
            ref = _to_ir(got[tensor].astype(np.int64) - zp, specs[i + 1])
        elif lm.get("onnx_output") in got and specs[i + 1].activation:
            tensor = lm["onnx_output"]
            grid = got[tensor] / np.float64(specs[i + 1].scale)
            if np.abs(grid - np.rint(grid)).max(initial=0) < 1e-3:  # on the grid
                ref = _to_ir(np.rint(grid).astype(np.int64), specs[i + 1])
        y = trace[i]
        if ref is not None and y.dtype == np.int32 and tensor in quantizers:
            # int32 logits: quantized as the model's QuantizeLinear does
            y, alone_y = (_quantize_logits(v, specs[i + 1].scale, quantizers[tensor],
                                           got[tensor].dtype) for v in (y, alone_y))
        if ref is None:
            rows.append(LayerAgreement(layer.name, layer.kind, None, y[0].size, None, None))
            feed, fed = alone_y, False
            continue
        diff = np.abs(y.astype(np.int64) - ref.astype(np.int64))
        alone = float((alone_y.astype(np.int64) == ref).mean()) if fed else None
        rows.append(LayerAgreement(layer.name, layer.kind, tensor, y[0].size,
                                   float((diff == 0).mean()), int(diff.max(initial=0)), alone))
        feed, fed = ref.astype(trace[i].dtype), True
    ort_out = got[g.output[0].name].reshape(len(x), -1)
    gold = from_ir_output(net, trace[-1]).reshape(len(x), -1)
    out_q = layer_meta.get(net.layers[-1].name, {}).get("onnx_quantized")
    if trace[-1].dtype == np.int32 and out_q in quantizers:  # the logits as the model has them
        gold = _quantize_logits(gold, 1.0, quantizers[out_q], got[out_q].dtype)
    top1 = float((gold.argmax(1) == ort_out.argmax(1)).mean()) \
        if ort_out.shape[1] == gold.shape[1] else float("nan")
    return Fidelity(rows, top1, len(x))


def format_table(f: Fidelity) -> str:
    """The per-layer agreement as a markdown table."""
    lines = ["| layer | kind | elements | equal to ONNX Runtime (chained) | max diff "
             "| equal, fed ONNX Runtime's input |",
             "|---|---|---:|---:|---:|---:|"]
    for a in f.layers:
        eq = "not compared" if a.equal is None else f"{100 * a.equal:.3f}%"
        md = "" if a.max_diff is None else str(a.max_diff)
        al = "" if a.alone is None else f"{100 * a.alone:.3f}%"
        lines.append(f"| {a.layer} | {a.kind} | {a.elements:,} | {eq} | {md} | {al} |")
    lines.append(f"\ntop-1 agreement: {100 * f.top1:.2f}% of {f.inputs:,} inputs")
    return "\n".join(lines)
