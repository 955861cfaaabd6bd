"""sim.gatelevel: a unit's yosys netlist, with yosys's cell models, in Verilator against golden."""

import numpy as np
import pytest

from cosparse.sim.gatelevel import netlist_for
from cosparse.sim.verilate import run_streams

from ..helpers import dense_frames, random_acc, requant_constants, requant_golden, requantizer


@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_requantizer_netlist_equals_golden_under_stalls(tmp_path, family):
    """The requantizer's products become SB_MAC16 (``-dsp``) or MULT18X18D blocks and its
    logic LUTs and carries: the netlist computes what the golden model does."""
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    rng = np.random.default_rng(5)
    C, D, acc_bits = 3, 1, 20
    mult, shift, bias, relu = requant_constants(rng, C, shift_hi=28)
    dut = requantizer(C, D, acc_bits, mult, shift, bias, relu)
    acc = random_acc(rng, (2, 4, C), acc_bits)
    want = dense_frames(requant_golden(acc, mult, shift, bias, relu), D)
    platform = ICEBreakerPlatform() if family == "ice40" else ULX3S_85F_Platform()
    hook = netlist_for(family, tmp_path, "-dsp" if family == "ice40" else "")
    res = run_streams(dut, f"gl_requant_{family}", [("i", dut.in_layout, dense_frames(acc, D))],
                      [("o", dut.out_layout, len(want))], stall=0.3, seed=3,
                      build_root=tmp_path, platform=platform, netlist=hook)
    assert res.outputs[0] == want
    gate = next(tmp_path.glob(f"gate-{family}-*/gate.v")).read_text()
    cell = "SB_MAC16" if family == "ice40" else "MULT18X18D"
    assert cell in gate and ("SB_LUT4" in gate or "LUT4" in gate)  # a netlist, not RTL
