"""The supported-operator check: the fast first pass over a model's nodes.

It reads the graph only (no external weight data) and raises one error that
lists every unsupported node and every unsupported attribute of a
recognised one, before any folding, quantization or packing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .graph import DEFAULT_DOMAINS, NEVER_FOLD, QONNX_DOMAINS, FrontendError, onnx_module
from .load import load_model

__all__ = ["SUPPORTED_OPS", "attribute_problems", "check_nodes", "check_supported"]

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
    "Clip": "the range of a quantized tensor (QCDQ: QuantizeLinear -> Clip -> DequantizeLinear)",
    "Quant": "QONNX quantization (2 to 8 bits, rounding ROUND)",
}

#: QONNX and FINN operators the frontend refuses, and why.
REFUSED_QONNX_OPS: dict[str, str] = {
    "BipolarQuant": "binary (bipolar, +1/-1) quantization is not supported; quantize to 2 to 8 "
                    "bits with Quant",
    "Trunc": "truncation (the rescaling after an average pooling) is not supported; the IR has "
             "max pooling only",
    "MultiThreshold": "multi-threshold activations (a FINN streamlining result) are not "
                      "supported; give the model before streamlining (Quant nodes)",
}


def attribute_problems(op: str, a: dict[str, Any], weight: tuple[int, ...] | None,
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
    elif op == "Quant":
        mode = a.get("rounding_mode", b"ROUND")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode.upper() != "ROUND":
            bad.append(f"rounding_mode={mode} (only ROUND: half to even, as QuantizeLinear)")
    return bad


def check_nodes(model, path: Path) -> None:
    """Raise one FrontendError listing every unsupported node and attribute."""
    onnx = onnx_module()
    g = model.graph
    known = {t.name for t in g.initializer}
    dims = {t.name: tuple(t.dims) for t in g.initializer}
    unsupported, attrs = [], []
    for i, node in enumerate(g.node):
        name = node.name or f"{node.op_type}_{i}"
        if node.domain in QONNX_DOMAINS and node.op_type in REFUSED_QONNX_OPS:
            attrs.append(f"{name!r} ({node.op_type}): {REFUSED_QONNX_OPS[node.op_type]}")
            continue
        if node.domain not in DEFAULT_DOMAINS and not (
                node.domain in QONNX_DOMAINS and node.op_type == "Quant"):
            unsupported.append(f"{name!r} ({node.domain}.{node.op_type})")
            continue
        const = node.op_type == "Constant" or node.op_type in ("Shape", "Size") or (
            all(x == "" or x in known for x in node.input) and node.input)
        if const and node.op_type not in NEVER_FOLD:
            known.update(node.output)
            continue
        if node.op_type not in SUPPORTED_OPS:
            unsupported.append(f"{name!r} ({node.op_type})")
            continue
        values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        problems = attribute_problems(node.op_type, values,
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
    check_nodes(load_model(p), p)
