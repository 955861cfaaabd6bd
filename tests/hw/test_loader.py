"""The load decoder: every word on the bus reaches its target memory a cycle later, alone."""

import numpy as np
import pytest
from amaranth.hdl import Shape
from amaranth.sim import Simulator

from cosparse.hw.loader import LoadDecoder, LoadPort, LoadSignature, load_bus_signature


def test_each_write_lands_in_its_target_the_next_cycle():
    widths = [5, 16, 9]
    dut = LoadDecoder(widths)
    rng = np.random.default_rng(0)
    writes = [(int(rng.integers(0, 2)), int(rng.integers(0, 3)), int(rng.integers(0, 1 << 16)),
               int(rng.integers(0, 1 << 16))) for _ in range(200)]
    seen = {k: [] for k in range(len(widths))}
    want = {k: [(a, d & ((1 << w) - 1)) for en, t, a, d in writes if en and t == k]
            for k, w in enumerate(widths)}

    async def bench(ctx):
        for en, t, a, d in writes:
            ctx.set(dut.bus.en, en)
            ctx.set(dut.bus.target, t)
            ctx.set(dut.bus.addr, a)
            ctx.set(dut.bus.data, d)
            await ctx.tick()
            # After the clock edge that took the bus word: exactly its target writes.
            hits = [k for k in range(len(widths)) if ctx.get(getattr(dut, f"t{k}").en)]
            assert hits == ([t] if en else [])
            for k in hits:
                port = getattr(dut, f"t{k}")
                seen[k].append((ctx.get(port.addr), ctx.get(port.data)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == want


def test_signatures_and_limits():
    assert LoadSignature(8) == LoadSignature(8) != LoadSignature(9)
    assert Shape.cast(load_bus_signature(12).members["data"].shape).width == 12
    with pytest.raises(ValueError, match="at least one target"):
        LoadDecoder([])
    with pytest.raises(ValueError, match="at most 255"):
        LoadDecoder([8] * 256)
    port = LoadPort("weights", 12, 300, tuple(range(300)))
    assert port.member == "load_weights" and port.word_bytes == 2 and port.hw_depth == 300
    port.patch_seed = 7
    assert port.hw_depth == 512 and len(port.hw_init()) == 512
    assert port.hw_init() == port.placeholder() and max(port.placeholder()) < 1 << 12
