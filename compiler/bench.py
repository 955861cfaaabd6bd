"""``cosparse bench``: the gsc-cs network, dense vs sparse weights vs sparse-sparse.

For each mode of :func:`cosparse.compiler.zoo.gsc_cs` on one board
(ULX3S-85F by default): fold the network for the board's DSP blocks,
simulate the core in Verilator on back-to-back random inputs (latency,
interval, outputs checked against the golden model bit for bit, the
performance model beside them), count the useful MACs and the MAC
utilisation, optionally (``pnr``) build the bitstream for Fmax and
resources, and run ONNX Runtime on the float model on this machine's CPU.
Writes ``bench.json``, ``bench.md`` and ``bench.png`` into the output
folder. See docs/benchmark.md, 'Method'.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cosparse.boards.bitstream import (TOP_NAME, PlaceRouteTimeout, build_bitstream, synth_unit,
                                       nextpnr_log_figures)
from cosparse.boards.top import platform_for
from cosparse.hw.logic import LogicEngine
from cosparse.sim import golden
from cosparse.sim.netsim import simulate_network

from . import ir, zoo
from .build import compile_network, resolve_board, weight_memory_bits
from .frontend import import_onnx, to_ir_input
from .errors import CosparseError
from .fold import (LUT_SHARE, FoldingError, block_rams, board_block_rams, check_lut_share,
                   choose_folding, multipliers)
from .lower import lower
from .order import restore_output_order, to_drain_order
from .packer import unpack
from .perf import stage_cycles

__all__ = ["run_bench", "mac_counts", "useful_macs", "float_onnx", "onnxruntime_throughput", "MODES",
           "PAPER", "bench_mode", "place_and_route", "bench_markdown", "over_part", "fits_cell",
           "fmax_of", "DEFAULT_MINUTES", "ROUTE_MINUTES"]

MODES = ("dense", "sparse-weights", "sparse-sparse")

#: The bench's time limit (minutes): every nextpnr still running then is stopped and
#: reports its estimate after placement, so the whole bench stays under 30 minutes.
DEFAULT_MINUTES = 29.0
#: The limit with ``route``: long enough for gsc-cs's place and route to finish (60-90
#: minutes of YoWASP's nextpnr-ecp5, the placed modes side by side, one per core).
ROUTE_MINUTES = 150.0

#: The paper's figures for its speech network, one network instance (docs/benchmark.md).
PAPER = {
    "zu3eg_sparse_sparse_inferences_per_s": 45_455,
    "u250_sparse_sparse_inferences_per_s": 102_564,
    "sparse_sparse_over_dense": 33.6,
}


def mac_counts(net: ir.Network, x: np.ndarray) -> dict[str, dict[str, float]]:
    """Multiply-accumulates per inference of every overlay layer, in each mode.

    Per layer name: ``dense``, every weight of the dense layer at every
    output position; ``sparse-weights``, every non-zero weight at every
    position; ``sparse-sparse``, products of a non-zero weight and a non-zero
    input (mean over the inputs ``x``).
    """
    acts = [np.asarray(x)]
    for layer in net.layers:
        acts.append(golden.run_layer(layer, acts[-1]))
    out = {}
    for layer, inp in zip(net.layers, acts):
        if not isinstance(layer, ir.OverlayLayer):
            continue
        ov = layer.overlays
        nnz_row = (unpack(ov) != 0).sum(axis=0)  # non-zero weights per fan-in index
        if isinstance(layer, ir.OverlayConv):
            cols = golden.im2col(inp, layer)
            positions = cols.shape[1] * cols.shape[2]
            active = (cols != 0).reshape(len(inp), -1, ov.fan_in)
        else:
            positions = 1
            active = (inp != 0).reshape(len(inp), 1, ov.fan_in)
        out[layer.name] = {
            "dense": float(ov.num_kernels * ov.fan_in * positions),
            "sparse-weights": float(nnz_row.sum() * positions),
            "sparse-sparse": float((active @ nnz_row).sum(axis=1).mean())}
    return out


def useful_macs(net: ir.Network, x: np.ndarray, mode: str) -> dict[str, float]:
    """The useful MACs of ``mode`` per overlay layer (see :func:`mac_counts`)."""
    return {name: c[mode] for name, c in mac_counts(net, x).items()}


def float_onnx(net: ir.Network):
    """A float ONNX model of a network (NCHW input) for ONNX Runtime's throughput.

    The same layers, shapes, weights and biases (as floats, weights / 64,
    biases / 64**2): convolutions, max pools, local k-WTA (threshold form
    over the channels), flatten in HWC order (as the IR), Gemm, global
    k-WTA (top-k threshold) -- the graph a PyTorch export of the network
    would hold. Requantization is not carried, so its outputs are not the
    integer network's; k-WTA boosts are refused.
    """
    nodes, inits = [], []
    shape = net.input.shape
    nchw = len(shape) == 3
    cur = "input"
    inp = helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, ["batch", shape[2], shape[0], shape[1]] if nchw
        else ["batch", shape[0]])

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, ins, **attrs):
        out = f"{op.lower()}{len(nodes)}"
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    def bias(layer):
        return (np.asarray(layer.bias, np.float32) / 64.0 ** 2).astype(np.float32)

    def kwta(x, k, axis):
        vals = f"topk{len(nodes)}_v"
        nodes.append(helper.make_node("TopK", [x, const(f"k{len(nodes)}", np.array([k], np.int64))],
                                      [vals, f"topk{len(nodes)}_i"], axis=axis))
        thr = node("Slice", [vals, const(f"s{len(nodes)}", np.array([k - 1], np.int64)),
                             const(f"e{len(nodes)}", np.array([k], np.int64)),
                             const(f"a{len(nodes)}", np.array([axis], np.int64))])
        mask = node("Cast", [node("GreaterOrEqual", [x, thr])], to=TensorProto.FLOAT)
        return node("Mul", [x, mask])

    layout = "nchw" if nchw else "flat"
    for layer in net.layers:
        if isinstance(layer, (ir.ZeroSkip, ir.Densify)):
            continue
        if isinstance(layer, (ir.LocalKWTA, ir.GlobalKWTA)) and layer.boost is not None:
            raise CosparseError(f"float_onnx: k-WTA {layer.name!r} has a boost, which the "
                                "float export does not carry")
        if isinstance(layer, ir.OverlayConv):
            w = unpack(layer.overlays).astype(np.float32) / 64.0
            kh, kw = layer.kernel
            w = w.reshape(len(w), kh, kw, -1).transpose(0, 3, 1, 2)
            pt, pl, pb, pr = layer.padding
            cur = node("Conv", [cur, const(f"{layer.name}.w", np.ascontiguousarray(w)),
                                const(f"{layer.name}.b", bias(layer))],
                       kernel_shape=[kh, kw], strides=list(layer.stride),
                       pads=[pt, pl, pb, pr])
        elif isinstance(layer, ir.MaxPool):
            cur = node("MaxPool", [cur], kernel_shape=list(layer.kernel),
                       strides=list(layer.stride))
        elif isinstance(layer, ir.LocalKWTA):
            cur = kwta(cur, layer.k, 1)
        elif isinstance(layer, ir.Flatten):
            cur = node("Flatten", [node("Transpose", [cur], perm=[0, 2, 3, 1])], axis=1)
            layout = "flat"
        elif isinstance(layer, ir.OverlayLinear):
            w = unpack(layer.overlays).astype(np.float32) / 64.0
            cur = node("Gemm", [cur, const(f"{layer.name}.w", w),
                                const(f"{layer.name}.b", bias(layer))],
                       transB=1)
        elif isinstance(layer, ir.GlobalKWTA):
            if layout != "flat":
                raise CosparseError(f"float_onnx: global k-WTA {layer.name!r} on a map is not "
                                    "exported (only after Flatten)")
            cur = kwta(cur, layer.k, 1)
        else:
            raise CosparseError(f"float_onnx: layer {layer.name!r} ({layer.kind}) has no export")
    out = helper.make_tensor_value_info(cur, TensorProto.FLOAT,
                                        ["batch", int(np.prod(net.output.shape))])
    graph = helper.make_graph(nodes, net.name, [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def onnxruntime_throughput(model, input_shape: tuple[int, ...], *,
                           batches=(1, 4, 16, 64, 256), seconds: float = 1.0) -> dict:
    """ONNX Runtime CPU inferences/s of ``model`` at each batch size (its default threads)."""
    import onnxruntime as ort  # optional (cosparse[bench]); heavy

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    per_batch = {}
    for b in batches:
        x = rng.standard_normal((b, *input_shape)).astype(np.float32)
        sess.run(None, {name: x})  # warm-up
        n, t0 = 0, time.perf_counter()
        while True:
            sess.run(None, {name: x})
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds and n >= 3:
                break
        per_batch[b] = round(n * b / dt, 1)
    best = max(per_batch, key=per_batch.get)
    return {"batch_1": per_batch[batches[0]] if batches[0] == 1 else None,
            "best": per_batch[best], "best_batch": best, "per_batch": per_batch,
            "onnxruntime": ort.__version__, "cpus": os.cpu_count()}


class ZooSource:
    """The gsc-cs network of :func:`cosparse.compiler.zoo.gsc_cs` with random weights,
    on random int8 inputs."""

    def __init__(self, seed: int, reduced: bool):
        self.seed, self.reduced = seed, reduced

    def network(self, mode: str) -> ir.Network:
        return zoo.gsc_cs(seed=self.seed, mode=mode, reduced=self.reduced)

    def inputs(self, net: ir.Network, count: int) -> np.ndarray:
        return np.random.default_rng(self.seed + 1).integers(
            -128, 128, (count, *net.input.shape), dtype=np.int8)

    def onnx_model(self, net: ir.Network) -> tuple[object, tuple[int, ...]]:
        return float_onnx(net), (net.input.shape[2], *net.input.shape[:2])

    def describe(self, net: ir.Network) -> dict:
        return {"network": net.name, "weights": "random", "seed": self.seed}


class ModelSource:
    """A trained ONNX model (float or QDQ) on its own float inputs ``[N, *input shape]``
    (the model's layout), with their labels where given: each mode compiles the model
    with the inputs as calibration data; the golden model's accuracy is reported."""

    def __init__(self, model: str | os.PathLike, inputs: str | os.PathLike,
                 labels: str | os.PathLike | None = None):
        self.path = Path(model)
        self.x = _load_array(inputs, "inputs", float_only=True)
        self.labels = None if labels is None else _load_array(labels, "labels")
        if self.labels is not None and (self.labels.ndim != 1 or len(self.labels) != len(self.x)
                                        or self.labels.dtype.kind not in "iu"):
            raise CosparseError(f"labels {labels}: want one integer class per input "
                                f"({len(self.x)}), got {self.labels.dtype} "
                                f"{list(self.labels.shape)}")
        self._nets: dict[str, ir.Network] = {}

    def network(self, mode: str) -> ir.Network:
        if mode not in self._nets:
            self._nets[mode] = import_onnx(self.path, calibration=self.x[:256], mode=mode)
        return self._nets[mode]

    def inputs(self, net: ir.Network, count: int) -> np.ndarray:
        picks = np.resize(np.arange(len(self.x)), count)  # the inputs in turn, repeated
        return to_ir_input(net, self.x[picks])

    def onnx_model(self, net: ir.Network) -> tuple[object, tuple[int, ...]]:
        return onnx.load(str(self.path)), tuple(self.x.shape[1:])

    def describe(self, net: ir.Network) -> dict:
        d = {"network": net.name, "weights": "trained", "model": self.path.name,
             "quantization": net.meta.get("quantization"), "model_inputs": int(len(self.x))}
        if self.labels is not None:
            y = golden.run(net, self.inputs(net, len(self.x)))
            pred = restore_output_order(net, y).argmax(axis=-1)
            d["golden_accuracy"] = round(float(np.mean(pred == self.labels)), 4)
        return d


def _load_array(path: str | os.PathLike, what: str, float_only: bool = False) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CosparseError(f"cannot read the {what} {path} as a .npy array ({e})") from None
    if float_only and (a.dtype.kind != "f" or a.ndim < 2 or len(a) < 1
                       or not np.all(np.isfinite(a))):
        raise CosparseError(f"{what} {path}: want finite float inputs [N, *input shape] in "
                            f"the model's layout, got {a.dtype} {list(a.shape)}")
    return a.astype(np.float32) if float_only else a


def bench_mode(mode: str, *, board, count: int, seed: int, reduced: bool, pnr: bool,
               outdir: Path, progress: Callable[[str], None],
               engine_budget: int | None = None, pnr_minutes: float | None = None,
               pnr_deadline: float | None = None, source=None,
               lut_share: float = LUT_SHARE) -> tuple[dict, list, object]:
    """Fold, simulate and measure one mode of the gsc-cs network: one row of the bench.

    Parameters
    ----------
    mode : str
        One of :data:`MODES`.
    board : Board
        The board the mode is folded for (its multipliers and block RAM).
    count : int
        Back-to-back inferences simulated in Verilator (at least 2).
    seed : int
        Seed of the network and of its random inputs.
    reduced : bool
        The reduced network (20x20 input) in place of the full one.
    pnr : bool
        Return a place-and-route job when the mode fits the board.
    outdir : Path
        The bench's folder; the simulation builds under ``outdir / "sim" / mode``.
    progress : callable
        Called with a line of text as the mode's steps go.
    engine_budget : int or None
        Fold for at most this many engine multipliers (to compare cycles with
        another mode) in place of the board's budget.
    pnr_minutes, pnr_deadline : float or None
        Passed to the place-and-route job: its time cap and the bench's deadline.
    source : ZooSource or ModelSource, optional
        The network and its inputs (default: ``ZooSource(seed, reduced)``).
    lut_share : float
        The share of the part's LUTs the fold may fill (:func:`choose_folding`).

    Returns
    -------
    row : dict
        The mode's figures (``bench.json``'s row); place-and-route figures ``None``.
    stages : list of dict
        The predicted cycles of each stage.
    job : callable or None
        Runs place and route and fills ``row``; ``None`` without ``pnr`` or when
        the mode does not fit.

    Raises
    ------
    CosparseError
        The Verilator outputs differ from the golden model's.
    """
    source = source or ZooSource(seed, reduced)
    net = to_drain_order(source.network(mode))
    x = source.inputs(net, count)
    sample = x[:8]
    bram_budget = board_block_rams(board)
    if engine_budget is None:
        try:
            folding = choose_folding(net, sample, max_multipliers=board.multipliers,
                                     weights_in_logic="auto", max_luts=board.luts,
                                     max_block_rams=bram_budget, lut_share=lut_share)
        except FoldingError:
            # Not even the least parallelism's memories fit the part (dense, benched
            # alone): fold for its multipliers; the row says what the mode needs, and
            # its cycles still come from simulation.
            folding = choose_folding(net, sample, max_multipliers=board.multipliers,
                                     weights_in_logic="auto", max_luts=board.luts,
                                     lut_share=lut_share)
    else:  # the same engine multipliers as another mode, for the cycles comparison
        folding = choose_folding(net, sample, max_multipliers=engine_budget, engines_only=True,
                                 weights_in_logic="auto", max_luts=board.luts,
                                 lut_share=lut_share)
    mults = multipliers(net, folding)
    stages = stage_cycles(net, folding, x)
    weight_kbit = sum(weight_memory_bits(layer) for layer in net.layers
                      if isinstance(layer, ir.OverlayLayer)
                      and not folding.of(layer.name).in_logic) / 1024
    brams = block_rams(net, folding, board.family)  # the core's, estimated (ECP5)
    macs = useful_macs(net, x, mode)
    worst = max(stages, key=lambda s: s.mean)
    predicted = worst.mean
    progress(f"{mode}: {mults} multipliers; simulating {count} back-to-back inferences in "
             f"Verilator (about {predicted * count:,.0f} cycles predicted)")
    t0 = time.perf_counter()
    # A mode that fits: the core as the board's bitstream elaborates it (ECP5: every
    # product a MULT18X18D with its registers, by its Verilog model), so the cycles are
    # the board's. One that does not (dense: 160k cycles an inference) runs generic,
    # whose intervals are the same and which Verilator runs faster.
    fits = weight_kbit <= board.bram_kbit and (brams is None or brams <= bram_budget)
    as_board = fits and board.family != "sim"
    run = simulate_network(
        net, folding, x, build_root=outdir / "sim" / mode, name=f"gsc_{mode.replace('-', '_')}",
        chunk=max(8, min(64, count)), platform=platform_for(board) if as_board else None,
        progress=lambda done, total: progress(f"{mode}: {done}/{total} inferences simulated "
                                              f"({time.perf_counter() - t0:.0f} s)"))
    sim_s = time.perf_counter() - t0
    exact = bool(np.array_equal(run.outputs, golden.run(net, x)))
    if not exact:
        raise CosparseError(f"bench {mode}: the Verilator outputs differ from the golden model")
    interval = float(run.interval_cycles)
    useful = sum(macs.values())
    on_dsps = sum(v for k, v in macs.items() if not folding.of(k).in_logic)
    logic = logic_figures(net, folding, board, outdir / "synth" / mode if pnr else None, progress)
    row = {"mode": mode, "interval_cycles": round(interval, 1),
           "latency_cycles": int(run.latency_cycles), "multipliers": mults,
           "useful_macs": round(useful), "macs_per_layer": {k: round(v) for k, v in macs.items()},
           "mac_utilization": round(on_dsps / (mults * interval), 4) if mults else None,
           "logic_layers": logic,
           "predicted_interval_cycles": round(predicted, 1),
           "bottleneck": f"{worst.layer}:{worst.unit}",
           "folding": folding.to_dict(), "weight_kbit": round(weight_kbit, 1),
           "bram_kbit": board.bram_kbit, "bit_exact": exact, "inputs": count,
           "simulation_seconds": round(sim_s, 1),
           "fmax_mhz": None, "fmax_kind": None, "inferences_per_s": None, "luts": None,
           "ffs": None,
           "dsps": None, "brams": None, "brams_estimated": brams, "fits": fits,
           "simulated_as": f"{board.name} elaboration" if as_board else "generic",
           "place_and_route": "not run"}
    if not row["fits"]:
        row["place_and_route"] = (
            f"does not fit {board.name}: weights need {row['weight_kbit']:,.0f} kbit of block "
            f"RAM, the part has {board.bram_kbit:,}"
            + ("" if brams is None else
               f"; its memories need about {brams:,} block RAMs (each weight-memory read port "
               f"a copy), the part leaves the core {bram_budget}"))
    stage_rows = [{"layer": s.layer, "unit": s.unit, "cycles": round(s.mean, 1)} for s in stages]
    job = None
    if row["fits"] and pnr:
        job = partial(place_and_route, row, net, sample,
                      {"folding": folding.to_dict()["layers"]}, board, outdir, progress,
                      pnr_minutes, pnr_deadline)
    return row, stage_rows, job


def logic_figures(net: ir.Network, folding, board, synth_dir: Path | None,
                  progress: Callable[[str], None]) -> dict[str, dict]:
    """Per layer in logic: sums and positions per cycle, adders, LUTs estimated and (with
    ``synth_dir``) yosys's count of the engine alone, and the estimate's error."""
    out = {}
    for st in lower(net, folding).stages:
        c = st.component
        if not isinstance(c, LogicEngine):
            continue
        est = c.lut_estimate(board.family)
        fig = {"sums_per_cycle": c.lanes_per_beat,
               "positions_per_cycle": round(1 / c.cycles_per_field, 4),
               "digit_bits": c.digit_bits if c.digits > 1 else None,
               "adders": c.graph.adders, "shared_product_adders": c.graph.product_adders,
               "luts_estimated": est, "luts_yosys": None, "lut_estimate_error": None}
        if synth_dir is not None and board.family in ("ecp5", "ice40"):
            progress(f"{st.layer}: yosys on the logic engine alone (LUT estimate {est:,})")
            got = synth_unit(c, board.family, synth_dir, platform=platform_for(board),
                             name=f"{st.layer}_logic")
            fig.update(luts_yosys=got["luts"], ffs_yosys=got["ffs"],
                       lut_estimate_error=round((est - got["luts"]) / got["luts"], 4))
        out[st.layer] = fig
    return out


def place_and_route(row: dict, net: ir.Network, sample: np.ndarray, config: dict, board,
                    outdir: Path, progress: Callable[[str], None],
                    pnr_minutes: float | None, pnr_deadline: float | None = None) -> None:
    """Compile ``net`` for the board with the bench's folds; yosys + nextpnr; fill ``row``.

    Parameters
    ----------
    row : dict
        The mode's row (:func:`bench_mode`): ``mode`` and ``interval_cycles`` are
        read; the place-and-route figures are filled in: ``fmax_mhz`` with
        ``fmax_kind`` (``"routed"``, or ``"estimated"`` after placement when
        nextpnr was stopped at the time limit, or ``None``), inferences/s,
        LUT/FF/DSP/BRAM, ``place_and_route`` (what happened), ``pnr_seconds``.
    net, sample, config
        The network in drain order, a few of its inputs, the ``folding`` config.
    board : Board
        The board, built at its default clock (never lowered: Fmax is the figure).
    outdir : Path
        The bench's folder; the build goes to ``outdir / "pnr" / mode``.
    progress : callable
        Called with a line of text as the build goes.
    pnr_minutes, pnr_deadline : float or None
        nextpnr's time cap and the bench's deadline (``time.monotonic()``).
    """
    mode = row["mode"]
    build = outdir / "pnr" / mode
    if build.exists():
        shutil.rmtree(build)
    progress(f"{mode}: compiling for {board.name} and running yosys + nextpnr")
    t1 = time.perf_counter()
    rep = None
    try:
        compile_network(net, sample, board=board.name, outdir=build, mode=mode, config=config,
                        progress=lambda s: progress(f"{mode}: {s}"))
        # At the board's clock only: the bench measures Fmax, and a second run at a
        # lower clock would double its time.
        rep = build_bitstream(build, progress=lambda s: progress(f"{mode}: {s}"),
                              pnr_minutes=pnr_minutes, pnr_deadline=pnr_deadline,
                              lower_clock=False)
        row["place_and_route"] = "built"
    except PlaceRouteTimeout as e:  # the figures nextpnr had reached
        f = e.figures
        row.update({k: f.get(k) for k in ("luts", "ffs", "dsps", "brams")})
        row.update(fmax_of(f))
        row["place_and_route"] = f"stopped: {e}"
    except CosparseError as e:  # misses timing (figures kept) or does not fit
        rep = _report_of_failed_build(build)
        row["place_and_route"] = f"failed: {e}"
        if rep is None:  # nextpnr stopped (a resource over the part): what it needed
            log = build / "build" / f"{TOP_NAME}.tim"
            row["pnr_needs"] = nextpnr_log_figures(log, board.family)
    row["pnr_seconds"] = round(time.perf_counter() - t1)
    if rep:
        row.update({k: rep.get(k) for k in ("fmax_mhz", "luts", "ffs", "dsps", "brams",
                                             "timing_met")})
        row.update(fmax_kind="routed", fmax_source="nextpnr, routed")
    elif over_part(row.get("pnr_needs") or {}):  # in what nextpnr printed before it stopped
        # (a run stopped at the time limit before placement keeps the estimate's verdict)
        row["fits"] = False
    if row.get("fmax_mhz"):
        row["inferences_per_s"] = round(row["fmax_mhz"] * 1e6 / row["interval_cycles"])


def _report_of_failed_build(build: Path) -> dict | None:
    p = build / "bitstream.json"
    return json.loads(p.read_text()) if p.exists() else None


def fmax_of(figures: dict) -> dict:
    """A row's Fmax fields from the figures of a nextpnr log that may not have finished.

    Parameters
    ----------
    figures : dict
        As :func:`cosparse.boards.bitstream.nextpnr_log_figures` returns them.

    Returns
    -------
    dict
        ``fmax_mhz``: the routed Fmax when routing finished, else the estimate
        after placement, else ``None``; ``fmax_kind``: ``"routed"``,
        ``"estimated"`` or ``None``; ``fmax_source``: the same in words.
    """
    kind = figures.get("fmax_kind")
    fmax = {"routed": figures.get("fmax_mhz_routed"),
            "estimated": figures.get("fmax_mhz_after_placement")}.get(kind)
    source = {"routed": "nextpnr, routed",
              "estimated": "nextpnr's estimate after placement (routing stopped)"}.get(kind)
    return {"fmax_mhz": fmax, "fmax_kind": kind, "fmax_source": source}


def _mark(m: dict) -> str:
    """The table's mark of an Fmax (and the inferences/s from it) that is an estimate."""
    return "*" if m.get("fmax_kind") == "estimated" else ""


def over_part(need: dict) -> list[str]:
    """The resources of a nextpnr log's figures that exceed the part's.

    Parameters
    ----------
    need : dict
        Figures as :func:`cosparse.boards.bitstream.nextpnr_log_figures` returns
        them: ``luts``, ``ffs``, ``dsps``, ``brams`` and each one's ``*_available``.

    Returns
    -------
    list of str
        The names of the resources used beyond the part's, in that order.
    """
    return [k for k in ("luts", "ffs", "dsps", "brams")
            if need.get(k, 0) > need.get(f"{k}_available", 1 << 30)]


def fits_cell(m: dict) -> str:
    """The table's ``fits`` cell: what a mode that does not fit needs.

    Parameters
    ----------
    m : dict
        A mode's row (:func:`bench_mode`): ``fits``, and ``pnr_needs`` or
        ``brams_estimated`` where it does not fit.

    Returns
    -------
    str
        ``"yes"``; or ``"no"`` with the resources over the part's as nextpnr
        counted them, else the estimated block RAMs.
    """
    if m["fits"]:
        return "yes"
    need = m.get("pnr_needs") or {}
    names = {"luts": "LUTs", "ffs": "FFs", "dsps": "DSP blocks", "brams": "block RAMs"}
    over = over_part(need)
    if over:
        return "no (" + ", ".join(f"{need[k]:,} of {need[k + '_available']:,} {names[k]}"
                                  for k in over) + ")"
    if m.get("brams_estimated"):
        return f"no (about {m['brams_estimated']:,} block RAMs)"
    return "no"


def bench_markdown(res: dict) -> str:
    """``bench.md``: the table of the modes (Fmax estimates marked ``*``), ONNX Runtime's
    figures and the paper's, from what ``bench.json`` holds."""
    modes = res["modes"]

    def cell(v, fmt="{:,}"):
        return "-" if v is None else fmt.format(v)

    trained = "" if res.get("weights") != "trained" else (
        f", trained weights from {res['model']}" + (
            f"; golden accuracy {res['golden_accuracy']:.2%} on its {res['model_inputs']:,} "
            "labelled inputs" if "golden_accuracy" in res else ""))
    lines = [f"# gsc-cs benchmark on {res['board']} ({res['network']}{trained})", "",
             "| mode | interval (cycles) | latency (cycles) | multipliers | DSP MAC utilisation "
             "| Fmax (MHz) | inferences/s | LUT | FF | DSP | BRAM | fits |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for m in modes:
        lines.append(f"| {m['mode']} | {m['interval_cycles']:,.0f} | {m['latency_cycles']:,} | "
                     f"{m['multipliers']} | {m['mac_utilization']:.3f} | "
                     f"{cell(m['fmax_mhz'], '{:.1f}')}{_mark(m)} | "
                     f"{cell(m['inferences_per_s'])}{_mark(m)} | "
                     f"{cell(m['luts'])} | {cell(m['ffs'])} | {cell(m['dsps'])} | "
                     f"{cell(m['brams'])} | {fits_cell(m)} |")
    for m in modes:
        for name, fig in (m.get("logic_layers") or {}).items():
            yosys = ("" if fig["luts_yosys"] is None else
                     f", {fig['luts_yosys']:,} in yosys ({fig['lut_estimate_error']:+.1%})")
            digits = (f" ({fig['digit_bits']}-bit digits)" if fig.get("digit_bits") else "")
            lines += ["", f"{m['mode']}: {name}'s weights in logic, {fig['positions_per_cycle']:g} "
                      f"positions per cycle{digits}, {fig['adders']:,} adders, "
                      f"{fig['luts_estimated']:,} "
                      f"LUTs estimated{yosys}."]
    lines += ["", "DSP MAC utilisation: useful MACs of the layers on DSP engines over (their "
              "multipliers x interval)."]
    ort = res["onnxruntime_cpu"]
    if any(_mark(m) for m in modes):
        lines += ["", "\\* nextpnr's Fmax estimate after placement (`fmax_kind` "
                  "\"estimated\" in bench.json): routing was stopped at the bench's "
                  f"{res['minutes']:g}-minute limit (see `place_and_route`); "
                  "`cosparse bench --route` lets it finish."]
    lines += ["", f"ONNX Runtime {ort['onnxruntime']} on this CPU ({ort['cpus']} cores), "
              f"float model: {ort['batch_1']:,.0f} inferences/s at batch 1, "
              f"{ort['best']:,.0f} at batch {ort['best_batch']}.", ""]
    by = {m["mode"]: m for m in modes}
    if "dense" in by and "sparse-sparse" in by:
        d, s = by["dense"], by["sparse-sparse"]
        sp = d["interval_cycles"] / s["interval_cycles"]
        ratio = d["useful_macs"] / s["useful_macs"]
        # The dense fold's steps may stop short of the engine budget: per multiplier too.
        per = sp * d["multipliers"] / s["multipliers"]
        lines.append(f"Sparse-sparse over dense: {sp:.1f}x fewer cycles per inference with "
                     f"{s['multipliers']} and {d['multipliers']} engine multipliers, "
                     f"{per:.1f}x per multiplier (cycles x multipliers); their MAC counts "
                     f"differ {ratio:.1f}x ({per / ratio:.2f} of it). "
                     f"Paper: {PAPER['sparse_sparse_over_dense']}x.")
    lines.append(f"Paper (one network instance): {PAPER['zu3eg_sparse_sparse_inferences_per_s']:,} "
                 f"inferences/s sparse-sparse on a ZU3EG, "
                 f"{PAPER['u250_sparse_sparse_inferences_per_s']:,} on an Alveo U250.")
    return "\n".join(lines) + "\n"


def _plot(res: dict, stages: dict[str, list], path: Path) -> None:
    import matplotlib  # optional (cosparse[bench]); heavy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m["mode"] for m in res["modes"]]
    names = []
    for mode in modes:
        for s in stages[mode]:
            key = f"{s['layer']}:{s['unit']}"
            if key not in names:
                names.append(key)
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(names) + 3), 5))
    width = 0.8 / len(modes)
    for j, mode in enumerate(modes):
        cyc = {f"{s['layer']}:{s['unit']}": s["cycles"] for s in stages[mode]}
        vals = [cyc.get(n, 0) for n in names]
        worst = int(np.argmax(vals))
        # A stage the mode does not have (or that takes no cycles) gets no bar.
        bars = ax.bar(np.arange(len(names)) + (j - (len(modes) - 1) / 2) * width,
                      [v if v > 0 else np.nan for v in vals], width, label=mode)
        bars[worst].set_edgecolor("black")
        bars[worst].set_linewidth(2)
        m = res["modes"][j]
        ax.axhline(m["interval_cycles"], color=bars[0].get_facecolor(), ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(names)), [n.replace(":", "\n") for n in names], fontsize=7,
                  rotation=60, ha="right")
    ax.set_ylabel("cycles per inference (predicted per stage)")
    ax.set_title(f"{res['network']} on {res['board']}: cycles per stage; bottleneck outlined, "
                 "dashed = measured interval", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_bench(outdir: str | os.PathLike, *, modes=MODES, board: str = "ulx3s-85f",
              count: int = 32, seed: int = 0, reduced: bool = False,
              pnr_modes=("sparse-weights", "sparse-sparse"), pnr_minutes: float | None = None,
              minutes: float | None = None, route: bool = False,
              model: str | os.PathLike | None = None, inputs: str | os.PathLike | None = None,
              labels: str | os.PathLike | None = None, lut_share: float = LUT_SHARE,
              progress: Callable[[str], None] = print) -> dict:
    """Run the benchmark (see the module doc); returns what ``bench.json`` holds.

    ``pnr_minutes`` caps each nextpnr run; ``minutes`` the whole bench
    (default :data:`DEFAULT_MINUTES`, or :data:`ROUTE_MINUTES` with
    ``route``): every nextpnr still running then is stopped (its figures so
    far are reported: the Fmax estimated after placement), so the bench ends
    within about that time once its simulations are done. ``route`` lets
    place and route finish, for routed Fmax figures; it takes no
    ``pnr_minutes``.

    ``model`` benches a trained ONNX model in place of gsc-cs with random
    weights, on its float ``inputs`` (a ``.npy`` in the model's layout, also
    its calibration data; needed) with their ``labels`` (optional: the
    golden model's accuracy).

    ``lut_share``: the share of the part's LUTs each mode's fold may fill
    (default :data:`~.fold.LUT_SHARE`); less for a design the router can finish.
    """
    check_lut_share(lut_share)  # before ONNX Runtime's minutes
    if model is None and (inputs is not None or labels is not None):
        raise CosparseError("--inputs and --labels go with --model (a trained model)")
    if model is not None and inputs is None:
        raise CosparseError("--model needs --inputs X.npy: float inputs [N, *input shape] "
                            "to calibrate with and to simulate")
    if model is not None and reduced:
        raise CosparseError("--reduced applies to the built-in gsc-cs network, not --model")
    if route and pnr_minutes is not None:
        raise CosparseError("--route lets every place and route finish; it takes no "
                            "--pnr-minutes (--minutes still bounds the whole bench)")
    if minutes is None:
        minutes = ROUTE_MINUTES if route else DEFAULT_MINUTES
    for m in modes:
        if m not in MODES:
            raise CosparseError(f"unknown mode {m!r}; the modes are {', '.join(MODES)}")
    if count < 2:
        raise CosparseError(f"--count must be at least 2 (the interval needs two inferences), "
                            f"got {count}")
    try:
        import matplotlib  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise CosparseError(f"cosparse bench needs {e.name}: pip install 'cosparse[bench]'") \
            from None
    b = resolve_board(board)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # (monotonic, as the build steps' own clocks; 20 s left to write the results)
    deadline = time.monotonic() + minutes * 60 - 20
    # ONNX Runtime first, on an otherwise idle machine (it uses every core).
    source = ZooSource(seed, reduced) if model is None else ModelSource(model, inputs, labels)
    net = source.network("sparse-sparse")
    progress("ONNX Runtime on the float model ...")
    ort = onnxruntime_throughput(*source.onnx_model(net))
    rows, stages, running = {}, {}, []
    # A mode's place and route starts as soon as its simulation is done and runs
    # beside the next simulations (one nextpnr per core).
    # Three workers: the simulation of a mode that is not placed (dense: 160k cycles an
    # inference, the bench's long pole) and the two place-and-route runs.
    with ThreadPoolExecutor(max_workers=3) as pool:
        # Sparse-sparse first: the dense build is folded for the same engine multipliers
        # (it would not fit the part anyway), so their cycles compare at equal multipliers.
        # Then the modes that are not placed, whose simulations start at once in the pool,
        # then the placed ones, whose nextpnr starts as soon as each simulation is done.
        pending = {}
        for mode in sorted(modes, key=lambda m: (m != "sparse-sparse", m in pnr_modes)):
            budget = (rows["sparse-sparse"]["multipliers"]
                      if mode == "dense" and "sparse-sparse" in rows else None)
            run = partial(bench_mode, mode, board=b, count=count, seed=seed, reduced=reduced,
                          pnr=mode in pnr_modes, outdir=out, progress=progress,
                          engine_budget=budget, pnr_minutes=pnr_minutes, pnr_deadline=deadline,
                          source=source, lut_share=lut_share)
            if mode == "sparse-sparse" or mode in pnr_modes:
                row, st, job = run()
                if job is not None:
                    running.append(pool.submit(job))
                rows[mode] = row  # (dense's budget is sparse-sparse's multipliers)
                pending[mode] = (budget, (row, st))
            else:
                pending[mode] = (budget, pool.submit(run))
        for mode, (budget, got) in pending.items():
            row, st = got.result()[:2] if isinstance(got, Future) else got
            row["folded_for"] = ("the board's DSPs" if budget is None
                                 else f"{budget} engine multipliers (as sparse-sparse)")
            rows[mode] = row
            stages[mode] = st
            row["stages"] = st
        if running:
            progress("waiting for place and route ...")
        for f in running:
            f.result()
    rows = [rows[m] for m in MODES if m in rows]
    res = {**source.describe(to_drain_order(net)), "board": b.name, "fpga": b.fpga,
           "inputs": count,
           "route": route, "minutes": minutes, "pnr_minutes": pnr_minutes,
           "lut_share": lut_share, "modes": rows,
           "onnxruntime_cpu_inferences_per_s": ort["best"],
           "onnxruntime_cpu": ort, "paper": PAPER,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "processor": platform.processor() or platform.machine()},
           "seconds": round(time.perf_counter() - t0)}
    by = {r["mode"]: r for r in rows}
    if "dense" in by and "sparse-sparse" in by:
        d, s = by["dense"], by["sparse-sparse"]
        res["sparse_sparse_over_dense"] = {
            "cycles": round(d["interval_cycles"] / s["interval_cycles"], 2),
            # cycles x engine multipliers: the dense fold may not reach the same count
            "cycles_per_multiplier": round(d["interval_cycles"] * d["multipliers"]
                                           / (s["interval_cycles"] * s["multipliers"]), 2),
            "macs": round(d["useful_macs"] / s["useful_macs"], 2)}
    (out / "bench.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "bench.md").write_text(bench_markdown(res))
    _plot(res, stages, out / "bench.png")
    progress(f"wrote {out / 'bench.json'}, bench.md and bench.png in {res['seconds']} s")
    return res


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: cosparse bench (or scripts/bench.py)")
