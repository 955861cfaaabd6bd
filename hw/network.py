"""The network core: one pipeline stage per IR layer, wired by streams.

:class:`NetworkCore` turns a compiled :class:`~cosparse.compiler.ir.Network`
and a :class:`Folding` into hardware: every layer becomes one or a few units
of this library, connected by ``amaranth.lib.stream`` interfaces, all
running concurrently (a dataflow pipeline: the slowest stage sets the
interval between inferences).

Layer to units
--------------
=================  =========================================================
IR layer           units (input format -> output format)
=================  =========================================================
OverlayConv        sparse: SparseWindow -> OverlayEngine [-> Narrow] -> Requantizer
                   (dense input: ZeroSkip(keep_zeros) first, so every input
                   element is processed: the dense baselines). A dense map
                   whose positions are one beat (a first layer: few
                   channels) takes DenseWindow -> ZeroSkip instead: a whole
                   receptive field per cycle, packed R entries per beat (an
                   IR ZeroSkip right before the conv is done by that
                   ZeroSkip; without one, zeros are kept)
OverlayLinear      sparse vector: OverlayEngine [-> Narrow] -> Requantizer; the last
                   layer without requantization: OverlayEngine -> BiasAdd
MaxPool            dense: MaxPool; sparse: SparseMaxPool
LocalKWTA          dense: LocalKWTA (a sparse input is densified first)
GlobalKWTA         dense: StreamFIFO (one input frame), GlobalKWTA (group = C for
                   a map, N for a vector), StreamFIFO (one frame's winners)
Flatten            sparse: SparseFlatten; dense: DenseFlatten
ZeroSkip/Densify   the adapters of the same names
=================  =========================================================

A network whose last stream is sparse gets a final Densify, so the output
port is always dense: ``ceil(G / D)`` beats per group of the output spec.

Widths
------
Sparse streams carry ``R`` entries per beat, set by the overlay layer that
consumes them (its ``entries``), back through pooling, flatten and window
stages to the unit that makes them (a k-WTA or a zero-skip). Dense streams
carry ``D`` elements per beat, set by the unit that makes them: the input
port's width, an engine's ``P`` or its layer's ``Q`` (a narrower requantizer;
kept by pooling), a densify's width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from amaranth.hdl import Module, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from cosparse.compiler import ir
from cosparse.compiler.packer import engine_parameters

from .adapters import Densify, Narrow, StreamFIFO, ZeroSkip
from .dense_window import DenseWindow
from .kwta import GlobalKWTA, LocalKWTA
from .overlay import OverlayEngine
from .pool import MaxPool, SparseMaxPool
from .requant import BiasAdd, Requantizer
from .reshape import DenseFlatten, SparseFlatten
from .streams import dense_layout
from .window import SparseWindow

__all__ = ["LayerFold", "Folding", "NetworkCore", "Stage", "FoldError", "spram_weight_layers"]


class FoldError(ValueError):
    """A folding that the network's layers cannot use."""


@dataclass(frozen=True)
class LayerFold:
    """Parallelism of one layer.

    Attributes
    ----------
    entries : int
        ``R``: active inputs per beat into an overlay layer (its weight
        memory read ports); ignored elsewhere.
    lanes_per_beat : int or None
        ``P``: lanes per pass of an overlay layer (divides ``L``; None: all).
    width : int or None
        ``D`` of the dense stream a densify or zero-skip layer makes (None:
        the default width). For an overlay layer: ``Q``, the lanes of its
        requantizer (or bias add) and of the dense stream after it; it
        divides ``P`` (None: ``P``). A :class:`~cosparse.hw.adapters.Narrow`
        between the engine and the requantizer turns the engine's bursts
        of ``P`` sums into ``Q`` per cycle: fewer DSP products where the
        average rate is enough.
    """

    entries: int = 1
    lanes_per_beat: int | None = None
    width: int | None = None


