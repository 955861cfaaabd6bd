"""BufferedFIFO: SyncFIFOBuffered's behaviour cycle for cycle, with its head in LUT RAM."""

import re

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth_boards.ulx3s import ULX3S_85F_Platform
from hypothesis import given, settings
from hypothesis import strategies as st

from cosparse.hw.fifo import BufferedFIFO

from ..helpers import run_sim


def _pair(width: int, depth: int):
    m = Module()
    m.submodules.ours = ours = BufferedFIFO(width=width, depth=depth, lut_ram=True)
    m.submodules.ref = ref = SyncFIFOBuffered(width=width, depth=depth)
    return m, ours, ref


@settings(max_examples=30, deadline=None)
@given(depth=st.integers(2, 20), width=st.integers(1, 24), p_write=st.floats(0.1, 1.0),
       p_read=st.floats(0.1, 1.0), seed=st.integers(0, 2**32 - 1))
def test_lut_ram_head_matches_sync_fifo_buffered(depth, width, p_write, p_read, seed):
    """Random writes and reads (both FIFOs see the same enables): the same ready flags
    and level every cycle, and the same word whenever one is readable."""
    m, ours, ref = _pair(width, depth)
    rng = np.random.default_rng(seed)
    seen = {"reads": 0}

    async def bench(ctx):
        for _ in range(300):
            w_en, r_en = int(rng.random() < p_write), int(rng.random() < p_read)
            data = int(rng.integers(0, 1 << width))
            for f in (ours, ref):
                ctx.set(f.w_en, w_en)
                ctx.set(f.w_data, data)
                ctx.set(f.r_en, r_en)
            for name in ("w_rdy", "r_rdy", "level"):
                assert ctx.get(getattr(ours, name)) == ctx.get(getattr(ref, name)), name
            if ctx.get(ref.r_rdy):
                assert ctx.get(ours.r_data) == ctx.get(ref.r_data)
                seen["reads"] += r_en
            await ctx.tick()

    run_sim(m, [bench])
    assert seen["reads"] > 0


@pytest.mark.parametrize("depth, width, lut_ram", [
    (6, 120, True),  # the overlay drain's: 720 bits
    (8, 305, True),  # a logic engine's output: 8 x 305, LUT RAM on ECP5
    (58, 130, False),  # a pooled row's: block RAM
    (1, 16, False),  # one word: SyncFIFOBuffered's register
])
def test_head_in_lut_ram_only_on_ecp5_where_it_fits(depth, width, lut_ram):
    """On ECP5 a FIFO that goes to LUT RAM reads its head asynchronously (no output
    register); elsewhere, and on other platforms, it is SyncFIFOBuffered."""
    def read_ports(platform):
        """CLK_ENABLE of each memory read port (1: synchronous)."""
        f = BufferedFIFO(width=width, depth=depth)
        text = rtlil.convert(f, name="top", platform=platform, ports=[
            f.w_data, f.w_en, f.w_rdy, f.r_data, f.r_en, f.r_rdy, f.level])
        return [re.search(r"CLK_ENABLE (\d)", c)[1]
                for c in re.findall(r"cell \$memrd_v2 .*?\n *end", text, re.S)]

    assert read_ports(ULX3S_85F_Platform()) == (["0"] if lut_ram else
                                                ["1"] if depth > 1 else [])
    assert read_ports(None) == (["1"] if depth > 1 else [])
