"""The board clock a build runs at: the PLL's reachable clocks, and the default clock
lowered when the routed Fmax misses it.

The build tests fake yosys, nextpnr and the packer (the real ones take minutes): the
board top is elaborated and its build files written as for a real build, and the fake
nextpnr reports the Fmax the test gives it, reading the clock constraint and the PLL
settings from the files the build wrote.
"""

import json
import re

import pytest

from cosparse.boards import bitstream
from cosparse.boards import top as board_top
from cosparse.boards.catalog import BOARDS
from cosparse.boards.top import ecp5_pll, highest_pll_clock, ice40_pll, pll_outputs
from cosparse.compiler.cli import main

from ..helpers import write_tiny

PLL_BOARDS = [b for b in BOARDS.values() if b.family in ("ice40", "ecp5")]


def _pll(board):
    return ice40_pll if board.family == "ice40" else ecp5_pll


@pytest.mark.parametrize("board", PLL_BOARDS, ids=lambda b: b.name)
def test_highest_pll_clock_is_the_highest_the_pll_makes_below_the_limit(board):
    outputs = pll_outputs(board.family, board.osc_mhz)
    # the board's default clock is one its PLL makes: a limit at it gives it back
    assert highest_pll_clock(board, board.clock_mhz) == pytest.approx(board.clock_mhz)
    for limit in (80.8 * 0.95, 50.0, 33.3, 17.0):
        f = highest_pll_clock(board, limit)
        assert f <= limit
        assert not [g for g in outputs if f < g <= limit]  # nothing reachable in between
        if f != board.osc_mhz:  # (the oscillator itself needs no PLL)
            assert _pll(board)(board.osc_mhz, f)["fout_mhz"] == f  # the PLL makes it exactly


def test_highest_pll_clock_on_catalog_boards():
    ulx3s, ice, crab = BOARDS["ulx3s-85f"], BOARDS["icebreaker"], BOARDS["orangecrab-85f"]
    # 25 MHz oscillator, ECP5 EHXPLLL: 25 x 3 / 1 is the highest below 76.76
    assert highest_pll_clock(ulx3s, 80.8 * 0.95) == 75.0
    # 12 MHz, SB_PLL40: VCO / 2**DIVQ in steps of 0.375 MHz at DIVQ 5
    assert highest_pll_clock(ice, 23.5 * 0.95) == 22.125
    assert highest_pll_clock(crab, 80.8 * 0.95) == 76.0  # 48 MHz x 19 / 12
    # below the iCE40 PLL's 16 MHz the oscillator itself is the clock
    assert highest_pll_clock(ice, 15.0) == 12.0
    # a clock whose UART divisor is more than 2% off the baud rate is passed over:
    # 10.714 MHz is 10.7 cycles a bit at 1 Mbaud
    assert highest_pll_clock(ulx3s, 12.0) == pytest.approx(75 / 7)
    assert highest_pll_clock(ulx3s, 12.0, baud=1_000_000) == 10.0
    with pytest.raises(ValueError, match="no clock at or below 5 MHz"):
        highest_pll_clock(ice, 5.0)
    with pytest.raises(ValueError, match="no PLL"):
        highest_pll_clock(BOARDS["arty-a7-35"], 50.0)


# ---------------------------------------------------------------- the build's fallback

class FakeTools:
    """yosys, nextpnr and the packer in place of the real ones.

    ``fmax`` holds the Fmax of each nextpnr run in turn; each run records the clock
    constraint (MHz) and the PLL's feedback and output dividers the build files hold.
    """

    def __init__(self, monkeypatch, fmax: list[float]):
        self.fmax = list(fmax)
        self.runs: list[dict] = []
        self.links: list[dict] = []  # the UART divisor and timeout of each board top
        monkeypatch.setattr(bitstream, "run_step", self.run_step)
        monkeypatch.setattr(bitstream, "pack_placed", self.pack)
        real = board_top.LinkTop

        def link_top(*args, **kw):
            self.links.append({"divisor": kw["divisor"], "timeout": kw["timeout"]})
            return real(*args, **kw)
        monkeypatch.setattr(board_top, "LinkTop", link_top)

    def run_step(self, label, cmd, cwd, env, log, progress, heartbeat=20.0, limit=None):
        name = bitstream.TOP_NAME
        if label.startswith("synthesis"):
            (cwd / f"{name}.rpt").write_text("=== design hierarchy ===\n")
            (cwd / f"{name}.json").write_text(json.dumps({"modules": {}}))  # the netlist
            return 1.0
        assert label.startswith("place and route")
        lpf = (cwd / f"{name}.lpf").read_text()
        il = (cwd / f"{name}.il").read_text()
        clock = float(re.search(r'FREQUENCY NET "[^"]*" ([\d.]+) HZ', lpf).group(1)) / 1e6
        self.runs.append({"clock": clock, **{
            k: int(re.search(rf"parameter \\{k} (\d+)", il).group(1))
            for k in ("CLKI_DIV", "CLKFB_DIV", "CLKOP_DIV")}})
        fmax = self.fmax.pop(0)
        util = {"TRELLIS_COMB": (900, 24288), "TRELLIS_FF": (700, 24288),
                "MULT18X18D": (3, 28), "DP16KD": (4, 56)}
        (cwd / f"{name}.report.json").write_text(json.dumps({
            "utilization": {k: {"used": u, "available": a} for k, (u, a) in util.items()},
            "fmax": {"$glbnet$clk": {"achieved": fmax, "constraint": clock}}}))
        (cwd / f"{name}.config").write_text("placed\n")
        return 2.0

    def pack(self, build, family, env, placed, out):
        out.write_bytes(b"bitstream of " + placed.read_bytes())


