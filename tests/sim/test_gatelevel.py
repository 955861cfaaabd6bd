"""sim.gatelevel: a unit's yosys netlist, with yosys's cell models, in Verilator against golden."""

import json
import re

import numpy as np
import pytest
from amaranth.hdl import Cat, Module, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from cosparse.hw.adapters import StreamFIFO
from cosparse.hw.streams import dense_beats, dense_layout
from cosparse.sim.gatelevel import netlist_for
from cosparse.sim.verilate import run_streams

from ..helpers import dense_frames, random_acc, requant_constants, requant_golden, requantizer


@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_requantizer_netlist_equals_golden_under_stalls(tmp_path, family):
    """The requantizer's products become SB_MAC16 (``-dsp``) or MULT18X18D blocks and its
    logic LUTs and carries: the netlist computes what the golden model does."""
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    rng = np.random.default_rng(5)
    C, D, acc_bits = 3, 1, 20
    mult, shift, bias, relu = requant_constants(rng, C, shift_hi=28)
    dut = requantizer(C, D, acc_bits, mult, shift, bias, relu)
    acc = random_acc(rng, (2, 4, C), acc_bits)
    want = dense_frames(requant_golden(acc, mult, shift, bias, relu), D)
    platform = ICEBreakerPlatform() if family == "ice40" else ULX3S_85F_Platform()
    hook = netlist_for(family, tmp_path, "-dsp" if family == "ice40" else "")
    res = run_streams(dut, f"gl_requant_{family}", [("i", dut.in_layout, dense_frames(acc, D))],
                      [("o", dut.out_layout, len(want))], stall=0.3, seed=3,
                      build_root=tmp_path, platform=platform, netlist=hook)
    assert res.outputs[0] == want
    gate = next(tmp_path.glob(f"gate-{family}-*/gate.v")).read_text()
    cell = "SB_MAC16" if family == "ice40" else "MULT18X18D"
    assert cell in gate and ("SB_LUT4" in gate or "LUT4" in gate)  # a netlist, not RTL