@dataclass
class Folding:
    """Parallelism of a whole network: the input width and per-layer folds."""

    input_width: int = 1
    layers: dict[str, LayerFold] = field(default_factory=dict)
    #: Width of dense streams made by adapters the core adds itself.
    default_width: int = 8
    #: Entries of sparse streams no overlay layer consumes (e.g. the output).
    default_entries: int = 8
    #: Let a first conv on a dense map take a whole receptive field per cycle
    #: (:class:`DenseWindow`); off, it takes the small zero-skip + sparse window path.
    dense_window: bool = True
    #: Signed multiplier width of the part's DSP blocks (18 ECP5/Xilinx, 16 iCE40):
    #: how requantizers split their products.
    dsp_width: int = 18
    #: One-frame FIFOs around each global k-WTA (so no stage waits on another); off
    #: for the smallest parts, where their block RAM is needed more than the overlap.
    frame_fifos: bool = True
    #: Area before speed where a unit offers both (the serial global k-WTA): the
    #: smallest parts.
    compact: bool = False

    def of(self, name: str) -> LayerFold:
        return self.layers.get(name, LayerFold())

    def to_dict(self) -> dict:
        return {"input_width": self.input_width, "default_width": self.default_width,
                "default_entries": self.default_entries, "dense_window": self.dense_window,
                "dsp_width": self.dsp_width, "frame_fifos": self.frame_fifos,
                "compact": self.compact,
                "layers": {n: {"entries": f.entries, "lanes_per_beat": f.lanes_per_beat,
                               "width": f.width} for n, f in self.layers.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Folding":
        return cls(int(d.get("input_width", 1)),
                   {n: LayerFold(int(f.get("entries", 1)), f.get("lanes_per_beat"), f.get("width"))
                    for n, f in d.get("layers", {}).items()},
                   int(d.get("default_width", 8)), int(d.get("default_entries", 8)),
                   bool(d.get("dense_window", True)), int(d.get("dsp_width", 18)),
                   bool(d.get("frame_fifos", True)), bool(d.get("compact", False)))


@dataclass
class Stage:
    """One unit of the pipeline, for reports and the performance model."""

    layer: str  # IR layer name ("" for an adapter the core added)
    unit: str  # class name
    component: wiring.Component


#: Words of one iCE40 SB_SPRAM256KA block (16 bits each).
SPRAM_WORDS = 16384


def spram_weight_layers(net: ir.Network, folding: "Folding", spram_bits: int) -> dict[str, int]:
    """Overlay layers whose weight memory goes to SPRAM, with the blocks each takes.

    A memory qualifies with at least ``spram_bits`` bits, one read port
    (``R`` = 1) and at most :data:`SPRAM_WORDS` words; it takes one block per
    16 bits of width.
    """
    out = {}
    for layer in net.layers:
        if not isinstance(layer, ir.OverlayLayer):
            continue
        ov, f = layer.overlays, folding.of(layer.name)
        p = f.lanes_per_beat or ov.lanes
        width = p * (8 + max(1, (ov.kernels_per_overlay - 1).bit_length()))
        depth = ov.words * (ov.lanes // p)
        if f.entries == 1 and width * depth >= spram_bits and depth <= SPRAM_WORDS:
            out[layer.name] = -(-width // 16)
    return out


def _shape_groups(spec: ir.TensorSpec) -> tuple[int, int]:
    """(groups per frame, elements per group) of a tensor on a stream."""
    if len(spec.shape) == 3:
        h, w, c = spec.shape
        return h * w, c
    return 1, int(np.prod(spec.shape))


class NetworkCore(wiring.Component):
    """The accelerator core of one compiled network.

    Parameters
    ----------
    net : Network
        A compiled network whose overlay layers are in drain order (each
        layer's ``kernel_map[l, j] == j * L + l``; see
        :func:`cosparse.compiler.packer.drain_order`).
    folding : Folding
    loadable : bool
        Give the weight memories write ports for the host loader.
    spram_bits : int or None
        With ``loadable``: weight memories of at least this many bits (and
        one read port) are single-port and start empty, for iCE40 SPRAM; the
        loader fills them.
    patch_seed : int or None
        With ``loadable``: build the block-RAM memories with seeded random
        placeholder contents over whole block RAMs, for a bitstream that is
        patched with the real (or later, new) contents.

    Members
    -------
    i : In(stream.Signature(dense_layout(input_width)))
        The int8 input frame, ``(H, W, C)`` positions in raster order (or one
        vector group).
    o : Out(stream.Signature(dense_layout(D, signed(8 or 32))))
        The output frame, dense; ``signed(32)`` for int32 logits.
    load_ports : list of LoadPort
        With ``loadable``: write access to the weight, row-table and
        requantization memories, for the host loader (see
        :mod:`cosparse.hw.hostlink`); named ``s<k>_<unit>.<memory>`` like the
        memory images.
    stages : list of Stage
        The units in pipeline order.

    Raises
    ------
    FoldError
        A fold does not fit its layer (``P`` not dividing ``L``, a dense
        flatten whose width does not divide the channels, ...).
    """

    def __init__(self, net: ir.Network, folding: Folding | None = None, *,
                 loadable: bool = False, spram_bits: int | None = None,
                 patch_seed: int | None = None):
        folding = folding or Folding()
        specs = net.specs()
        fmts = net.formats()
        self.net, self.folding = net, folding
        self.stages: list[Stage] = []
        entries_in = self._entries_into(net, folding)
        in_spram = (spram_weight_layers(net, folding, spram_bits)
                    if loadable and spram_bits is not None else {})
        fmt, spec = "dense", specs[0]
        width = folding.input_width
        max_active = _shape_groups(spec)[1]
        fused_skip = False  # an IR zero-skip left to the next conv's dense window

        def add(layer: str, comp):
            self.stages.append(Stage(layer, type(comp).__name__, comp))
            return comp

        for i, layer in enumerate(net.layers):
            inp, out = specs[i], specs[i + 1]
            groups, g = _shape_groups(inp)
            r_out = entries_in[i + 1]
            fold = folding.of(layer.name)
            try:
                if isinstance(layer, ir.ZeroSkip):
                    nxt = net.layers[i + 1] if i + 1 < len(net.layers) else None
                    if folding.dense_window and self._dense_window_fits(nxt, inp, width):
                        fused_skip = True  # the conv's dense window skips the zeros itself
                    else:
                        add(layer.name, ZeroSkip(g, width=width, entries=r_out))
                    fmt, max_active = "sparse", g
                elif isinstance(layer, ir.Densify):
                    width = fold.width or folding.default_width
                    add(layer.name, Densify(g, entries=entries_in[i], width=width))
                    fmt, max_active = "dense", g
                elif isinstance(layer, (ir.OverlayConv, ir.OverlayLinear)):
                    r = entries_in[i]
                    windowed = False
                    if isinstance(layer, ir.OverlayConv) and (fmt == "dense" or fused_skip) \
                            and folding.dense_window and self._dense_window_fits(layer, inp, width):
                        # A whole receptive field per cycle, zeros skipped (or kept, for
                        # the dense baselines) into R-entry beats.
                        h, w, c = inp.shape
                        dw = add(layer.name, DenseWindow(h, w, c, kernel=layer.kernel,
                                                         stride=layer.stride,
                                                         padding=layer.padding))
                        add(layer.name, ZeroSkip(dw.taps, width=dw.taps, entries=r,
                                                 keep_zeros=not fused_skip))
                        fused_skip, windowed = False, True
                    elif fmt == "dense":  # process every element: the dense baselines
                        add(layer.name, ZeroSkip(g, width=width, entries=r, keep_zeros=True))
                        max_active = g
                    if isinstance(layer, ir.OverlayConv) and not windowed:
                        h, w, c = inp.shape
                        add(layer.name, SparseWindow(h, w, c, kernel=layer.kernel,
                                                     stride=layer.stride, padding=layer.padding,
                                                     entries=r, max_active=min(max_active, c)))
                    elif isinstance(layer, ir.OverlayLinear) and groups != 1:
                        raise FoldError(f"layer {layer.name}: a linear layer needs a vector input")
                    spram = layer.name in in_spram
                    eng = add(layer.name, OverlayEngine(**engine_parameters(layer.overlays),
                                                        entries=r,
                                                        lanes_per_beat=fold.lanes_per_beat,
                                                        acc_bits=layer.accumulator_bits(),
                                                        loadable=loadable, spram=spram,
                                                        compact=folding.compact))
                    width = eng.lanes_per_beat
                    m = layer.overlays.num_kernels
                    if fold.width is not None and fold.width != width:
                        add(layer.name, Narrow(m, width_in=width, width_out=fold.width,
                                               elem_shape=signed(eng.acc_bits)))
                        width = fold.width
                    if layer.requant is None:
                        add(layer.name, BiasAdd(m, width=width, acc_bits=eng.acc_bits,
                                                bias=[int(v) for v in layer.bias]))
                    else:
                        rq = layer.requant
                        add(layer.name, Requantizer(m, width=width, acc_bits=eng.acc_bits,
                                                    multiplier=[int(v) for v in rq.multiplier],
                                                    shift=[int(v) for v in rq.shift],
                                                    bias=[int(v) for v in layer.bias],
                                                    relu=bool(rq.relu), loadable=loadable,
                                                    dsp_width=folding.dsp_width,
                                                    compact=folding.compact))
                    fmt, max_active = "dense", m
                elif isinstance(layer, ir.MaxPool):
                    h, w, c = inp.shape
                    if fmt == "dense":
                        add(layer.name, MaxPool(h, w, c, kernel=layer.kernel, stride=layer.stride,
                                                width=width))
                    else:
                        add(layer.name, SparseMaxPool(h, w, c, kernel=layer.kernel,
                                                      stride=layer.stride, entries=entries_in[i],
                                                      width=fold.width or folding.default_width))
                        max_active = min(c, max_active * layer.kernel[0] * layer.kernel[1])
                elif isinstance(layer, (ir.LocalKWTA, ir.GlobalKWTA)):
                    if fmt == "sparse":
                        width = fold.width or folding.default_width
                        add("", Densify(g, entries=entries_in[i], width=width))
                    boost = None if layer.boost is None else [int(b) for b in layer.boost]
                    if isinstance(layer, ir.LocalKWTA):
                        add(layer.name, LocalKWTA(g, layer.k, width=width, entries=r_out,
                                                  boost=boost))
                        max_active = layer.k
                    else:
                        # Room for a whole input frame: the upstream keeps working while
                        # the unit scans the previous frame (it writes only between scans).
                        if folding.frame_fifos:
                            add(layer.name, StreamFIFO(dense_layout(width),
                                                       depth=groups * -(-g // width) + 2))
                        gk = add(layer.name, GlobalKWTA(groups * g, layer.k, group=g,
                                                        width=width, entries=r_out, boost=boost,
                                                        serial=folding.compact and width == 1))
                        # Room for a whole frame's winners: the unit never waits for a
                        # slower consumer, so it can take the next frame (see StreamFIFO).
                        if folding.frame_fifos:
                            add(layer.name, StreamFIFO(gk.out_layout,
                                                       depth=groups + -(-layer.k // r_out) + 2))
                        max_active = min(g, layer.k)
                    fmt = "sparse"
                elif isinstance(layer, ir.Flatten):
                    h, w, c = inp.shape
                    if fmt == "sparse":
                        add(layer.name, SparseFlatten(h * w, c, entries=entries_in[i]))
                        max_active = min(h * w * c, max_active * h * w)
                    else:
                        add(layer.name, DenseFlatten(h * w, c, width=width))
                else:  # pragma: no cover - every IR kind is handled above
                    raise FoldError(f"layer {layer.name}: no hardware for kind {layer.kind!r}")
            except ValueError as e:
                if isinstance(e, FoldError):
                    raise
                raise FoldError(f"layer {layer.name} ({layer.kind}): {e}") from None
            assert fmt == fmts[i + 1], (layer.name, fmt, fmts[i + 1])
        out = specs[-1]
        if fmt == "sparse":
            groups, g = _shape_groups(out)
            width = folding.default_width
            add("", Densify(g, entries=entries_in[-1], width=width))
        # The host loader's targets, named as the memory images are (stage path . memory).
        self.load_ports = []
        for k, st in enumerate(self.stages):
            for port in getattr(st.component, "load_ports", []):
                port.name = f"s{k}_{st.unit.lower()}.{port.name}"
                if patch_seed is not None and port.has_init:
                    port.patch_seed = patch_seed + len(self.load_ports)
                self.load_ports.append(port)
        self.out_width = width
        self.out_bits = 32 if out.dtype == "int32" else 8
        self.in_layout = dense_layout(folding.input_width)
        self.out_layout = dense_layout(width, signed(self.out_bits))
        super().__init__({"i": In(stream.Signature(self.in_layout)),
                          "o": Out(stream.Signature(self.out_layout))})

    @staticmethod
    def _dense_window_fits(layer, inp: ir.TensorSpec, width: int) -> bool:
        """A conv on a dense map takes the dense window when a position is one beat and
        a receptive field fits one zero-skip beat (first layers: few channels)."""
        if not isinstance(layer, ir.OverlayConv) or len(inp.shape) != 3:
            return False
        c = inp.shape[2]
        return width == c and layer.kernel[0] * layer.kernel[1] * c <= 256

    @property
    def dsp_products(self) -> int:
        """Multipliers of every unit: engines, requantizers, boosted k-WTA keys."""
        return sum(getattr(st.component, "dsps", 0) for st in self.stages)

    def discard(self) -> None:
        """Mark the core and its units as deliberately unused (built only to be measured)."""
        for obj in [self, *(st.component for st in self.stages)]:
            obj._MustUse__silence = True

    @staticmethod
    def _entries_into(net: ir.Network, folding: Folding) -> list[int]:
        """``R`` of the stream entering each layer (and, last, of the output stream).

        A sparse stream's entries are those of the overlay layer that finally
        consumes it; pooling, flatten and windows keep them; a k-WTA or a
        densify starts a new stream.
        """
        n = len(net.layers)
        r = [folding.default_entries] * (n + 1)
        need = folding.default_entries
        for i in range(n - 1, -1, -1):
            layer = net.layers[i]
            r[i + 1] = need
            if isinstance(layer, (ir.OverlayConv, ir.OverlayLinear)):
                need = folding.of(layer.name).entries
            elif isinstance(layer, (ir.LocalKWTA, ir.GlobalKWTA, ir.ZeroSkip, ir.Densify)):
                need = folding.default_entries  # what enters it is a different stream
        r[0] = need
        return r

    def elaborate(self, platform):
        m = Module()
        prev = wiring.flipped(self.i)
        for k, st in enumerate(self.stages):
            m.submodules[f"s{k}_{st.unit.lower()}"] = st.component
            wiring.connect(m, prev, st.component.i)
            prev = st.component.o
        wiring.connect(m, prev, wiring.flipped(self.o))
        return m
