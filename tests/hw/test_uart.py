"""hw.uart: the receiver's bytes and its counts of dropped bytes."""

import numpy as np
import pytest

from cosparse.hw.uart import UARTRx

from ..helpers import run_sim, uart_bits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_receiver_counts_framing_errors_and_overruns(seed):
    """Random bytes, some with a stop bit of 0 (framing errors, each followed by at least
    one idle bit), sent while the reader takes every byte, then while it takes none (the
    first byte waits, the others are overruns); the bytes read and both counts are
    exact: the rest of a stop bit held low is not taken for a start bit."""
    rng = np.random.default_rng(seed)
    div = int(rng.integers(4, 9))
    dut = UARTRx(div)
    first = [(int(b), bool(rng.random() < 0.3)) for b in rng.integers(0, 256, 12)]
    held = [int(b) for b in rng.integers(0, 256, int(rng.integers(2, 6)))]
    got = []

    async def line(ctx):
        ctx.set(dut.o.ready, 1)
        for byte, bad in first:
            bits = uart_bits(byte)
            bits[-1] = 0 if bad else 1
            for v in bits + [1] * int(rng.integers(bad, 3)):  # then idle a while
                ctx.set(dut.rx, v)
                for _ in range(div):
                    await ctx.tick()
                    if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                        got.append(ctx.get(dut.o.payload))
        ctx.set(dut.o.ready, 0)
        for byte in held:
            for v in uart_bits(byte) + [1]:
                ctx.set(dut.rx, v)
                await ctx.tick().repeat(div)
        await ctx.tick().repeat(2)
        assert ctx.get(dut.framing_errors) == sum(bad for _, bad in first)
        assert ctx.get(dut.overruns) == len(held) - 1
        assert got == [b for b, bad in first if not bad]
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == held[0]

    run_sim(dut, [line])


def test_receiver_ignores_a_glitch_shorter_than_half_a_bit():
    """A low pulse on the idle line that is over before the middle of its would-be
    start bit is not a byte; the byte after it arrives whole."""
    div = 8
    dut = UARTRx(div)
    got = []

    async def line(ctx):
        ctx.set(dut.o.ready, 1)
        for v, cycles in [(0, div // 2 - 1), (1, 2 * div)] + [(b, div) for b in uart_bits(0xA5)] \
                + [(1, 2 * div)]:
            ctx.set(dut.rx, v)
            for _ in range(cycles):
                await ctx.tick()
                if ctx.get(dut.o.valid):
                    got.append(ctx.get(dut.o.payload))
        assert got == [0xA5] and ctx.get(dut.framing_errors) == 0

    run_sim(dut, [line])
