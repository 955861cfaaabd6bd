"""Layouts: the model's tensor layout (NCHW, ONNX flatten order) against the IR's (HWC)."""

from __future__ import annotations

import numpy as np

from .. import ir
from .graph import Graph

__all__ = ["ir_shape", "layout_meta", "to_ir_input", "from_ir_output"]


def ir_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The IR's shape, ``(H, W, C)`` or ``(N,)``, of an ONNX ``[1, C, H, W]`` or ``[1, N]``."""
    return (shape[2], shape[3], shape[1]) if len(shape) == 4 else (shape[1],)


def layout_meta(g: Graph, layout: dict, net: ir.Network) -> dict:
    """The network's meta facts on the model's input and output shapes and layouts."""
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


def to_ir_input(net: ir.Network, x: np.ndarray) -> np.ndarray:
    """Quantize float inputs in the model's layout (``[N, *input_shape]``) to the IR's int8."""
    x = np.asarray(x)
    if net.meta.get("input_layout") == "NCHW":
        x = x.transpose(0, 2, 3, 1)
    lo, hi = net.meta.get("input_range", (-128, 127))
    v = np.clip(np.rint(np.asarray(x, dtype=np.float64) / net.input.scale), lo, hi)
    return v.astype(np.int8 if -128 <= lo and hi <= 127 else np.int16)


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
