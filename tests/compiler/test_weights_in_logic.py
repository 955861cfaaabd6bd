"""Weights in logic through the compiler: engine choice, lowering, timing, reports, patching."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosparse.boards.catalog import get_board
from cosparse.boards.patch import logic_changes
from cosparse.compiler import api, zoo
from cosparse.compiler.bench import logic_figures
from cosparse.compiler.fold import LOGIC_LUT_SHARE, choose_engines, choose_folding, logic_luts
from cosparse.compiler.folding import Folding, FoldingError, LayerFold
from cosparse.compiler.lower import logic_candidates, lower
from cosparse.compiler.order import to_drain_order
from cosparse.compiler.perf import predict
from cosparse.sim import golden

from ..helpers import dense_frames, run_cli, simulate_io, verilate_io, write_tiny


def io_beats(core, net, x):
    return dense_frames(x, core.input_width), dense_frames(golden.run(net, x), core.out_width)


@st.composite
def first_conv_networks(draw):
    """A random network whose first layer is a conv on a dense map, and a P for it."""
    c = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = tuple(draw(st.integers(0, k - 1)) for k in (kh, kw, kh, kw))
    h, w = draw(st.integers(kh + 1, 7)), draw(st.integers(kw + 1, 7))
    m = draw(st.sampled_from([2, 4, 6, 8]))
    k = draw(st.sampled_from([None, 1, 2]))
    spec = [("conv", m, (kh, kw), k, stride, padding)]
    spec += draw(st.sampled_from([[("relu",)], [("local", max(1, m // 2))], []]))
    spec += [("flatten",), ("logits", draw(st.integers(2, 5)), 1)]
    mode = draw(st.sampled_from(["sparse-sparse", "dense"]))
    seed = draw(st.integers(0, 1000))
    p = draw(st.sampled_from([d for d in range(1, m + 1) if m % d == 0]))
    return (h, w, c), spec, mode, seed, p


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first_conv_networks())
def test_random_networks_with_logic_match_golden_under_stalls(case):
    shape, spec, mode, seed, p = case
    net = to_drain_order(zoo.random_network(shape, spec, seed=seed, mode=mode))
    folding = Folding(input_width=shape[2], layers={"conv0": LayerFold(1, p, None, "logic")})
    assert logic_candidates(net, folding)["conv0"] is None
    core = lower(net, folding)
    assert any(st.unit == "LogicEngine" for st in core.stages)
    assert not any(st.unit in ("ZeroSkip", "OverlayEngine") and st.layer == "conv0"
                   for st in core.stages)
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (2, *shape)).astype(np.int8)
    x[1] = np.where(rng.random(x[1].shape) < 0.5, 0, x[1])
    beats, want = io_beats(core, net, x)
    res = simulate_io(core, beats, len(want), stall=0.3, seed=seed, max_cycles=400_000)
    assert res.outputs[0] == want


def test_reduced_gsc_cs_with_conv1_in_logic_in_verilator():
    """Bit for bit under stalls; back to back, the interval is the performance model's."""
    net = to_drain_order(zoo.gsc_cs(seed=1, reduced=True))
    folding = Folding(1, {"conv1": LayerFold(1, 8, 4, "logic"), "conv2": LayerFold(4, 2),
                          "fc1": LayerFold(4, 6), "fc2": LayerFold(4, 12)})
    core = lower(net, folding)
    x = np.random.default_rng(0).integers(-128, 128, (3, 20, 20, 1)).astype(np.int8)
    beats, want = io_beats(core, net, x)
    res = verilate_io(core, "gsc_reduced_logic", beats, len(want), stall=0.2, seed=3,
                      max_cycles=3_000_000)
    assert res.outputs[0] == want

    x = np.random.default_rng(1).integers(-128, 128, (5, 20, 20, 1)).astype(np.int8)
    beats, want = io_beats(core, net, x)
    res = verilate_io(core, "gsc_reduced_logic", beats, len(want), stall=0.0,
                      max_cycles=5_000_000)
    assert res.outputs[0] == want
    per = len(want) // len(x)
    ends = [res.cycles[0][(f + 1) * per - 1] for f in range(len(x))]
    measured = (ends[-1] - ends[0]) / (len(x) - 1)
    predicted = predict(net, folding, x[1:])
    assert abs(measured - predicted["interval_cycles"]) <= 0.01 * predicted["interval_cycles"], \
        (measured, predicted)


def gsc():
    net = to_drain_order(zoo.gsc_cs(seed=0, reduced=True))
    x = np.random.default_rng(1).integers(-128, 128, (4, *net.input.shape)).astype(np.int8)
    return net, x


def test_auto_takes_the_first_conv_within_the_lut_share():
    net, x = gsc()
    luts = logic_luts(net.layers[1])
    assert choose_engines(net, Folding(), "auto", max_luts=84_000) == {"conv1": luts}
    assert choose_engines(net, Folding(), "auto", max_luts=int(luts / LOGIC_LUT_SHARE) - 1) == {}
    assert choose_engines(net, Folding(), "auto") == {}  # no LUT count: no logic
    assert choose_engines(net, Folding(), "none", max_luts=84_000) == {}
    folding = choose_folding(net, x, max_multipliers=156, weights_in_logic="auto", max_luts=84_000)
    assert folding.logic_layers == ["conv1"]
    without = choose_folding(net, x, max_multipliers=156)
    assert predict(net, folding, x)["interval_cycles"] < predict(net, without, x)["interval_cycles"]
    # the smallest parts keep every layer on its engine
    assert choose_folding(net, x, max_multipliers=8, area_first=True, weights_in_logic="auto",
                          max_luts=5_280).logic_layers == []


