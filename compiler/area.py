# amaranth: UnusedElaboratable=no
"""Area model: the LUTs of every unit of a core, as yosys maps them for ECP5.

The fold keeps a core within the part's LUTs with these estimates, the way
:mod:`cosparse.compiler.perf` keeps its cycles. A LUT here is what nextpnr
counts as one: a LUT4, or half a CCU2C carry cell. The formulas are fitted
to yosys ``synth_ecp5`` counts of each unit alone at the gsc-cs sizes and a
few others (``scripts/synth_units.py``); the logic engine's is exact (its
adders, :meth:`~cosparse.hw.logic.LogicEngine.lut_estimate`). The fitted
figures and their errors are in docs/compiler.md, 'Area model'.

A placed design takes more LUTs than the sum of its units (carry-chain
ends, unpaired LUTs): :data:`PLACEMENT_FACTOR`, measured on a gsc-cs build.
"""

from __future__ import annotations

from cosparse.hw import (adapters, dense_window, kwta, logic, overlay, pool, requant, rescale,
                         reshape, window)
from cosparse.hw.network import NetworkCore

__all__ = ["unit_luts", "core_luts", "PLACEMENT_FACTOR", "LINK_LUTS"]

#: nextpnr's LUTs (TRELLIS_COMB) over the sum of the units' yosys counts, on a
#: gsc-cs build: 90,353 placed against 73,667 (LUT4 + 2 per CCU2C + 2 per LUT RAM).
PLACEMENT_FACTOR = 1.22

#: The board top's host link, UART and loader (LUTs), beside the core.
LINK_LUTS = 2_000


def _engine(c: overlay.OverlayEngine) -> float:
    r, p = c.entries, c.lanes_per_beat
    depth = c.words * (c.lanes // p)
    banks = -(-depth // overlay.WEIGHT_BANK_WORDS)
    muxes = 18 * banks * r * p if banks > 1 else 0  # deep weight memories' bank multiplexers
    if not c.compact and c.passes * c.kernels_per_overlay <= overlay.SMALL_BANK_ROWS:
        # Register banks: 223 per multiplier (the banks' rows, their adders and row
        # selects, the drain's sums), 140 per read port. Fitted on gsc-cs conv1 engines
        # of 32 and 96 multipliers: within 15%.
        return 223 * r * p + 140 * r + 258 + muxes
    # Memory banks: per multiplier one adder, the buffer and valid-bit multiplexers,
    # the forwarded write; the drain's R-bank sums grow with R. Fitted on gsc-cs conv2
    # engines of 8 to 64 multipliers (R = 1 to 8): within 5%; fc1 (R = 1, P = 3, banks
    # in block RAM behind registered reads) 20% under.
    return 121 * r * p + 6.3 * r * r * p + muxes


def unit_luts(c) -> float:
    """Estimated LUTs of one unit (ECP5)."""
    if isinstance(c, logic.LogicEngine):
        return c.lut_estimate()
    if isinstance(c, overlay.OverlayEngine):
        return _engine(c)
    if isinstance(c, kwta.LocalKWTA):
        # the merge array: k cells of (key, index) per lane merged, and the sort in front
        # of it (gsc-cs kwta1, C = 64, k = 8: 2,201, 3,336 and 6,603 LUTs at D = 2, 4
        # and 16); the D = 1 design is an insertion into k cells (733)
        key = 8 + max(1, (c.channels - 1).bit_length())
        return 750 if c.width == 1 else key * c.cells * (14 + 2.8 * c.width)
    if isinstance(c, kwta.GlobalKWTA):  # channel-major ties: a quota counter per channel
        return 600 + 300 * c.width + (25 * c.group if c.tie_order == "channel-major" else 0)
    if isinstance(c, requant.Requantizer):
        # gsc-cs: 1,108 LUTs at D = 2 (conv2), 3,548 at D = 16 (conv1)
        return 760 + 174 * min(c.width, 16) + 30 * max(c.width - 16, 0)
    if isinstance(c, rescale.Rescaler):
        return 150 + 170 * c.width
    if isinstance(c, requant.BiasAdd):
        return 40 + 2 * c.width * c.acc_bits
    if isinstance(c, pool.MaxPool):
        return 150 + 12 * c.width * c.elem_bits
    if isinstance(c, pool.SparseMaxPool):
        return 1_000 + 300 * c.width
    if isinstance(c, adapters.Narrow):
        return 4 * c.width_in * c.elem_shape.width
    if isinstance(c, adapters.ZeroSkip):
        return 300 + 250 * c.entries + 4 * c.width
    if isinstance(c, adapters.Densify):
        return 300 + 250 * c.width
    if isinstance(c, dense_window.DenseWindow):
        return 25 * c.taps * max(c.kernel) + 300
    if isinstance(c, window.SparseWindow):
        return 600 + 40 * c.entries
    if isinstance(c, (reshape.SparseFlatten, reshape.DenseFlatten, adapters.StreamFIFO,
                      adapters.InputOffset, adapters.Widen)):
        return 100
    return 500  # pragma: no cover - every unit the lowering makes is listed above


def core_luts(core: NetworkCore) -> int:
    """Estimated LUTs of a whole core and its board top's host link, as placed."""
    return round((sum(unit_luts(st.component) for st in core.stages) + LINK_LUTS)
                 * PLACEMENT_FACTOR)
