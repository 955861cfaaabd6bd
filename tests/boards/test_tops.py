"""Board tops for every board of the catalog, PLL settings, and the compile refusals."""

import json

import pytest

from cosparse.boards.catalog import BOARDS
from cosparse.boards.top import BoardTop, ecp5_pll, ice40_pll, platform_for, uart_divisor
from cosparse.compiler import ir
from cosparse.compiler.cli import main
from cosparse.compiler.folding import Folding

from ..helpers import compile_tiny


def test_pll_settings_match_icepll_and_ecppll():
    # What `icepll -i 12 -o 24` and `ecppll -i 25 -o 100` print.
    p = ice40_pll(12, 24)
    assert (p["DIVR"], p["DIVF"], p["DIVQ"], p["FILTER_RANGE"], p["fout_mhz"]) == (0, 63, 5, 1, 24)
    e = ecp5_pll(25, 100)
    assert (e["CLKI_DIV"], e["CLKFB_DIV"], e["CLKOP_DIV"], e["fout_mhz"]) == (1, 4, 6, 100)
    assert 400 <= e["fvco_mhz"] <= 800
    o = ecp5_pll(48, 100)  # OrangeCrab
    assert o["fout_mhz"] == pytest.approx(100)
    with pytest.raises(ValueError, match="no iCE40 PLL"):
        ice40_pll(12, 300)


def test_uart_divisor_limits():
    assert uart_divisor(24e6, 1_000_000) == 24
    with pytest.raises(ValueError, match="too fast"):
        uart_divisor(12e6, 6_000_000)
    with pytest.raises(ValueError, match="off"):
        uart_divisor(24e6, 5_000_000)  # divisor 5: 4.8 Mbaud


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, cal, _, out = compile_tiny(tmp_path_factory.mktemp("tops"), "ulx3s-85f")
    return model, cal, out


@pytest.mark.parametrize("name", [b for b in BOARDS if b != "sim"])
def test_every_board_top_prepares(name, tiny):
    """Pins, clock, PLL, UART and LEDs resolve on the board's platform (no tools run)."""
    _, _, out = tiny
    net = ir.load(out)
    board = BOARDS[name]
    top = BoardTop(board, net, Folding.from_dict(net.meta["folding"]), baud=1_000_000)
    plan = platform_for(board).prepare(top, name="cosparse_top")
    files = plan.files
    text = "\n".join(v if isinstance(v, str) else "" for v in files.values())
    if board.family == "ice40":
        assert "SB_PLL40_PAD" in text and any(f.endswith(".pcf") for f in files)
    elif board.family == "ecp5":
        assert "EHXPLLL" in text and any(f.endswith(".lpf") for f in files)
    else:
        assert any(f.endswith(".xdc") for f in files)  # Vivado constraints


def test_bitstream_refusals(tiny, tmp_path, capsys):
    model, cal, _ = tiny
    assert main(["compile", str(model), "--board", "sim", "-o", str(tmp_path / "x"),
                 "--calibration", str(cal), "--bitstream"]) == 2
    assert "needs a real board" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["compile", str(model), "--board", "icebreaker", "-o", str(tmp_path / "y"),
                 "--calibration", str(cal), "--baud", "7000000"]) == 2
    assert "baud rate 7000000" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    assert main(["compile", str(model), "--board", "icebreaker", "-o", str(tmp_path / "z"),
                 "--calibration", str(cal), "--clock", "400"]) == 2
    assert "no iCE40 PLL setting makes 400 MHz" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_link_json_describes_the_host_link(tiny):
    _, _, out = tiny
    link = json.loads((out / "link.json").read_text())
    assert link["board"] == "ulx3s-85f" and link["baud"] == 1_000_000
    assert (link["in_width"], link["in_groups"], link["in_group_size"]) == (8, 1, 16)
    names = {t["name"] for t in link["targets"]}
    index = {i["name"] for i in json.loads((out / "images" / "index.json").read_text())}
    assert names <= index  # every load target has its image in the bundle
