"""The gsc-cs benchmark, small: the reduced network, no place and route (what CI can afford)."""

import json

import numpy as np
import pytest

from cosparse.compiler import bench, zoo
from cosparse.compiler.cli import main
from cosparse.compiler.order import to_drain_order

KEYS = ["interval_cycles", "latency_cycles", "fmax_mhz", "inferences_per_s", "multipliers",
        "mac_utilization", "luts", "ffs", "dsps", "brams", "fits"]


def test_useful_macs_by_mode():
    nets = {m: to_drain_order(zoo.gsc_cs(seed=3, mode=m, reduced=True)) for m in bench.MODES}
    x = np.random.default_rng(0).integers(-128, 128, (3, 20, 20, 1), dtype=np.int8)
    macs = {m: bench.useful_macs(nets[m], x, m) for m in bench.MODES}
    # dense: every weight at every position (conv1 16x25 at 16x16, conv2 16x400 at 4x4, ...)
    assert macs["dense"] == {"conv1": 16 * 25 * 256, "conv2": 16 * 400 * 16, "fc1": 96 * 64,
                             "fc2": 12 * 96}
    # complementary sparse weights: 1/K of them (conv1 K=2, conv2 K=8, fc1 K=8, fc2 dense)
    assert macs["sparse-weights"] == {"conv1": 16 * 25 * 256 / 2, "conv2": 16 * 400 * 16 / 8,
                                      "fc1": 96 * 64 / 8, "fc2": 12 * 96}
    for name in macs["dense"]:
        assert 0 < macs["sparse-sparse"][name] <= macs["sparse-weights"][name]
    # k-WTA keeps 12 of fc1's 96 outputs: fc2 sees 12 active inputs of 96
    assert macs["sparse-sparse"]["fc2"] <= 12 * 12


def test_float_model_runs_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    net = zoo.gsc_cs(seed=0, reduced=True)
    model = bench.float_onnx(net)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": np.random.default_rng(0).standard_normal((5, 1, 20, 20),
                                                                          dtype=np.float32)})[0]
    assert y.shape == (5, 12) and np.isfinite(y).all() and np.abs(y).max() > 0
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 2 and ops.count("Gemm") == 2 and ops.count("TopK") == 3


def test_bench_reduced_without_place_and_route(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "-o", str(out), "--reduced", "--no-pnr", "-n", "4"]) == 0
    res = json.loads((out / "bench.json").read_text())
    assert res["network"] == "gsc-cs-reduced" and res["board"] == "ulx3s-85f"
    assert res["onnxruntime_cpu_inferences_per_s"] > 0
    assert res["route"] is False and res["minutes"] == bench.DEFAULT_MINUTES < 30
    modes = {m["mode"]: m for m in res["modes"]}
    assert list(modes) == ["dense", "sparse-weights", "sparse-sparse"]
    for mode, m in modes.items():
        assert all(k in m for k in KEYS), mode
        assert m["bit_exact"] is True
        assert m["interval_cycles"] > 0 and m["latency_cycles"] >= m["interval_cycles"] * 0.5
        assert 0 < m["mac_utilization"] <= 1
        # the performance model is measured against the simulation, not assumed
        assert m["interval_cycles"] == pytest.approx(m["predicted_interval_cycles"], rel=0.15)
        assert m["fmax_mhz"] is None and m["inferences_per_s"] is None  # no nextpnr here
        assert m["fmax_kind"] is None
        assert m["fits"] is True and m["place_and_route"] == "not run"
    # cycles compared at equal multipliers: dense is folded for sparse-sparse's engines
    assert modes["dense"]["multipliers"] <= modes["sparse-sparse"]["multipliers"]
    assert modes["dense"]["useful_macs"] > modes["sparse-sparse"]["useful_macs"]
    ratio = res["sparse_sparse_over_dense"]
    assert ratio["cycles"] == pytest.approx(
        modes["dense"]["interval_cycles"] / modes["sparse-sparse"]["interval_cycles"], rel=0.01)
    assert ratio["cycles_per_multiplier"] == pytest.approx(
        ratio["cycles"] * modes["dense"]["multipliers"] / modes["sparse-sparse"]["multipliers"],
        rel=0.01)
    md = (out / "bench.md").read_text()
    assert "| sparse-sparse |" in md and "45,455" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_bad_arguments(tmp_path, capsys):
    assert main(["bench", "-o", str(tmp_path), "--mode", "sparse", "--no-pnr"]) == 2
    assert "unknown mode 'sparse'" in capsys.readouterr().err
    assert main(["bench", "-o", str(tmp_path), "-n", "1", "--no-pnr"]) == 2
    assert "--count must be at least 2" in capsys.readouterr().err
    assert main(["bench", "-o", str(tmp_path), "--minutes", "0", "--no-pnr"]) == 2
    assert "--minutes must be positive, got 0" in capsys.readouterr().err
    assert main(["bench", "-o", str(tmp_path), "--route", "--pnr-minutes", "60"]) == 2
    assert "--route lets every place and route finish" in capsys.readouterr().err
    assert main(["bench", "-o", str(tmp_path), "--lut-share", "1.5", "--no-pnr"]) == 2
    assert "the LUT share (--lut-share) must be from 0.1 to 1, got 1.5" in capsys.readouterr().err


