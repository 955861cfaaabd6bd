"""Board tops: the network core behind the UART host link, on a board's clock.

:class:`LinkTop` is the part every target shares: UART receiver and
transmitter, :class:`~cosparse.hw.hostlink.HostLink` and the loadable
:class:`~cosparse.hw.network.NetworkCore`, with three pins (``rx``, ``tx``)
and four status LEDs. It is also the top that Verilator simulates for the
host-runtime tests, so the runtime talks to the same logic as on a board.

:class:`BoardTop` puts a :class:`LinkTop` on an ``amaranth-boards``
platform: the board's oscillator, a PLL when the target clock differs from
it (iCE40 ``SB_PLL40_PAD``, ECP5 ``EHXPLLL``; the core is held in reset
until it locks, and while the board's first user button is pressed), the
USB-serial UART (on OrangeCrab, header pins 0/1: an external 3.3 V adapter)
and the LEDs: loaded, running, error, link busy, and a heartbeat on the next
LED when the board has one.
"""

import re
import zlib

import numpy as np

from amaranth.hdl import ClockDomain, Const, Elaboratable, Instance, Module, Signal
from amaranth.build import Attrs, ResourceError
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out
from amaranth_boards.resources import UARTResource

from cosparse.compiler import ir
from cosparse.hw.adapters import StreamFIFO
from cosparse.hw.hostlink import HostLink
from cosparse.compiler.folding import Folding
from cosparse.compiler.lower import lower
from cosparse.hw.uart import MIN_DIVISOR, UARTRx, UARTTx

from .catalog import Board

#: Beats of the FIFOs between the host link and the core: three keep one beat a cycle
#: (at two, Amaranth's buffered FIFO takes a beat every other cycle).
SLICE_DEPTH = 3

__all__ = ["LinkTop", "BoardTop", "ice40_pll", "ecp5_pll", "pll_outputs", "highest_pll_clock",
           "uart_divisor", "platform_for", "strip_memory_contents", "design_id"]


def strip_memory_contents(verilog_text: str) -> str:
    """Verilog without the initial contents of its memories (what patching may change)."""
    return re.sub(r"(?m)^\s+\w+\[\d+\] = \d+'[hdb][0-9a-fA-F_]+;\n", "", verilog_text)


def design_id(verilog_without_images: str) -> int:
    """32-bit id of a design: CRC-32 of its core's Verilog without memory contents."""
    return zlib.crc32(verilog_without_images.encode())


def uart_divisor(clock_hz: float, baud: int) -> int:
    """Clock cycles per UART bit; refuses a rate more than 2% off or too fast for the clock."""
    div = round(clock_hz / baud)
    if div < MIN_DIVISOR:
        raise ValueError(f"baud rate {baud} is too fast for a {clock_hz / 1e6:g} MHz clock "
                         f"(at least {MIN_DIVISOR} cycles per bit)")
    err = abs(clock_hz / div - baud) / baud
    if err > 0.02:
        raise ValueError(f"baud rate {baud} is {err:.1%} off at {clock_hz / 1e6:g} MHz "
                         f"(divisor {div}); choose a rate that divides the clock")
    return div


