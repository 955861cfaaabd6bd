"""The frontend's working graph: a mutable ONNX graph with folded constants and shapes.

Every pass reads and edits a :class:`Graph` of :class:`Node` objects. Besides
ONNX operators the graph holds two node types of the frontend's own:
``LAYER_OP`` (a Conv or linear layer with float weights, bias and ReLU flag)
and ``KWTA_OP`` (a recognised k-WTA pattern).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CosparseError

__all__ = ["FrontendError", "Graph", "Node", "QInfo", "onnx_module", "short_error", "NEVER_FOLD",
           "VIEWS", "DEFAULT_DOMAINS", "QONNX_DOMAINS", "LAYER_OP", "KWTA_OP", "is_quant"]

#: Operators never evaluated, even on constants.
NEVER_FOLD = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
              "Multinomial", "Bernoulli", "If", "Loop", "Scan"}
#: Operators that only view a tensor in another shape or axis order.
VIEWS = ("Reshape", "Flatten", "Transpose")
#: The ONNX operator domains (the default one, by either name).
DEFAULT_DOMAINS = ("", "ai.onnx")
#: The domains of QONNX's quantization operators (``Quant``), by their names in
#: QONNX, FINN and older Brevitas exports.
QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas", "finn")
#: Operator name of a canonical layer node (Conv or linear).
LAYER_OP = "CosparseLayer"
#: Operator name of a k-WTA node.
KWTA_OP = "CosparseKWTA"


class FrontendError(CosparseError, ValueError):
    """The ONNX model cannot be imported; the message names the file, node(s) and limit."""


def onnx_module():
    """The ``onnx`` package, imported on first use (the IR and the golden model do not need it)."""
    import onnx
    return onnx


def short_error(e: BaseException) -> str:
    """An exception's message on one line, at most 300 characters, for an error message."""
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "") if text else type(e).__name__


@dataclass(eq=False)
class Node:
    """One node of the working graph: an ONNX node, or a canonical layer or k-WTA node."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    scope: str = ""  # the PyTorch module path, when the exporter recorded it


def is_quant(node: "Node") -> bool:
    """Whether ``node`` is QONNX's ``Quant``."""
    return node.op == "Quant" and node.domain in QONNX_DOMAINS


@dataclass
class QInfo:
    """How a constant was dequantized: ``real = (q - zero_point) * scale`` along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    #: The integers' declared range (their type's, or a quantizer's narrower one).
    lo: int = -128
    hi: int = 127


class Graph:
    """A mutable, topologically ordered ONNX graph with folded constants and shapes."""

    def __init__(self, path: Path):
        self.path = path
        self.nodes: list[Node] = []
        self.consts: dict[str, np.ndarray] = {}
        #: A folded constant's source initializer, through quantizers and casts (a weight
        #: ``fc1.weight`` stays named so after its QuantizeLinear/DequantizeLinear).
        self.origin: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.types: dict[str, int] = {}
        self.input = ""
        self.input_shape: tuple[int, ...] = ()
        self.output = ""
        self.opsets: dict[str, int] = {}
        self.ir_version = 8
        self.act_scale: dict[str, float] = {}
        #: The QuantizeLinear output (the model's integer tensor) of each quantized activation.
        self.act_quantized: dict[str, str] = {}
        #: The integer range ``(lo, hi)`` a quantized activation takes (zero point 0).
        self.act_range: dict[str, tuple[int, int]] = {}
        self.qinfo: dict[str, QInfo] = {}
        #: Integer constants' declared ranges where a Clip narrows their type's.
        self.int_range: dict[str, tuple[int, int]] = {}

    # -- queries
    def producer(self, t: str) -> Node | None:
        """The node that makes tensor ``t``, or None (an input or a constant)."""
        return next((n for n in self.nodes if t in n.outputs), None)

    def consumers(self, t: str) -> list[Node]:
        """The nodes that read tensor ``t``."""
        return [n for n in self.nodes if t in n.inputs]

    def uses(self, t: str) -> int:
        """How many node inputs read ``t``, plus one if it is the graph's output."""
        return sum(n.inputs.count(t) for n in self.nodes) + (t == self.output)

    def const(self, t: str) -> np.ndarray | None:
        """The value of ``t`` if it is a constant, else None."""
        return self.consts.get(t)

    def shape(self, t: str) -> tuple[int, ...] | None:
        """The static shape of ``t`` (batch 1), or None if unknown."""
        if t in self.consts:
            return tuple(self.consts[t].shape)
        return self.shapes.get(t)

    # -- edits
    def rewire(self, old: str, new: str) -> None:
        """Make every reader of ``old`` read ``new`` instead."""
        for n in self.nodes:
            n.inputs = [new if x == old else x for x in n.inputs]
        if self.output == old:
            self.output = new
        if old in self.act_scale and new not in self.act_scale:
            self.act_scale[new] = self.act_scale[old]
        for table in (self.act_quantized, self.act_range):
            if old in table and new not in table:
                table[new] = table[old]

    def remove(self, *nodes: Node) -> None:
        """Remove the given nodes (those still in the graph)."""
        for n in nodes:
            if n in self.nodes:
                self.nodes.remove(n)

    def replace(self, old: list[Node], new: Node, at: Node) -> None:
        """Put ``new`` where ``at`` is and remove ``old`` (``at`` included)."""
        self.nodes.insert(self.nodes.index(at), new)
        self.remove(*old)

    def fail(self, msg: str) -> FrontendError:
        """A FrontendError whose message starts with the model's path."""
        return FrontendError(f"{self.path}: {msg}")
