"""UART receiver and transmitter (8 data bits, no parity, one stop bit).

Both sides run at ``divisor`` clock cycles per bit (``clock / baud``), with
byte streams (``amaranth.lib.stream``, payload ``unsigned(8)``) on the
fabric side. The receiver samples each bit in its middle and drops a byte
whose stop bit is not high (a framing error, counted). It never waits: a
byte arriving while the previous one is still unread overwrites nothing
and is dropped (counted as an overrun); the host link reads every byte the
cycle it arrives, so neither happens on a clean line.
"""


from amaranth.hdl import Cat, Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .util import check_int

__all__ = ["UARTRx", "UARTTx", "MIN_DIVISOR"]

#: Fewest clock cycles per bit: the receiver needs a middle to sample.
MIN_DIVISOR = 4


class UARTRx(wiring.Component):
    """Serial line to bytes.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (at least :data:`MIN_DIVISOR`).

    Members
    -------
    rx : In(1)
        The serial line (idle high); synchronised inside.
    o : Out(stream.Signature(unsigned(8)))
        Received bytes.
    framing_errors, overruns : Out(8)
        Saturating counts of dropped bytes (a stop bit of 0; a byte complete while
        the one before waits), counted the cycle after the stop bit.

    A start bit is checked in its middle: a low pulse shorter than that (a glitch,
    or the rest of a stop bit held low) starts no byte.
    """

    rx: In(1, init=1)
    o: Out(stream.Signature(unsigned(8)))
    framing_errors: Out(8)
    overruns: Out(8)

    def __init__(self, divisor: int):
        self.divisor = check_int("divisor", divisor, MIN_DIVISOR, 1 << 20)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(d))
        nbit = Signal(range(10))  # 0: the start bit, 1-8: data bits, 9: the stop bit
        shreg = Signal(8)
        busy = Signal()
        framing_error, overrun = Signal(), Signal()  # a byte dropped, the cycle before
        m.d.sync += [framing_error.eq(0), overrun.eq(0)]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        # Each bit is sampled in its middle. A start bit still low there begins a
        # byte; one that is not (a glitch, or the rest of a stop bit held low) does not.
        with m.If(~busy):
            with m.If(~rx):
                m.d.sync += [busy.eq(1), timer.eq(d // 2 - 1), nbit.eq(0)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [timer.eq(d - 1), nbit.eq(nbit + 1)]
            with m.If(nbit == 0):
                with m.If(rx):
                    m.d.sync += busy.eq(0)
            with m.Elif(nbit < 9):
                m.d.sync += shreg.eq(Cat(shreg[1:], rx))
            with m.Else():  # stop bit
                m.d.sync += busy.eq(0)
                with m.If(~rx):
                    m.d.sync += framing_error.eq(1)
                with m.Elif(self.o.valid & ~self.o.ready):
                    m.d.sync += overrun.eq(1)
                with m.Else():
                    m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(shreg)]
        # The counts follow a cycle after the stop bit, from registered events: the
        # stop-bit decision (timer, bit count, line) does not reach the counters,
        # which sit with the host link that reads them.
        with m.If(framing_error & (self.framing_errors != 0xFF)):
            m.d.sync += self.framing_errors.eq(self.framing_errors + 1)
        with m.If(overrun & (self.overruns != 0xFF)):
            m.d.sync += self.overruns.eq(self.overruns + 1)
        return m


class UARTTx(wiring.Component):
    """Bytes to serial line.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit.

    Members
    -------
    i : In(stream.Signature(unsigned(8)))
        Bytes to send; one is taken when the previous one's stop bit ends.
    tx : Out(1)
        The serial line (idle high).
    """

    i: In(stream.Signature(unsigned(8)))
    tx: Out(1, init=1)

    def __init__(self, divisor: int):
        self.divisor = check_int("divisor", divisor, MIN_DIVISOR, 1 << 20)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        timer = Signal(range(d))
        nbit = Signal(range(12))  # bits still to put on the line, plus one for the stop bit's time
        shreg = Signal(10)  # stop, data[7:0], start: sent from bit 0
        m.d.comb += self.i.ready.eq(nbit == 0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shreg.eq((1 << 9) | (self.i.payload << 1)), nbit.eq(11), timer.eq(0)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Elif(nbit > 1):
            m.d.sync += [self.tx.eq(shreg[0]), shreg.eq(shreg >> 1), timer.eq(d - 1),
                         nbit.eq(nbit - 1)]
        with m.Elif(nbit == 1):  # the stop bit has been on the line for a whole bit
            m.d.sync += nbit.eq(0)
        return m