def _compile(tmp_path, *clock):
    model, cal, _ = write_tiny(tmp_path)
    out = tmp_path / "out"
    assert main(["compile", str(model), "--board", "ulx3s-12f", "-o", str(out),
                 "--calibration", str(cal), *clock]) == 0
    return out


def test_a_missed_default_clock_is_lowered_and_built_again(tmp_path, monkeypatch):
    out = _compile(tmp_path)
    assert json.loads((out / "link.json").read_text())["clock_forced"] is False
    tools = FakeTools(monkeypatch, [80.8, 79.0])
    said = []
    rep = bitstream.build_bitstream(out, progress=said.append)
    # the second run is made at 75 MHz (the highest below 0.95 x 80.8): its PLL
    # (25 MHz x 3 / 1, VCO 600 MHz), clock constraint and UART divisor are the new clock's
    assert [r["clock"] for r in tools.runs] == [100.0, 75.0]
    assert tools.runs[1] == {"clock": 75.0, "CLKI_DIV": 1, "CLKFB_DIV": 3, "CLKOP_DIV": 8}
    assert tools.links == [{"divisor": 100, "timeout": 5_000_000},  # 1 Mbaud, 50 ms
                           {"divisor": 75, "timeout": 3_750_000}]
    assert ("the 100 MHz default clock is missed (Fmax 80.8 MHz): synthesising, placing and "
            "routing again at 75 MHz") in said
    assert rep["clock_mhz"] == 75.0 and rep["fmax_mhz"] == 79.0 and rep["timing_met"]
    assert rep["default_clock_mhz"] == 100.0 and rep["clock_lowered"] is True
    assert rep["clock_forced"] is False
    assert rep["first_run"] == {"clock_mhz": 100.0, "fmax_mhz": 80.8,
                                "seconds": {"synthesis": 1.0, "place": 2.0},
                                "margin": bitstream.CLOCK_MARGIN}
    assert json.loads((out / "bitstream.json").read_text()) == rep
    assert (out / f"{bitstream.TOP_NAME}.bit").read_bytes() == b"bitstream of placed\n"
    md = (out / "report.md").read_text()
    assert "Fmax 79.0 MHz against a 75 MHz clock: timing met" in md
    assert "The board's 100 MHz default clock was missed (Fmax 80.8 MHz at it" in md
    assert "built again at 75 MHz" in md
    # the host link's description takes the clock the bitstream runs at
    link = json.loads((out / "link.json").read_text())
    assert link["clock_mhz"] == 75.0 and link["clock_forced"] is False

    # a rebuild starts from the board's default clock again
    tools.fmax = [120.0]
    rep = bitstream.build_bitstream(out, progress=said.append)
    assert tools.runs[-1]["clock"] == 100.0 and len(tools.runs) == 3
    assert rep["clock_mhz"] == 100.0 and rep["clock_lowered"] is False
    assert "first_run" not in rep
    assert json.loads((out / "link.json").read_text())["clock_mhz"] == 100.0


def test_a_lowered_clock_that_is_missed_too_fails_naming_both(tmp_path, monkeypatch):
    out = _compile(tmp_path)
    tools = FakeTools(monkeypatch, [80.8, 70.2])
    with pytest.raises(bitstream.BitstreamError) as e:
        bitstream.build_bitstream(out, progress=lambda s: None)
    assert [r["clock"] for r in tools.runs] == [100.0, 75.0]  # one more run, not more
    msg = str(e.value)
    assert "Fmax 70.2 MHz < the 75 MHz clock" in msg
    assert "lowered the 100 MHz default clock (missed at Fmax 80.8 MHz)" in msg
    assert "no bitstream written" in msg
    assert not (out / f"{bitstream.TOP_NAME}.bit").exists()
    assert json.loads((out / "link.json").read_text())["clock_mhz"] == 100.0
    rep = json.loads((out / "bitstream.json").read_text())
    assert rep["timing_met"] is False and rep["clock_lowered"] is True


def test_a_forced_clock_is_not_lowered(tmp_path, monkeypatch, capsys):
    out = _compile(tmp_path, "--clock", "100")
    assert json.loads((out / "link.json").read_text())["clock_forced"] is True
    tools = FakeTools(monkeypatch, [80.8])
    with pytest.raises(bitstream.BitstreamError,
                       match=r"Fmax 80.8 MHz < the 100 MHz clock \(900 of"):
        bitstream.build_bitstream(out, progress=lambda s: None)
    assert [r["clock"] for r in tools.runs] == [100.0]
    rep = json.loads((out / "bitstream.json").read_text())
    assert rep["clock_forced"] is True and rep["clock_lowered"] is False

    # the command line: one paragraph, exit status 2, no bitstream
    tools.fmax = [80.8]
    model, cal, _ = write_tiny(tmp_path)
    assert main(["compile", str(model), "--board", "ulx3s-12f", "-o", str(tmp_path / "cli"),
                 "--calibration", str(cal), "--clock", "100", "--bitstream"]) == 2
    assert "misses timing on ulx3s-12f" in capsys.readouterr().err
    assert not (tmp_path / "cli" / f"{bitstream.TOP_NAME}.bit").exists()


def test_a_build_that_meets_the_default_clock_runs_once(tmp_path, monkeypatch):
    out = _compile(tmp_path)
    tools = FakeTools(monkeypatch, [100.5])
    rep = bitstream.build_bitstream(out, progress=lambda s: None)
    assert [r["clock"] for r in tools.runs] == [100.0]
    assert rep["clock_mhz"] == 100.0 and rep["timing_met"] and rep["clock_lowered"] is False
    assert "default clock was missed" not in (out / "report.md").read_text()