class _RomReader(wiring.Component):
    """Reads a word of an initialised ``depth`` x ``9 * lanes``-bit memory per beat: the
    address in ``i.data[0]``, the word's 9-bit pieces in ``o.data`` (a block RAM on ECP5)."""

    def __init__(self, words: list[int], lanes: int):
        self.words, self.lanes = words, lanes
        self.in_layout = dense_layout(1, unsigned(10))
        self.out_layout = dense_layout(lanes, unsigned(9))
        super().__init__({"i": In(stream.Signature(self.in_layout)),
                          "o": Out(stream.Signature(self.out_layout))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.rom = rom = Memory(shape=unsigned(9 * self.lanes), depth=len(self.words),
                                        init=self.words)
        rd = rom.read_port()
        take = Signal()
        m.d.comb += [take.eq(~self.o.valid | self.o.ready), self.i.ready.eq(take),
                     rd.en.eq(take), rd.addr.eq(self.i.payload.data[0])]
        m.d.comb += [self.o.payload.data[j].eq(rd.data[9 * j:9 * j + 9])
                     for j in range(self.lanes)]
        with m.If(take):
            m.d.sync += [self.o.valid.eq(self.i.valid),
                         self.o.payload.last.eq(self.i.payload.last),
                         self.o.payload.end.eq(self.i.payload.end)]
        return m


class _Units(wiring.Component):
    """Stream units side by side: unit ``key``'s ports are ``<key>i`` and ``<key>o``."""

    def __init__(self, units: dict):
        self.units = units
        ports = {}
        for key, unit in self.units.items():
            ports[f"{key}i"] = In(stream.Signature(unit.in_layout))
            ports[f"{key}o"] = Out(stream.Signature(unit.out_layout))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        for key, unit in self.units.items():
            m.submodules[key] = unit
            wiring.connect(m, wiring.flipped(getattr(self, f"{key}i")), unit.i)
            wiring.connect(m, unit.o, wiring.flipped(getattr(self, f"{key}o")))
        return m


def _units_netlist_match(dut: _Units, name: str, beats: dict, want: dict, seed: int,
                         tmp_path) -> None:
    """``dut``'s synth_ecp5 netlist in Verilator, under random stalls: each unit's output
    beats are ``want``'s for ``beats`` in."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    units = dut.units
    res = run_streams(dut, name,
                      [(f"{k}i", units[k].in_layout, beats[k]) for k in units],
                      [(f"{k}o", units[k].out_layout, len(want[k])) for k in units],
                      stall=0.3, seed=seed, build_root=tmp_path, platform=ULX3S_85F_Platform(),
                      netlist=netlist_for("ecp5", tmp_path))
    assert res.outputs == [want[k] for k in units]


def test_ecp5_block_ram_netlist_equals_rtl_under_stalls(tmp_path):
    """The DP16KD model: FIFOs mapped to the x36 pair and to x9 ports (read while written,
    under random stalls) and an initialised ROM (INITVAL words) give, as a synth_ecp5
    netlist, what the RTL does."""
    rng = np.random.default_rng(7)
    words18 = rng.integers(0, 1 << 18, 1024).tolist()
    words36 = rng.integers(0, 1 << 36, 512).tolist()
    # Block RAMs of the widths yosys maps to DP16KD: FIFOs on x18 and x9 ports, and
    # initialised ROMs of 1,024 x 18 bits (x18) and 512 x 36 (the x36 pair).
    dut = _Units({"w": StreamFIFO(dense_layout(4, signed(8)), 600),
                  "n": StreamFIFO(dense_layout(1, signed(7)), 1500),
                  "r": _RomReader(words18, 2), "q": _RomReader(words36, 4)})
    beats = {"w": dense_frames(rng.integers(-128, 128, (3, 700, 4)), 4),
             "n": dense_frames(rng.integers(-64, 64, (2, 1700, 1)), 1)}
    want = dict(beats)
    for key, words, lanes in (("r", words18, 2), ("q", words36, 4)):
        addrs = rng.integers(0, len(words), 900)
        beats[key] = dense_beats([[int(a)] for a in addrs], 1)
        want[key] = dense_beats([[(words[a] >> 9 * j) & 511 for j in range(lanes)]
                                 for a in addrs], lanes)
    _units_netlist_match(dut, "gl_bram_ecp5", beats, want, 11, tmp_path)
    gate = next(tmp_path.glob("gate-ecp5-*/gate.v")).read_text()
    widths = set(re.findall(r"\.DATA_WIDTH_[AB]\(32'd(\d+)\)", gate))
    assert gate.count("DP16KD #") >= 4 and {"9", "18", "36"} <= widths  # block RAMs, each width


class _RegisteredRomReader(wiring.Component):
    """A ROM read, then its word registered (both advance together, the enable a stall
    pipeline's); with ``spy``, the read data's two low bits also drive logic (their XOR,
    registered beside the word as the output's top bit), so the port's register cannot
    move into the block."""

    def __init__(self, words: list[int], width: int, spy: bool):
        self.words, self.width, self.spy = words, width, spy
        self.in_layout = dense_layout(1, unsigned(10))
        self.out_layout = dense_layout(1, unsigned(width + spy))
        super().__init__({"i": In(stream.Signature(self.in_layout)),
                          "o": Out(stream.Signature(self.out_layout))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.rom = rom = Memory(shape=unsigned(self.width), depth=len(self.words),
                                        init=self.words)
        rd = rom.read_port()
        advance, s1_valid, s1_last, s1_end = (Signal() for _ in range(4))
        parity = Signal(reset_less=True)
        word = Signal(self.width, reset_less=True)  # (a reset would stay in the fabric)
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance),
                     rd.en.eq(advance), rd.addr.eq(self.i.payload.data[0])]
        m.d.comb += self.o.payload.data[0].eq(Cat(word, parity) if self.spy else word)
        with m.If(advance):
            if self.spy:
                m.d.sync += parity.eq(rd.data[0] ^ rd.data[1])
            m.d.sync += [s1_valid.eq(self.i.valid), s1_last.eq(self.i.payload.last),
                         s1_end.eq(self.i.payload.end), word.eq(rd.data),
                         self.o.valid.eq(s1_valid), self.o.payload.last.eq(s1_last),
                         self.o.payload.end.eq(s1_end)]
        return m


def test_ecp5_output_registers_move_into_block_rams(tmp_path):
    """A register that only samples a block RAM's read data becomes the DP16KD's output
    register (REGMODE OUTREG), on x18 ports and on the x36 pair, and the netlist gives
    what the RTL does under random stalls; a read port one of whose outputs also drives
    logic keeps its fabric register."""
    from cosparse.sim.ecp5_netlist import absorb_output_registers

    rng = np.random.default_rng(8)
    specs = {"a": (1024, 18, False), "b": (512, 36, False), "c": (1024, 18, True)}
    units = {k: _RegisteredRomReader(rng.integers(0, 1 << w, d).tolist(), w, spy)
             for k, (d, w, spy) in specs.items()}

    beats, want = {}, {}
    for k, u in units.items():
        addrs = rng.integers(0, len(u.words), 700)
        beats[k] = dense_beats([[int(a)] for a in addrs], 1)
        words = [u.words[a] for a in addrs]
        if u.spy:
            words = [w | ((w ^ w >> 1) & 1) << u.width for w in words]
        want[k] = dense_beats([[w] for w in words], 1)
    _units_netlist_match(_Units(units), "gl_outreg_ecp5", beats, want, 12, tmp_path)
    work = next(tmp_path.glob("gate-ecp5-*"))
    before = json.loads((work / "gate.json").read_text())
    moved = absorb_output_registers(before)
    # a: one x18 port (18 registers); b: the x36 pair (36); c: kept
    assert moved == {"ports": 2, "flip_flops": 54}
    gate = (work / "gate.v").read_text()
    assert gate.count('"OUTREG"') == 3 and gate.count("DP16KD #") == 3  # x36: both REGMODEs
