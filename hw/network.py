"""The network core: a pipeline of units connected by streams.

Every stage is a unit of this library with a dense or sparse stream in
(``i``) and out (``o``); all run concurrently (a dataflow pipeline: the
slowest stage sets the interval between inferences). Which units a network
needs, and how wide each is, is the compiler's lowering
(:func:`cosparse.compiler.lower.lower`).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Module, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .loader import LoadDecoder, load_bus_signature
from .streams import dense_layout
from .util import check_int

__all__ = ["NetworkCore", "Stage"]


@dataclass
class Stage:
    """One unit of the pipeline, for reports and the performance model."""

    layer: str  # IR layer name ("" for an adapter the lowering added)
    unit: str  # class name
    component: wiring.Component


class NetworkCore(wiring.Component):
    """The accelerator core: stages chained input to output.

    Parameters
    ----------
    stages : list of Stage
        The units in pipeline order; each one's ``o`` must match the next
        one's ``i``.
    input_width : int
        Elements per beat of the int8 input stream.
    out_width : int
        Elements per beat of the output stream (the last stage's).
    out_bits : int
        Bits of an output element: 8, or 32 for int32 logits.
    patch_seed : int or None
        Seeds the placeholder contents of loadable block-RAM memories (one
        seed per memory, counting up), for a bitstream whose memories are
        patched later.

    Members
    -------
    i : In(stream.Signature(dense_layout(input_width)))
        The int8 input frame, ``(H, W, C)`` positions in raster order (or one
        vector group).
    o : Out(stream.Signature(dense_layout(out_width, signed(out_bits))))
        The output frame, dense.
    load : In(load_bus_signature(...))
        With loadable units: the host loader's writes, a word for the memory
        numbered ``target`` (an index of ``load_ports``), decoded by a
        :class:`~cosparse.hw.loader.LoadDecoder`.
    load_ports : list of LoadPort
        The units' loadable memories, in target order; named
        ``s<k>_<unit>.<memory>`` like the memory images.
    """

    def __init__(self, stages: list[Stage], *, input_width: int, out_width: int,
                 out_bits: int, patch_seed: int | None = None):
        check_int("input_width", input_width, 1)
        check_int("out_width", out_width, 1)
        if out_bits not in (8, 16, 32):
            raise ValueError(f"out_bits must be 8, 16 or 32, not {out_bits!r}")
        if not stages:
            raise ValueError("a network core needs at least one stage")
        self.stages = list(stages)
        # The host loader's targets, named as the memory images are (stage path . memory),
        # numbered in pipeline order: the load bus's target numbers.
        self.load_ports = []
        self._load_units = []
        for k, st in enumerate(self.stages):
            for port in getattr(st.component, "load_ports", []):
                port.name = f"s{k}_{st.unit.lower()}.{port.name}"
                if patch_seed is not None and port.has_init:
                    port.patch_seed = patch_seed + len(self.load_ports)
                self.load_ports.append(port)
                self._load_units.append(st.component)
        self.input_width = input_width
        self.out_width = out_width
        self.out_bits = out_bits
        self.in_layout = dense_layout(input_width)
        self.out_layout = dense_layout(out_width, signed(out_bits))
        members = {"i": In(stream.Signature(self.in_layout)),
                   "o": Out(stream.Signature(self.out_layout))}
        if self.load_ports:
            members["load"] = In(load_bus_signature(max(p.width for p in self.load_ports)))
        super().__init__(members)

    @property
    def dsp_products(self) -> int:
        """Multipliers of every unit: engines, requantizers, boosted k-WTA keys."""
        return sum(getattr(st.component, "dsps", 0) for st in self.stages)

    def elaborate(self, platform):
        m = Module()
        prev = wiring.flipped(self.i)
        for k, st in enumerate(self.stages):
            m.submodules[f"s{k}_{st.unit.lower()}"] = st.component
            wiring.connect(m, prev, st.component.i)
            prev = st.component.o
        wiring.connect(m, prev, wiring.flipped(self.o))
        if self.load_ports:
            m.submodules.loader = dec = LoadDecoder([p.width for p in self.load_ports])
            wiring.connect(m, wiring.flipped(self.load), dec.bus)
            for t, (port, unit) in enumerate(zip(self.load_ports, self._load_units)):
                wiring.connect(m, getattr(dec, f"t{t}"), getattr(unit, port.member))
        return m