@pytest.mark.parametrize("names, message", [
    (["conv2"], "layer conv2 cannot have its weights in logic: it reads the output"),
    (["fc1"], "layer fc1 cannot have its weights in logic: it is a linear layer"),
    (["pool1"], "'pool1' is not a conv or linear layer"),
    ("most", "must be auto, none or a list"),
])
def test_named_layers_that_cannot_be_logic_are_refused(names, message):
    net, _ = gsc()
    with pytest.raises(FoldingError, match=message):
        choose_engines(net, Folding(), names, max_luts=84_000)


def test_a_layer_too_large_for_the_part_is_refused():
    net, _ = gsc()
    with pytest.raises(FoldingError, match="conv1's weights as logic need about"):
        choose_engines(net, Folding(), ["conv1"], max_luts=100)


def test_folding_keeps_the_engine():
    f = Folding(layers={"conv1": LayerFold(1, 8, 4, "logic"), "fc1": LayerFold(2, 3)})
    back = Folding.from_dict(f.to_dict())
    assert back == f and back.logic_layers == ["conv1"]
    assert Folding.from_dict({"layers": {"fc1": {"entries": 2}}}).of("fc1").engine == "dsp"
    with pytest.raises(FoldingError, match="engine must be one of dsp, logic"):
        LayerFold(engine="lut")


def test_patch_sees_a_change_to_logic_weights():
    net, _ = gsc()
    other = to_drain_order(zoo.gsc_cs(seed=5, reduced=True))
    folding = Folding(1, {"conv1": LayerFold(1, 8, None, "logic")})
    assert logic_changes(net, other, folding) == ["conv1"]
    assert logic_changes(net, net, folding) == []
    assert logic_changes(net, other, Folding(1)) == []  # conv1 in memory: patchable


def test_compile_reports_the_logic_layers(tmp_path):
    net, x = gsc()
    acc = api.compile_ir(net, x, board="ulx3s-85f", outdir=tmp_path / "auto")
    assert acc.folding.logic_layers == ["conv1"]
    report = (tmp_path / "auto" / "report.md").read_text()
    assert "| conv1 | overlay_conv |" in report and "| logic | - |" in report
    assert "Weights in logic" in report and "conv1 about" in report
    assert np.array_equal(acc.golden(x, raw=True), golden.run(net, x))
    none = api.compile_ir(net, x, board="ulx3s-85f", weights_in_logic="none")
    assert none.folding.logic_layers == []


def test_cli_refuses_a_layer_that_cannot_be_logic(tmp_path):
    model, cal, _ = write_tiny(tmp_path)
    r = run_cli("compile", model, "--board", "ulx3s-85f", "-o", tmp_path / "out",
                "--calibration", cal, "--weights-in-logic", "nosuch")
    assert r.returncode == 2
    assert "'nosuch' is not a conv or linear layer" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_lut_estimate_against_yosys(tmp_path):
    """The fold's LUT estimate of a logic engine, against yosys's count on ECP5."""
    net = to_drain_order(zoo.gsc_cs(seed=1, reduced=True))
    folding = Folding(1, {"conv1": LayerFold(1, 8, None, "logic")})
    fig = logic_figures(net, folding, get_board("ulx3s-85f"), tmp_path, lambda line: None)["conv1"]
    assert fig["positions_per_cycle"] == 0.5 and fig["sums_per_cycle"] == 8
    assert fig["luts_estimated"] == logic_luts(net.layers[1], 8)
    assert abs(fig["lut_estimate_error"]) < 0.05, fig


def test_compile_folds_within_a_lut_share(tmp_path):
    """``lut_share``: the compiled core stays within that share of the part's LUTs (by the
    area model), trading cycles for them; a share out of range is one paragraph."""
    from cosparse.compiler.area import core_luts

    net = to_drain_order(zoo.gsc_cs(seed=0, mode="sparse-sparse", reduced=True))
    x = np.random.default_rng(1).integers(-128, 128, (4, *net.input.shape), dtype=np.int8)
    small = api.compile_ir(net, x, board="ulx3s-85f", lut_share=0.3)
    full = api.compile_ir(net, x, board="ulx3s-85f")
    assert core_luts(lower(net, small.folding)) <= 0.3 * get_board("ulx3s-85f").luts
    assert core_luts(lower(net, small.folding)) < core_luts(lower(net, full.folding))
    assert small.predicted_interval_cycles > full.predicted_interval_cycles
    model, cal, _ = write_tiny(tmp_path)
    r = run_cli("compile", model, "--board", "ulx3s-85f", "-o", tmp_path / "out",
                "--calibration", cal, "--lut-share", "2")
    assert r.returncode == 2 and "the LUT share (--lut-share) must be from 0.1 to 1, got 2" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
