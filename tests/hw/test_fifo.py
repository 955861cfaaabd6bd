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

from cosparse.boards.bitstream import collision_free_rtlil
from cosparse.hw.fifo import BufferedFIFO

from ..helpers import run_sim


def _pair(width: int, depth: int, lut_ram: bool):
    m = Module()
    m.submodules.ours = ours = BufferedFIFO(width=width, depth=depth, lut_ram=lut_ram)
    m.submodules.ref = ref = SyncFIFOBuffered(width=width, depth=depth)
    return m, ours, ref


@settings(max_examples=40, deadline=None)
@given(depth=st.integers(1, 20), width=st.integers(1, 24), p_write=st.floats(0.1, 1.0),
       p_read=st.floats(0.1, 1.0), seed=st.integers(0, 2**32 - 1), lut_ram=st.booleans())
def test_matches_sync_fifo_buffered(depth, width, p_write, p_read, seed, lut_ram):
    """Random writes and reads (both FIFOs see the same enables), the head in LUT RAM
    or behind a block RAM's register: the same ready flags and level every cycle, and
    the same word whenever one is readable."""
    m, ours, ref = _pair(width, depth, lut_ram)
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


def test_storage_collisions_left_undefined_on_the_board():
    """The storage carries no_rw_check, so the board flow sets its read port's
    COLLISION_X_MASK (a read never meets a write of the same word)."""
    f = BufferedFIFO(width=130, depth=58)
    text = rtlil.convert(f, name="top", ports=[f.w_data, f.w_en, f.w_rdy, f.r_data, f.r_en,
                                               f.r_rdy, f.level])
    assert "attribute \\no_rw_check 1" in text
    assert re.findall(r"COLLISION_X_MASK (\S+)", collision_free_rtlil(text)) == ["1'1"]
