"""How parallel each layer's hardware is: :class:`Folding` and :class:`LayerFold`.

A folding is the compiler's decision that :func:`cosparse.compiler.fold.choose_folding`
makes and :func:`cosparse.compiler.lower.lower` turns into units. It is plain data,
saved in ``manifest.json`` as :meth:`Folding.to_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import CosparseError

__all__ = ["Folding", "LayerFold", "FoldingError", "ENGINES"]

#: The engines an overlay layer can have (:attr:`LayerFold.engine`).
ENGINES = ("dsp", "logic")


class FoldingError(CosparseError, ValueError):
    """A folding that cannot be used: the network does not fit the budget even
    with the least parallelism, or a layer's fold does not fit the layer
    (``P`` not dividing ``L``, a dense flatten whose width does not divide the
    channels, ...)."""


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
    engine : str
        An overlay layer's engine: ``"dsp"``, the overlay engine (weights in
        memory, ``R * P`` multipliers), or ``"logic"``, the weights as
        shift-and-add logic (:class:`~cosparse.hw.logic.LogicEngine`: a
        whole receptive field per beat, ``P`` sums per cycle, no multiplier
        and no weight memory; ``R`` is ignored, ``P`` defaults to ``M``).
    """

    entries: int = 1
    lanes_per_beat: int | None = None
    width: int | None = None
    engine: str = "dsp"

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise FoldingError(f"a layer's engine must be one of {', '.join(ENGINES)}, "
                               f"got {self.engine!r}")

    @property
    def in_logic(self) -> bool:
        return self.engine == "logic"


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
    #: Max-pool an overlay layer's accumulators before requantizing them, where a
    #: dense max pool follows it: requantization is monotonic, so the result is the
    #: same, and the requantizer (and what follows) sees a quarter of the positions.
    pool_before_requant: bool = True

    def of(self, name: str) -> LayerFold:
        return self.layers.get(name, LayerFold())

    @property
    def logic_layers(self) -> list[str]:
        """The layers whose weights are logic (:attr:`LayerFold.engine` ``"logic"``)."""
        return [n for n, f in self.layers.items() if f.in_logic]

    def to_dict(self) -> dict:
        return {"input_width": self.input_width, "default_width": self.default_width,
                "default_entries": self.default_entries, "dense_window": self.dense_window,
                "dsp_width": self.dsp_width, "frame_fifos": self.frame_fifos,
                "compact": self.compact, "pool_before_requant": self.pool_before_requant,
                "layers": {n: {"entries": f.entries, "lanes_per_beat": f.lanes_per_beat,
                               "width": f.width, "engine": f.engine}
                           for n, f in self.layers.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Folding":
        return cls(int(d.get("input_width", 1)),
                   {n: LayerFold(int(f.get("entries", 1)), f.get("lanes_per_beat"), f.get("width"),
                                 str(f.get("engine", "dsp")))
                    for n, f in d.get("layers", {}).items()},
                   int(d.get("default_width", 8)), int(d.get("default_entries", 8)),
                   bool(d.get("dense_window", True)), int(d.get("dsp_width", 18)),
                   bool(d.get("frame_fifos", True)), bool(d.get("compact", False)),
                   bool(d.get("pool_before_requant", False)))
