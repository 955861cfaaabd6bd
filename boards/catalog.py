"""Target boards: the resources the compiler folds a network into.

Each entry is data: the FPGA, its logic and memory, the multipliers the
compiler may spend on overlay engines (the DSP blocks; LUT multipliers come
on top where a board says so) and the core clock it aims for. ``sim`` is the
core alone, for Verilator, with a budget like the largest ECP5's.
"""

from __future__ import annotations

from dataclasses import dataclass

from cosparse.compiler.errors import CosparseError

__all__ = ["Board", "BOARDS", "get_board", "UnknownBoard"]


class UnknownBoard(CosparseError):
    pass


@dataclass(frozen=True)
class Board:
    name: str
    fpga: str
    family: str  # "ice40", "ecp5", "xc7" or "sim"
    luts: int
    dsps: int
    bram_kbit: int
    clock_mhz: float
    #: Multipliers the folding may use (DSPs, plus LUT multipliers where budgeted).
    multipliers: int
    notes: str = ""
    #: The board's oscillator; a PLL makes ``clock_mhz`` from it when they differ.
    osc_mhz: float = 0.0
    #: iCE40 UltraPlus single-port RAM (kbit), which has no initial contents.
    spram_kbit: int = 0
    #: Flip-flops of the part (0 where one per LUT).
    ffs: int = 0


BOARDS: dict[str, Board] = {b.name: b for b in [
    Board("sim", "(none: Verilator)", "sim", 84_000, 156, 3_744, 100.0, 156,
          "the core alone, same budget as ULX3S-85F", 100.0),
    Board("icebreaker", "iCE40UP5K", "ice40", 5_280, 8, 120, 24.0, 8,
          "plus 4 x 256 kbit SPRAM for large weight sets, loaded at run time", 12.0, 1_024),
    Board("ulx3s-12f", "LFE5U-12F", "ecp5", 12_000, 28, 576, 100.0, 28, "", 25.0),
    Board("ulx3s-25f", "LFE5U-25F", "ecp5", 24_000, 28, 1_008, 100.0, 28, "", 25.0),
    Board("ulx3s-45f", "LFE5U-45F", "ecp5", 44_000, 72, 1_944, 100.0, 72, "", 25.0),
    Board("ulx3s-85f", "LFE5U-85F", "ecp5", 84_000, 156, 3_744, 100.0, 156, "", 25.0),
    Board("orangecrab-25f", "LFE5U-25F", "ecp5", 24_000, 28, 1_008, 100.0, 28,
          "no USB-serial bridge: host link on feather pins 0 (RX) / 1 (TX), "
          "external 3.3 V USB-serial adapter", 48.0),
    Board("orangecrab-85f", "LFE5U-85F", "ecp5", 84_000, 156, 3_744, 100.0, 156,
          "no USB-serial bridge: host link on feather pins 0 (RX) / 1 (TX), "
          "external 3.3 V USB-serial adapter", 48.0),
    Board("arty-a7-35", "XC7A35T", "xc7", 20_800, 90, 1_800, 100.0, 90,
          "Verilog and a Vivado build plan only (needs Vivado)", 100.0),
    Board("arty-a7-100", "XC7A100T", "xc7", 63_400, 240, 4_860, 100.0, 240,
          "Verilog and a Vivado build plan only (needs Vivado)", 100.0),
]}


def get_board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise UnknownBoard(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None