def test_fits_cell_names_what_a_mode_needs():
    # nextpnr's log of a build over the part (gsc-cs sparse weights before the fold
    # counted block RAM), and the estimate for a mode that is not placed
    need = {"luts": 70710, "luts_available": 83640, "brams": 231, "brams_available": 208}
    assert bench.over_part(need) == ["brams"]
    assert bench.fits_cell({"fits": False, "pnr_needs": need}) == "no (231 of 208 block RAMs)"
    assert (bench.fits_cell({"fits": False, "brams_estimated": 1315})
            == "no (about 1,315 block RAMs)")
    assert bench.fits_cell({"fits": True, "pnr_needs": need}) == "yes"


def test_mode_over_the_parts_block_ram_is_still_simulated(tmp_path):
    """A mode benched alone whose memories do not fit the part even at the least
    parallelism (gsc-cs dense: about 1,274 block RAMs of 208) is folded for the
    multipliers, reported as not fitting with what it needs, and simulated."""
    from dataclasses import replace

    from cosparse.compiler.build import resolve_board
    from cosparse.compiler.fold import board_block_rams

    tiny = replace(resolve_board("ulx3s-85f"), bram_kbit=18 * 8)  # 8 DP16KD
    row, stages, job = bench.bench_mode("dense", board=tiny, count=2, seed=0, reduced=True,
                                         pnr=True, outdir=tmp_path, progress=lambda s: None)
    assert job is None  # nothing to place
    assert row["fits"] is False  # (and bench_mode checked its outputs against golden)
    assert row["brams_estimated"] > board_block_rams(tiny)
    assert "block RAMs" in row["place_and_route"] and bench.fits_cell(row).startswith("no (about")
    assert row["interval_cycles"] > 0 and stages


#: A nextpnr-ecp5 log up to the start of routing (the timing after placement).
PLACED_LOG = """\
Info: Device utilisation:
Info: \t              DP16KD:     147/    208    70%
Info: \t          MULT18X18D:     149/    156    95%
Info: \t          TRELLIS_FF:   25560/  83640    30%
Info: \t        TRELLIS_COMB:   61882/  83640    73%
Info: SA placement time 49.87s

Info: Max frequency for clock '$glbnet$clk': 55.04 MHz (FAIL at 100.00 MHz)

Info: Routing globals...
Info:     routing clock net $glbnet$clk using global 0

Info: Routing..
Info: Routing 46285 arcs.
Info:            |   (re-)routed arcs  |   delta    | remaining|       time spent     |
Info:       1000 |        0       1000 |    0  1000 |     45285|       0.57       0.57|
"""

#: The rest of a log whose routing finished: the timing after routing.
ROUTED_TAIL = """\
Info: Routing complete.
Info: Router1 time 731.18s
Info: Critical path report for clock '$glbnet$clk' (posedge -> posedge):
Info: Max frequency for clock '$glbnet$clk': 64.81 MHz (FAIL at 100.00 MHz)
Info: Program finished normally.
"""


