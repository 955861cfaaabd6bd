"""The ``cosparse`` command line.

Every user-facing failure is a :class:`~cosparse.compiler.errors.CosparseError`
(or an OS error on a named file): it is printed as one paragraph and the
command exits with status 2, never with a traceback. Outputs are written to a
temporary name first and renamed, so a failed command leaves no half-written
file behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import amaranth
import numpy as np

from cosparse.sim import verilator

from . import api
from .bench import MODES, run_bench
from .demo import run_demo
from .errors import CosparseError
from .fold import LUT_SHARE

__all__ = ["main"]


def _load_npy(path: str, what: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CosparseError(f"{what} file {path!r} does not exist") from None
    except (OSError, ValueError, EOFError) as e:
        raise CosparseError(f"{what} file {path!r} is not a readable .npy array ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise CosparseError(f"{what} file {path!r} holds an .npz archive, expected one .npy array")
    return arr


def _save_npy(path: str, arr: np.ndarray) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".npy")
    os.close(fd)
    try:
        np.save(tmp, arr)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _say(prefix: str):
    return lambda s: print(f"{prefix}: {s}", flush=True)


def _cmd_golden(args: argparse.Namespace) -> int:
    acc = api.load(args.outdir)
    xq = acc.quantize(_load_npy(args.input, "input"), repr(args.input))
    t0 = time.perf_counter()
    y = acc.golden(xq, raw=True)
    dt = time.perf_counter() - t0
    _save_npy(args.output, acc.dequantize(y))
    print(f"golden: {len(xq)} inferences of {acc.network.name} in {dt:.3f} s "
          f"({len(xq) / max(dt, 1e-9):,.0f}/s) -> {args.output}")
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    acc = api.load(args.outdir)
    acc.require_folding()
    xq = acc.quantize(_load_npy(args.input, "input"), repr(args.input))
    print(f"sim: {len(xq)} inferences of {acc.network.name} in Verilator "
          f"(model built once into {acc.sim_build}) ...", flush=True)
    run = acc.simulate(xq, waves=args.waves,
                       progress=lambda done, total: print(f"sim: {done}/{total} inferences",
                                                          flush=True))
    _save_npy(args.output, run.outputs)
    stats = {"network": acc.network.name, "inferences": len(xq),
             "latency_cycles": run.latency_cycles, "interval_cycles": run.interval_cycles,
             "predicted_interval_cycles": run.predicted_interval_cycles,
             "total_cycles": run.total_cycles, "wall_seconds": round(run.seconds, 3)}
    if args.waves:
        traces = sorted(p for ext in ("fst", "vcd")
                        for p in acc.sim_build.glob(f"*-waves/cosparse_core.{ext}"))
        print("sim: waveform " + (", ".join(map(str, traces)) or "not written (no trace file)"))
    out_json = Path(args.output).with_suffix(".json")
    out_json.write_text(json.dumps(stats, indent=1) + "\n")
    interval = "-" if run.interval_cycles is None else f"{run.interval_cycles:,.1f}"
    print(f"sim: latency {run.latency_cycles:,} cycles, interval {interval} cycles per inference "
          f"(predicted {run.predicted_interval_cycles:,.1f}); {run.seconds:.1f} s -> "
          f"{args.output}, {out_json}")
    return 0


def _logic_layers(value: str) -> str | list[str]:
    """``--weights-in-logic``: auto, none, or a comma-separated list of layers."""
    value = value.strip()
    if value in ("auto", "none"):
        return value
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise CosparseError("--weights-in-logic takes auto, none or layer names separated by commas")
    return names


def _cmd_compile(args: argparse.Namespace) -> int:
    if args.bitstream:
        api.check_bitstream_tools(args.board)  # before any work is done
    cal = None if args.calibration is None else _load_npy(args.calibration, "calibration")
    acc = api.compile(args.model, board=args.board, outdir=args.outdir, calibration=cal,
                      mode=args.mode, config=args.config, baud=args.baud, clock_mhz=args.clock,
                      weights_in_logic=_logic_layers(args.weights_in_logic),
                      lut_share=args.lut_share, progress=_say("compile"))
    if args.bitstream:
        acc.build(progress=_say("bitstream"))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    acc = api.load(args.outdir)
    xq = acc.quantize(_load_npy(args.input, "input"), repr(args.input))
    say = _say("run")
    res = acc.run(xq, args.port, baud=args.baud, timeout=args.timeout, load=args.load,
                  retries=args.retries, progress=say)
    _save_npy(args.output, res.outputs)
    n, lat = len(res.raw), res.latency_cycles
    stats = {"network": acc.network.name, "inferences": n, "latency_cycles": lat,
             "wall_seconds": round(res.seconds, 3), "loaded_bytes": res.loaded_bytes,
             "retries": res.retries, "reloads": res.reloads,
             "inferences_per_s_over_link": n / max(res.seconds, 1e-9)}
    Path(args.output).with_suffix(".json").write_text(json.dumps(stats, indent=1) + "\n")
    say(f"{n} inferences in {res.seconds:.2f} s over the link; latency {min(lat):,}-{max(lat):,} "
        f"cycles -> {args.output}")
    return 0


def _cmd_patch(args: argparse.Namespace) -> int:
    cal = None if args.calibration is None else _load_npy(args.calibration, "calibration")
    api.patch(args.outdir, args.model, calibration=cal, progress=_say("patch"))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.clients is not None and args.clients < 1:
        raise CosparseError(f"--clients must be at least 1, got {args.clients}")
    if args.max_seconds <= 0:
        raise CosparseError(f"--max-seconds must be positive, got {args.max_seconds:g}")
    res = api.serve(args.outdir, port=args.tcp_port, port_file=args.port_file,
                    clients=args.clients, max_seconds=args.max_seconds,
                    resets=tuple(args.reset_at or ()), progress=_say("serve"),
                    ready=lambda port: print(f"serve: listening on socket://127.0.0.1:{port}",
                                             flush=True))
    print(f"serve: session over: {res['clients']} client(s), {res['resets']} reset(s), "
          f"{res['bytes_to_device']:,} bytes in, "
          f"{res['bytes_from_device']:,} out, {res['cycles']:,} cycles in {res['seconds']:.1f} s",
          flush=True)
    return 0


def _cmd_boards(args: argparse.Namespace) -> int:
    print(f"{'board':<16} {'FPGA':<18} {'LUT4':>7} {'DSP':>4} {'BRAM kbit':>9} {'SPRAM':>6} "
          f"{'osc':>4} {'MHz':>5}  notes")
    for b in api.boards().values():
        print(f"{b.name:<16} {b.fpga:<18} {b.luts:>7,} {b.dsps:>4} {b.bram_kbit:>9,} "
              f"{b.spram_kbit or '-':>6} {b.osc_mhz:>4g} {b.clock_mhz:>5g}  {b.notes}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(outdir=args.outdir, count=args.count, seed=args.seed,
                    sim_count=args.sim_count, bitstream=args.bitstream)


def _cmd_bench(args: argparse.Namespace) -> int:
    modes = MODES if args.mode == "all" else tuple(args.mode.split(","))
    pnr = () if args.no_pnr else tuple(
        m for m in args.pnr_modes.split(",") if m in modes and (m != "dense" or args.dense_pnr))
    for flag, v in (("--pnr-minutes", args.pnr_minutes), ("--minutes", args.minutes)):
        if v is not None and v <= 0:
            raise CosparseError(f"{flag} must be positive, got {v:g}")
    run_bench(args.outdir, modes=modes, board=args.board, count=args.count, seed=args.seed,
              reduced=args.reduced, pnr_modes=pnr, pnr_minutes=args.pnr_minutes,
              minutes=args.minutes, route=args.route, model=args.model, inputs=args.inputs,
              labels=args.labels, lut_share=args.lut_share)
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"cosparse {version('cosparse')}")
    print(f"verilator {verilator.version()} ({verilator.root()})")
    print(f"amaranth {amaranth.__version__}")
    return 0


def _add_lut_share(parser: argparse.ArgumentParser, fold: str) -> None:
    parser.add_argument("--lut-share", type=float, default=LUT_SHARE, metavar="S",
                        help=f"the share of the part's LUTs {fold} may fill (default "
                             f"{LUT_SHARE:g}; less leaves the router room, at more cycles)")


def _add_bench_parser(sub) -> None:
    be = sub.add_parser("bench", help="benchmark gsc-cs: dense vs sparse weights vs "
                        "sparse-sparse (Verilator cycles, nextpnr Fmax, ONNX Runtime)")
    be.add_argument("-o", "--outdir", default="bench-out",
                    help="bench.json, bench.md, bench.png and the builds go here")
    be.add_argument("--mode", default="all",
                    help="all, or a comma-separated list of dense, sparse-weights, "
                         "sparse-sparse (default all)")
    be.add_argument("--board", default="ulx3s-85f", help="board (default ulx3s-85f)")
    be.add_argument("-n", "--count", type=int, default=32,
                    help="back-to-back inputs simulated per mode (default 32)")
    be.add_argument("--seed", type=int, default=0, help="weights and inputs seed (default 0)")
    be.add_argument("--reduced", action="store_true",
                    help="the reduced gsc-cs network (20x20 input, 16 channels; quick)")
    be.add_argument("--no-pnr", action="store_true", help="skip yosys + nextpnr (no Fmax)")
    be.add_argument("--pnr-modes", metavar="MODES", default="sparse-weights,sparse-sparse",
                    help="comma-separated modes to place and route (default "
                         "sparse-weights,sparse-sparse: the modes that fit; each nextpnr takes "
                         "a core for up to --pnr-minutes)")
    be.add_argument("--pnr-minutes", type=float, default=None,
                    help="stop each nextpnr run after this long and report what it reached "
                         "(utilisation, Fmax estimated after placement; default: no cap "
                         "but --minutes)")
    be.add_argument("--minutes", type=float, default=None,
                    help="stop every nextpnr still running this long after the bench "
                         "started, so the bench ends within about this time (default 29: "
                         "Fmax estimated after placement; 150 with --route)")
    be.add_argument("--route", action="store_true",
                    help="let place and route finish, for routed Fmax figures (a routed "
                         "gsc-cs takes YoWASP's nextpnr 60-120 minutes: the bench's limit "
                         "becomes 150 minutes)")
    be.add_argument("--model", metavar="ONNX", default=None,
                    help="bench this trained model (float or QDQ ONNX, e.g. the gsc example's "
                         "of cosparse.train) in place of gsc-cs with random weights")
    be.add_argument("--inputs", metavar="X.npy", default=None,
                    help="with --model: float inputs [N, *input shape] in the model's layout "
                         "(calibration data and the simulated inputs, in turn)")
    be.add_argument("--labels", metavar="Y.npy", default=None,
                    help="with --model: a class per input; bench.json gets the golden "
                         "model's accuracy")
    be.add_argument("--dense-pnr", action="store_true",
                    help="also place and route the dense build when it fits the part")
    _add_lut_share(be, "each mode's fold")
    be.set_defaults(func=_cmd_bench)


def _add_compile_parser(sub) -> None:
    c = sub.add_parser("compile", help="compile an ONNX model (float or QDQ) to an accelerator")
    c.add_argument("model", help="MODEL.onnx")
    c.add_argument("--board", required=True, help="target board (see cosparse boards) or sim")
    c.add_argument("-o", "--outdir", required=True, help="output folder")
    c.add_argument("--calibration", help="X.npy: float32 [N, *model input shape] for a float model")
    c.add_argument("--mode", default="sparse-sparse",
                   choices=["dense", "sparse-weights", "sparse-sparse"])
    c.add_argument("--config", help="JSON: {\"folding\": {layer: {entries, lanes_per_beat, width}}, "
                                    "\"kernels_per_overlay\": {layer: K}}")
    c.add_argument("--bitstream", action="store_true",
                   help="also build the bitstream (yosys, nextpnr, pack) and its report")
    c.add_argument("--baud", type=int, default=1_000_000, help="host link UART rate (1000000)")
    c.add_argument("--clock", type=float,
                   help="core clock in MHz (default: the board's; a PLL makes it)")
    c.add_argument("--weights-in-logic", default="auto", metavar="auto|none|LAYER,...",
                   help="layers whose fixed weights become shift-and-add logic (a first conv "
                        "on a dense map): auto (where the part's LUTs allow), none, or names")
    _add_lut_share(c, "the fold")
    c.set_defaults(func=_cmd_compile)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cosparse",
        description="FPGA accelerators for dual-sparse (Complementary Sparsity) networks.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser("demo", help="compile the bundled digits network, run golden and Verilator")
    d.add_argument("-o", "--outdir", default="cosparse-demo",
                   help="keep what the demo builds here: digits/ (the compiled network) and "
                        "digits_BOARD/ (its bitstream) (default ./cosparse-demo)")
    d.add_argument("-n", "--count", type=int, default=256,
                   help="golden inferences on the reduced gsc-cs network (default 256)")
    d.add_argument("--sim-count", type=int, default=16,
                   help="test digits run in Verilator (default 16)")
    d.add_argument("--seed", type=int, default=0, help="weights and inputs seed (default 0)")
    d.add_argument("--bitstream", metavar="BOARD", default="ulx3s-85f",
                   help="board of the digits network's bitstream, built last with its "
                        "resource and timing report (default ulx3s-85f: about 8 minutes)")
    d.add_argument("--no-bitstream", dest="bitstream", action="store_const", const=None,
                   help="skip the bitstream")
    d.set_defaults(func=_cmd_demo)

    _add_bench_parser(sub)

    g = sub.add_parser("golden", help="run the numpy golden model of a compiled network")
    g.add_argument("outdir", help="compiled network folder (holding manifest.json)")
    g.add_argument("--input", required=True, help="X.npy: float32 [N, *input shape] (or int8)")
    g.add_argument("-o", "--output", required=True, help="Y.npy: float32 [N, *output shape]")
    g.set_defaults(func=_cmd_golden)

    s = sub.add_parser("sim", help="run a compiled network's Verilog in Verilator")
    s.add_argument("outdir", help="compiled network folder")
    s.add_argument("--input", required=True, help="X.npy: float32 [N, *model input shape]")
    s.add_argument("-o", "--output", required=True,
                   help="Y.npy: float32 [N, *model output shape]; cycle counts go to Y.json")
    s.add_argument("--waves", action="store_true", help="write an FST trace into OUTDIR/sim_build")
    s.set_defaults(func=_cmd_sim)

    _add_compile_parser(sub)

    r = sub.add_parser("run", help="run inferences on a board (or a simulated one) over the "
                                   "UART host link")
    r.add_argument("outdir", help="compiled network folder (the board runs its bitstream)")
    r.add_argument("--port", required=True,
                   help="serial port: /dev/ttyUSB1, COM3, or socket://127.0.0.1:PORT "
                        "(cosparse serve)")
    r.add_argument("--input", required=True, help="X.npy: float32 [N, *model input shape]")
    r.add_argument("-o", "--output", required=True, help="Y.npy; cycle counts go to Y.json")
    r.add_argument("--load", choices=["auto", "always", "never"], default="auto",
                   help="load the weight bundle first: auto (when the device says it is not "
                        "loaded), always, never")
    r.add_argument("--baud", type=int, help="override the design's baud rate")
    r.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for each answer (default 5)")
    r.add_argument("--retries", type=int, default=2,
                   help="times a request is sent again after no answer or a damaged frame "
                        "(a reset of the board, line noise); default 2")
    r.set_defaults(func=_cmd_run)

    pa = sub.add_parser("patch", help="put new weights of the same topology into the built "
                                      "bitstream (no place and route)")
    pa.add_argument("outdir", help="compiled folder with a bitstream")
    pa.add_argument("model", help="NEW.onnx: same layers and shapes, new weights")
    pa.add_argument("--calibration", help="X.npy for a float model")
    pa.set_defaults(func=_cmd_patch)

    sv = sub.add_parser("serve", help="serve a compiled folder's board top in Verilator on a "
                                      "TCP serial port (for cosparse run --port socket://...)")
    sv.add_argument("outdir", help="compiled network folder")
    sv.add_argument("--tcp-port", type=int, default=0, help="TCP port (default: a free one)")
    sv.add_argument("--port-file", help="write the TCP port number here once listening")
    sv.add_argument("--clients", type=int, default=None,
                    help="serve this many clients, one after another, then stop (default: "
                         "until --max-seconds or Ctrl-C); the board keeps its state between")
    sv.add_argument("--max-seconds", type=float, default=3600.0,
                    help="stop serving after this long (default 3600)")
    sv.add_argument("--reset-at", action="append", metavar="byte:N|infer:N",
                    help="press the board's reset button after the host's N-th byte, or "
                         "amid the N-th inference (repeatable): to try the host's recovery")
    sv.set_defaults(func=_cmd_serve)

    b = sub.add_parser("boards", help="list the target boards and their resources")
    b.set_defaults(func=_cmd_boards)

    v = sub.add_parser("version", help="print versions of cosparse and its tools")
    v.set_defaults(func=_cmd_version)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cosparse`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CosparseError as e:
        print(f"cosparse {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        name = f" {e.filename!r}" if e.filename else ""
        print(f"cosparse {args.command}: error:{name} {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cosparse {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