class LinkTop(wiring.Component):
    """UART, host link and network core: the logic of every board top.

    A three-beat FIFO on each stream between the link and the core registers
    its handshake: the core's first unit's ``ready`` would otherwise reach the
    link's inference runner and back within one cycle, across the die (the
    routed gsc-cs build's critical path at 70.9 MHz).

    Parameters
    ----------
    net : Network
        The compiled network (overlay layers in drain order).
    folding : Folding
    divisor : int
        Clock cycles per UART bit.
    timeout : int
        Cycles of silence that truncate a frame being received.
    spram_bits : int or None
        Weight memories of at least this many bits start empty (iCE40 SPRAM);
        see :class:`~cosparse.hw.network.NetworkCore`.
    design_id : int
        Reported by the STATUS command.

    Members
    -------
    rx : In(1)
        Serial input (idle high).
    tx : Out(1)
        Serial output.
    leds : Out(4)
        Loaded, running, error, link busy.
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)
    leds: Out(4)

    def __init__(self, net: ir.Network, folding: Folding, *, divisor: int, timeout: int,
                 spram_bits: int | None = None, design_id: int = 0,
                 patch_seed: int | None = None):
        self.core = lower(net, folding, loadable=True, spram_bits=spram_bits,
                          patch_seed=patch_seed)
        specs = net.specs()
        inp, out = specs[0], specs[-1]
        in_groups, in_g = ((inp.shape[0] * inp.shape[1], inp.shape[2]) if len(inp.shape) == 3
                           else (1, int(np.prod(inp.shape))))
        out_groups, out_g = ((out.shape[0] * out.shape[1], out.shape[2]) if len(out.shape) == 3
                             else (1, int(np.prod(out.shape))))
        self.out_beats = out_groups * -(-out_g // self.core.out_width)
        self.link = HostLink(in_width=folding.input_width, in_groups=in_groups,
                             in_group_size=in_g, out_width=self.core.out_width,
                             out_bits=self.core.out_bits, out_beats=self.out_beats,
                             load_ports=self.core.load_ports, design_id=design_id,
                             timeout=timeout)
        self.uart_rx = UARTRx(divisor)
        self.uart_tx = UARTTx(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = rx = self.uart_rx
        m.submodules.uart_tx = tx = self.uart_tx
        m.submodules.link = link = self.link
        m.submodules.core = core = self.core
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx), self.leds.eq(link.leds),
                     link.framing_errors.eq(rx.framing_errors), link.overruns.eq(rx.overruns)]
        wiring.connect(m, rx.o, link.rx)
        wiring.connect(m, link.tx, tx.i)
        m.submodules.core_in = core_in = StreamFIFO(core.i.payload.shape(), SLICE_DEPTH)
        m.submodules.core_out = core_out = StreamFIFO(core.o.payload.shape(), SLICE_DEPTH)
        wiring.connect(m, link.core_i, core_in.i)
        wiring.connect(m, core_in.o, core.i)
        wiring.connect(m, core.o, core_out.i)
        wiring.connect(m, core_out.o, link.core_o)
        if core.load_ports:
            wiring.connect(m, link.load, core.load)
        return m


# ---------------------------------------------------------------------------- PLLs

def _ice40_settings(fin_mhz: float):
    """Every ``SB_PLL40`` setting from ``fin``: ``(divr, divf, divq, fpfd, fout)``."""
    for divr in range(16):
        fpfd = fin_mhz / (divr + 1)
        if not 10 <= fpfd <= 133:
            continue
        for divf in range(128):
            fvco = fpfd * (divf + 1)
            if not 533 <= fvco <= 1066:
                continue
            for divq in range(1, 7):
                f = fvco / (1 << divq)
                if 16 <= f <= 275:  # the PLL output's range
                    yield divr, divf, divq, fpfd, f


def _ecp5_settings(fin_mhz: float):
    """Every ``EHXPLLL`` setting from ``fin``: ``(ref, fb, od, fvco, fout)``."""
    for ref in range(1, 129):
        fpfd = fin_mhz / ref
        if not 3.125 <= fpfd <= 400:
            continue
        for fb in range(1, 81):
            for od in range(1, 129):
                fvco = fpfd * fb * od
                if 400 <= fvco <= 800:
                    yield ref, fb, od, fvco, fvco / od


def ice40_pll(fin_mhz: float, fout_mhz: float) -> dict:
    """``SB_PLL40`` parameters (SIMPLE feedback) closest to ``fout``, as ``icepll`` finds them."""
    best = None
    for divr, divf, divq, fpfd, f in _ice40_settings(fin_mhz):
        if best is None or abs(f - fout_mhz) < best[0]:
            best = (abs(f - fout_mhz), divr, divf, divq, fpfd, f)
    if best is None or best[0] > 0.01 * fout_mhz:
        closest = f"closest {best[5]:g} MHz; " if best else ""
        raise ValueError(f"no iCE40 PLL setting makes {fout_mhz:g} MHz from {fin_mhz:g} MHz "
                         f"({closest}the PLL gives 16 to 275 MHz)")
    _, divr, divf, divq, fpfd, f = best
    filt = next(i for i, top in enumerate([17, 26, 44, 66, 101, 1e9], 1) if fpfd < top)
    return {"DIVR": divr, "DIVF": divf, "DIVQ": divq, "FILTER_RANGE": filt, "fout_mhz": f}


def ecp5_pll(fin_mhz: float, fout_mhz: float) -> dict:
    """``EHXPLLL`` dividers closest to ``fout`` (VCO near 600 MHz), as ``ecppll`` finds them."""
    best = None
    for ref, fb, od, fvco, f in _ecp5_settings(fin_mhz):
        key = (abs(f - fout_mhz), abs(fvco - 600))
        if best is None or key < best[0]:
            best = (key, ref, fb, od, f, fvco)
    if best is None or best[0][0] > 0.01 * fout_mhz:
        closest = f" (closest {best[4]:g} MHz)" if best else ""
        raise ValueError(f"no ECP5 PLL setting makes {fout_mhz:g} MHz from {fin_mhz:g} MHz"
                         + closest)
    _, ref, fb, od, f, fvco = best
    return {"CLKI_DIV": ref, "CLKFB_DIV": fb, "CLKOP_DIV": od, "CLKOP_CPHASE": od // 2,
            "fout_mhz": f, "fvco_mhz": fvco}


def pll_outputs(family: str, fin_mhz: float) -> list[float]:
    """Every output (MHz) of the family's PLL from ``fin``, in ascending order.

    The settings :func:`ice40_pll` and :func:`ecp5_pll` search, so each value
    asked of them comes back exactly.
    """
    if family == "ice40":
        return sorted({s[-1] for s in _ice40_settings(fin_mhz)})
    if family == "ecp5":
        return sorted({s[-1] for s in _ecp5_settings(fin_mhz)})
    raise ValueError(f"the {family} tops have no PLL")


def highest_pll_clock(board: Board, max_mhz: float, *, baud: int | None = None) -> float:
    """The highest core clock (MHz) ``board`` can run at that is at most ``max_mhz``.

    The candidates are the outputs of the board's PLL from its oscillator
    (:func:`pll_outputs`) and the oscillator itself (which the top uses
    without a PLL). Given ``baud``, only clocks whose UART divisor makes
    that rate (:func:`uart_divisor`) count.

    Raises
    ------
    ValueError
        No clock of the board is at or below ``max_mhz`` (with that baud rate).
    """
    clocks = set(pll_outputs(board.family, board.osc_mhz)) | {board.osc_mhz}
    for f in sorted(clocks, reverse=True):
        if f > max_mhz:
            continue
        if baud is not None:
            try:
                uart_divisor(f * 1e6, baud)
            except ValueError:
                continue
        return f
    raise ValueError(f"{board.name} has no clock at or below {max_mhz:g} MHz"
                     + (f" that makes {baud:,} baud" if baud is not None else "")
                     + f" (its PLL runs from a {board.osc_mhz:g} MHz oscillator)")


class BoardTop(Elaboratable):
    """A :class:`LinkTop` on a board (see the module doc).

    Parameters
    ----------
    board : Board
        From :mod:`cosparse.boards.catalog` (``ice40``, ``ecp5`` or ``xc7``).
    net, folding, design_id, spram_bits
        As for :class:`LinkTop`.
    baud : int
        UART rate.
    """

    def __init__(self, board: Board, net: ir.Network, folding: Folding, *, baud: int,
                 design_id: int = 0, spram_bits: int | None = None,
                 patch_seed: int | None = None):
        if board.family not in ("ice40", "ecp5", "xc7"):
            raise ValueError(f"board {board.name!r} has no FPGA top (family {board.family})")
        self.board = board
        self.clock_hz = self.achieved_clock_mhz() * 1e6
        self.baud = baud
        self.link = LinkTop(net, folding, divisor=uart_divisor(self.clock_hz, baud),
                            timeout=int(self.clock_hz * 0.05), spram_bits=spram_bits,
                            design_id=design_id, patch_seed=patch_seed)

    def achieved_clock_mhz(self) -> float:
        b = self.board
        if b.clock_mhz == b.osc_mhz:
            return b.osc_mhz
        if b.family == "ice40":
            return ice40_pll(b.osc_mhz, b.clock_mhz)["fout_mhz"]
        if b.family == "ecp5":
            return ecp5_pll(b.osc_mhz, b.clock_mhz)["fout_mhz"]
        raise ValueError(f"board {b.name}: the {b.family} top has no PLL; its clock is the "
                         f"{b.osc_mhz} MHz oscillator")

    def elaborate(self, platform):
        m = Module()
        b = self.board
        m.domains.sync = cd_sync = ClockDomain("sync")
        locked = Signal()
        if b.clock_mhz == b.osc_mhz:
            m.submodules.clk_buf = clk = io.Buffer(
                "i", platform.request(platform.default_clk, dir="-"))
            m.d.comb += [cd_sync.clk.eq(clk.i), locked.eq(1)]
        elif b.family == "ice40":
            p = ice40_pll(b.osc_mhz, b.clock_mhz)
            pad = platform.request(platform.default_clk, dir="-")
            m.submodules.pll = Instance(
                "SB_PLL40_PAD", p_FEEDBACK_PATH="SIMPLE", p_DIVR=p["DIVR"], p_DIVF=p["DIVF"],
                p_DIVQ=p["DIVQ"], p_FILTER_RANGE=p["FILTER_RANGE"],
                i_PACKAGEPIN=pad.io, i_RESETB=Const(1), i_BYPASS=Const(0),
                o_PLLOUTGLOBAL=cd_sync.clk, o_LOCK=locked)
        else:  # ecp5
            p = ecp5_pll(b.osc_mhz, b.clock_mhz)
            m.submodules.clk_buf = clk = io.Buffer(
                "i", platform.request(platform.default_clk, dir="-"))
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{b.osc_mhz:g}", a_FREQUENCY_PIN_CLKOP=f"{p['fout_mhz']:g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
                p_CLKI_DIV=p["CLKI_DIV"], p_CLKOP_DIV=p["CLKOP_DIV"],
                p_CLKOP_CPHASE=p["CLKOP_CPHASE"], p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
                p_CLKFB_DIV=p["CLKFB_DIV"],
                i_RST=Const(0), i_STDBY=Const(0), i_CLKI=clk.i, o_CLKOP=cd_sync.clk,
                i_CLKFB=cd_sync.clk, i_PHASESEL0=Const(0), i_PHASESEL1=Const(0),
                i_PHASEDIR=Const(0), i_PHASESTEP=Const(0), i_PHASELOADREG=Const(0),
                i_PLLWAKESYNC=Const(0), i_ENCLKOP=Const(0), o_LOCK=locked)
        platform.add_clock_constraint(cd_sync.clk, self.clock_hz)
        # The board's first user button is its reset: core and link start again, the
        # memories keep their words and the host link its seal (docs/host-link.md).
        reset = Signal()
        m.d.comb += reset.eq(~locked)
        try:
            button = platform.request("button", 0, dir="-")
        except ResourceError:
            button = None
        if button is not None:
            m.submodules.reset_button = btn = io.Buffer("i", button)
            m.d.comb += reset.eq(~locked | btn.i)
        m.submodules.reset_sync = ResetSynchronizer(reset, domain="sync")

        m.submodules.link = link = self.link
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx_buf = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buf = tx = io.Buffer("o", uart.tx)
        m.d.comb += [link.rx.eq(rx.i), tx.o.eq(link.tx)]

        ports = []
        for i in range(8):
            try:
                ports.append(platform.request("led", i, dir="-"))
            except ResourceError:  # fewer LEDs on this board
                break
        if not ports:  # OrangeCrab: the RGB LED
            rgb = platform.request("rgb_led", 0, dir="-")
            ports = [rgb.g, rgb.b, rgb.r]
        leds = []
        for i, port in enumerate(ports):
            m.submodules[f"led_buf{i}"] = buf = io.Buffer("o", port)
            leds.append(buf)
        for i, led in enumerate(leds[:4]):
            m.d.comb += led.o.eq(link.leds[i])
        if len(leds) > 4:
            beat = Signal(range(int(self.clock_hz)))
            on = Signal()
            with m.If(beat == int(self.clock_hz) // 2 - 1):
                m.d.sync += [beat.eq(0), on.eq(~on)]
            with m.Else():
                m.d.sync += beat.eq(beat + 1)
            m.d.comb += leds[4].o.eq(on)
        return m


def platform_for(board: Board):
    """The ``amaranth-boards`` platform of a catalog board (with the OrangeCrab's UART pins)."""
    # Each board's module is imported only when that board is asked for.
    name = board.name
    if name == "icebreaker":
        from amaranth_boards.icebreaker import ICEBreakerPlatform
        return ICEBreakerPlatform()
    if name.startswith("ulx3s-"):
        from amaranth_boards import ulx3s
        cls = {"12f": ulx3s.ULX3S_12F_Platform, "25f": ulx3s.ULX3S_25F_Platform,
               "45f": ulx3s.ULX3S_45F_Platform, "85f": ulx3s.ULX3S_85F_Platform}[name[6:]]
        return cls()
    if name.startswith("orangecrab-"):
        from amaranth_boards import orangecrab_r0_2 as oc
        cls = {"25f": oc.OrangeCrabR0_2_25FPlatform, "85f": oc.OrangeCrabR0_2_85FPlatform}[name[11:]]
        p = cls()
        # No USB-serial bridge: the host link is on feather header pins 0 (RX) and 1 (TX),
        # for an external 3.3 V USB-serial adapter.
        p.add_resources([UARTResource(0, rx="0", tx="1", conn=("io", 0),
                                      attrs=Attrs(IO_TYPE="LVCMOS33", PULLMODE="UP"))])
        return p
    if name.startswith("arty-a7-"):
        from amaranth_boards import arty_a7
        return {"35": arty_a7.ArtyA7_35Platform, "100": arty_a7.ArtyA7_100Platform}[name[8:]]()
    raise ValueError(f"board {name!r} has no amaranth-boards platform")