def test_fmax_kind_from_a_routed_and_a_stopped_nextpnr_log(tmp_path):
    from cosparse.boards.bitstream import nextpnr_log_figures

    stopped, routed = tmp_path / "stopped.tim", tmp_path / "routed.tim"
    stopped.write_text(PLACED_LOG)
    routed.write_text(PLACED_LOG + ROUTED_TAIL)
    fs, fr = nextpnr_log_figures(stopped, "ecp5"), nextpnr_log_figures(routed, "ecp5")
    assert fs["fmax_mhz_after_placement"] == fr["fmax_mhz_after_placement"] == 55.04
    assert fs["fmax_mhz_routed"] is None and fr["fmax_mhz_routed"] == 64.81
    assert fs["luts"] == fr["luts"] == 61882
    assert bench.fmax_of(fs) == {"fmax_mhz": 55.04, "fmax_kind": "estimated",
                                 "fmax_source": "nextpnr's estimate after placement "
                                                "(routing stopped)"}
    assert bench.fmax_of(fr) == {"fmax_mhz": 64.81, "fmax_kind": "routed",
                                 "fmax_source": "nextpnr, routed"}
    placing = tmp_path / "placing.tim"  # stopped before placement ended
    placing.write_text(PLACED_LOG.split("Info: SA placement")[0])
    assert bench.fmax_of(nextpnr_log_figures(placing, "ecp5")) == {
        "fmax_mhz": None, "fmax_kind": None, "fmax_source": None}


def test_bench_rows_say_whether_fmax_is_routed_or_estimated(tmp_path, monkeypatch):
    """The place-and-route job's row, from a run stopped at the bench's deadline and from
    a routed one that missed the board's clock; bench.md marks the estimate alone."""
    from cosparse.boards.bitstream import BitstreamError, PlaceRouteTimeout, nextpnr_log_figures
    from cosparse.compiler.build import resolve_board

    log = tmp_path / "stopped.tim"
    log.write_text(PLACED_LOG)
    builds = []

    def compile_network(net, sample, *, outdir, **kw):
        outdir.mkdir(parents=True)

    def build_bitstream(build, *, lower_clock=True, **kw):
        builds.append(lower_clock)
        if build.name == "sparse-weights":
            raise PlaceRouteTimeout("place and route (nextpnr-ecp5) did not finish in 29.0 min "
                                    "(stopped)", nextpnr_log_figures(log, "ecp5"))
        (build / "bitstream.json").write_text(json.dumps(
            {"fmax_mhz": 64.81, "luts": 61882, "ffs": 25560, "dsps": 149, "brams": 147,
             "timing_met": False}))
        raise BitstreamError("the design misses timing on ulx3s-85f")

    monkeypatch.setattr(bench, "compile_network", compile_network)
    monkeypatch.setattr(bench, "build_bitstream", build_bitstream)
    board = resolve_board("ulx3s-85f")
    rows = []
    for mode, interval in (("sparse-weights", 24_000.0), ("sparse-sparse", 7_049.0)):
        row = {"mode": mode, "interval_cycles": interval, "latency_cycles": 3 * int(interval),
               "multipliers": 131, "mac_utilization": 0.86, "fmax_mhz": None,
               "fmax_kind": None, "inferences_per_s": None, "luts": None, "ffs": None,
               "dsps": None, "brams": None, "fits": True}
        bench.place_and_route(row, None, None, {}, board, tmp_path, lambda s: None, None)
        rows.append(row)
    assert builds == [False, False]  # the bench measures Fmax at the board's clock
    est, routed = rows
    assert est["fmax_kind"] == "estimated" and est["fmax_mhz"] == 55.04
    assert est["inferences_per_s"] == round(55.04e6 / 24_000)
    assert routed["fmax_kind"] == "routed" and routed["fmax_mhz"] == 64.81
    assert routed["inferences_per_s"] == round(64.81e6 / 7_049)
    res = {"board": board.name, "network": "gsc-cs", "modes": rows, "minutes": 29.0,
           "onnxruntime_cpu": {"onnxruntime": "1", "cpus": 2, "batch_1": 1.0, "best": 2.0,
                               "best_batch": 4}}
    table = {ln.split(" | ")[0]: ln for ln in bench.bench_markdown(res).splitlines()
             if ln.startswith("| sparse")}
    assert "| 55.0* | 2,293* |" in table["| sparse-weights"]
    assert "| 64.8 | 9,194 |" in table["| sparse-sparse"]
    assert "routing was stopped at the bench's 29-minute limit" in bench.bench_markdown(res)


@pytest.mark.parametrize("args,message", [
    (["--inputs", "x.npy"], "go with --model"),
    (["--model", "m.onnx"], "--model needs --inputs"),
    (["--model", "m.onnx", "--inputs", "x.npy", "--reduced"], "--reduced applies to"),
    (["--model", "m.onnx", "--inputs", "missing.npy"], "cannot read the inputs"),
])
def test_bench_model_options_are_checked(tmp_path, capsys, args, message):
    assert main(["bench", "-o", str(tmp_path / "b"), "--no-pnr", *args]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
