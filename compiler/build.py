"""``cosparse compile``: an ONNX model to a compiled accelerator folder.

The steps, each a function of the IR: check the operators
(:func:`~.frontend.check_supported`, before any heavy work), import and
quantize (:func:`~.frontend.import_onnx`), put every overlay layer in
drain order (:func:`~.order.to_drain_order`), fold for the board
(:func:`~.fold.choose_folding`), then emit into OUTDIR:

* ``manifest.json`` + ``tensors.npz``: the network, its folding, board and
  predicted cycles (``meta``);
* ``rtl/cosparse_core.v``: the network core's Verilog;
* ``images/``: one ``.hex`` per initialised memory and ``bundle.bin`` with
  all of them, header and CRC (see :mod:`.images`);
* ``report.md``: per layer shape, weight density, overlay fill, dense and
  sparse-sparse MACs, R and P, predicted cycles, weight memory bits.

Everything is written into a temporary folder beside OUTDIR and renamed at
the end, so a failed compile leaves no half-written OUTDIR.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from amaranth.back import verilog
from numpy.lib.stride_tricks import sliding_window_view

from cosparse.boards.catalog import get_board
from cosparse.boards.top import (LinkTop, design_id, ecp5_pll, ice40_pll, strip_memory_contents,
                                 uart_divisor)
from cosparse.sim import golden

from . import ir
from .emit import write_images
from .errors import CosparseError
from .fold import (ECP5_BRAM_KBIT, LUT_SHARE, block_rams, board_block_rams, choose_folding,
                   logic_engine, multipliers)
from .folding import LayerFold
from .frontend import check_supported, from_ir_output, import_onnx, to_ir_input
from .lower import lower, spram_weight_layers
from .manifest import seal
from .order import restore_output_order, to_drain_order
from .perf import predict, stage_cycles
from .quantize import dequantize, quantize_input

__all__ = ["compile_model", "compile_network", "resolve_board", "layer_table",
           "weight_memory_bits", "network_input", "network_output", "DEFAULT_BAUD", "SPRAM_MIN_BITS"]


def _read_config(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        cfg = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CosparseError(f"config file {path!r} does not exist") from None
    except (OSError, ValueError) as e:
        raise CosparseError(f"config file {path!r} is not readable JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CosparseError(f"config file {path!r} must hold a JSON object")
    return cfg


def network_input(net: ir.Network, x: np.ndarray, what: str) -> np.ndarray:
    """Model-layout float32 inputs (or IR-layout integer frames) to the IR's frames (int8,
    or int16 for an int9 input)."""
    model_shape = tuple(net.meta.get("input_shape", net.input.shape))
    x = np.asarray(x)
    ir_dtype = np.int8 if net.input.dtype == "int8" else np.int16
    if x.dtype == ir_dtype and x.shape[1:] == net.input.shape:
        lo, hi = net.input.bounds
        if x.size and (int(x.min()) < lo or int(x.max()) > hi):
            raise CosparseError(f"input {what} holds values {int(x.min())}..{int(x.max())} "
                                f"outside the network input's range {lo}..{hi}")
        return x
    if x.ndim != len(model_shape) + 1 or tuple(x.shape[1:]) != model_shape:
        raise CosparseError(f"input {what} has shape {tuple(x.shape)}; the network "
                            f"{net.name!r} takes [N, {', '.join(map(str, model_shape))}]")
    if x.dtype not in (np.float32, np.float64):
        raise CosparseError(f"input {what} has dtype {x.dtype}; expected float32")
    if not np.all(np.isfinite(x)):
        raise CosparseError(f"input {what} holds NaN or infinite values")
    if "input_layout" in net.meta:
        return to_ir_input(net, x)
    return quantize_input(x, net.input.scale)


def network_output(net: ir.Network, y: np.ndarray) -> np.ndarray:
    """IR integer outputs to dequantized float32 in the model's layout and order."""
    if "output_layout" in net.meta:
        return from_ir_output(net, y)
    return dequantize(restore_output_order(net, y), net.output.scale)


def weight_memory_bits(layer: ir.OverlayLayer) -> int:
    """Bits of an overlay layer's weight memory: a weight (``weight_bits``) and a kernel id
    per slot."""
    ov = layer.overlays
    return int(ov.words * ov.lanes * (layer.weight_bits
                                      + max(1, (ov.kernels_per_overlay - 1).bit_length())))


def layer_table(net: ir.Network, folding, sample: np.ndarray) -> list[dict]:
    """Per overlay layer: shapes, density, fill, MACs, fold, predicted cycles, memory bits."""
    stages = stage_cycles(net, folding, sample)
    acts = [sample]
    for layer in net.layers:
        acts.append(golden.run_layer(layer, acts[-1]))
    specs = net.specs()
    rows = []
    for i, layer in enumerate(net.layers):
        cyc = max((s.mean for s in stages if s.layer == layer.name), default=0.0)
        row = {"layer": layer.name, "kind": layer.kind, "in": list(specs[i].shape),
               "out": list(specs[i + 1].shape), "cycles": cyc}
        if isinstance(layer, ir.OverlayLayer):
            ov = layer.overlays
            m, fan_in = ov.num_kernels, ov.fan_in
            positions = int(np.prod(specs[i + 1].shape[:-1])) if len(specs[i + 1].shape) == 3 else 1
            x = acts[i]
            if isinstance(layer, ir.OverlayConv):
                pt, pl, pb, pr = layer.padding
                xp = np.pad(x != 0, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
                win = sliding_window_view(xp, layer.kernel, axis=(1, 2))
                win = win[:, ::layer.stride[0], ::layer.stride[1]]
                active = win.sum(axis=(3, 4, 5)).mean(axis=0).sum()  # active inputs per frame
            else:
                active = float(np.count_nonzero(x, axis=tuple(range(1, x.ndim))).mean())
            f = folding.of(layer.name)
            p = f.lanes_per_beat or (m if f.in_logic else ov.lanes)
            row.update(kernels=m, fan_in=fan_in, density=ov.nnz / (m * fan_in), fill=ov.fill,
                       K=ov.kernels_per_overlay, lanes=ov.lanes,
                       dense_macs=m * fan_in * positions,
                       sparse_macs=float(active * ov.lanes),  # each active input x L slots
                       engine=f.engine, R=None if f.in_logic else f.entries, P=p,
                       Q=f.width or p,
                       memory_bits=0 if f.in_logic else weight_memory_bits(layer))
            if f.in_logic:
                eng = logic_engine(layer, p)
                row.update(luts=eng.lut_estimate(),
                           digit_bits=eng.digit_bits if eng.digits > 1 else None)
        rows.append(row)
    return rows


def _report(net: ir.Network, rows: list[dict], perf: dict, board, mults: int,
            brams: int | None = None) -> str:
    lines = [f"# {net.name}: compiled for {board.name} ({board.fpga})", "",
             f"Mode `{net.meta.get('mode')}`, source `{net.meta.get('source', '-')}`.", "",
             "| layer | kind | in | out | density | fill | K | dense MACs | sparse MACs | engine | "
             "R | P | Q | cycles | weight bits |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "kernels" in r:
            lines.append(f"| {r['layer']} | {r['kind']} | {r['in']} | {r['out']} | "
                         f"{r['density']:.3f} | {r['fill']:.3f} | {r['K']} | {r['dense_macs']:,} | "
                         f"{r['sparse_macs']:,.0f} | {r['engine']} | {r['R'] or '-'} | {r['P']} | "
                         f"{r['Q']} | {r['cycles']:,.0f} | {r['memory_bits']:,} |")
        else:
            lines.append(f"| {r['layer']} | {r['kind']} | {r['in']} | {r['out']} | | | | | | | | | "
                         f"| {r['cycles']:,.0f} | |")
    logic = [r for r in rows if r.get("engine") == "logic"]
    if logic:
        lines += ["", "Weights in logic (shift-and-add, no multiplier or weight memory; fixed "
                  "at build time, so `cosparse patch` cannot change them): "
                  + "; ".join(f"{r['layer']} about {r['luts']:,} LUTs, {r['P']} sums per cycle"
                              + (f", inputs in {r['digit_bits']}-bit digits" if r["digit_bits"]
                                 else "") for r in logic)
                  + (f" ({sum(r['luts'] for r in logic):,} of the part's {board.luts:,} LUTs)."
                     if board.luts else ".")]
    dense = sum(r.get("dense_macs", 0) for r in rows)
    sparse = sum(r.get("sparse_macs", 0) for r in rows)
    ips = board.clock_mhz * 1e6 / max(perf["interval_cycles"], 1)
    lines += ["", f"Totals: {dense:,} dense MACs, {sparse:,.0f} sparse-sparse MACs per inference; "
              f"{mults} multipliers (budget {board.multipliers})"
              + ("." if brams is None else
                 f"; about {brams:,} block RAMs (the core's memories, each weight-memory read "
                 f"port a copy; {board.bram_kbit // ECP5_BRAM_KBIT} on the part)."), "",
              f"Predicted interval {perf['interval_cycles']:,.0f} cycles per inference "
              f"(bottleneck {perf['bottleneck']}): {ips:,.0f} inferences/s at "
              f"{board.clock_mhz:g} MHz.", ""]
    return "\n".join(lines)


#: Baud rate of the host link unless told otherwise.
DEFAULT_BAUD = 1_000_000
#: On boards with SPRAM (iCE40 UltraPlus), weight memories of at least this many
#: bits (with one read port) go to SPRAM and are filled by the loader.
SPRAM_MIN_BITS = 16 * 1024


def _link_top(net, folding, board, baud: int, did: int, spram_bits):
    clock = board.clock_mhz * 1e6
    try:
        divisor = uart_divisor(clock, baud)
    except ValueError as e:
        raise CosparseError(f"host link on {board.name}: {e}") from None
    return LinkTop(net, folding, divisor=divisor, timeout=int(clock * 0.05),
                   spram_bits=spram_bits, design_id=did)


def _link_json(net, link, board, baud: int, spram_bits, clock_forced: bool) -> dict:
    """The host link's layout, and what the bitstream build needs: board, clock (and
    whether ``--clock`` forced it, which keeps a build from lowering it)."""
    hl = link.link
    out = net.specs()[-1]
    out_groups, out_g = ((out.shape[0] * out.shape[1], out.shape[2]) if len(out.shape) == 3
                         else (1, int(np.prod(out.shape))))
    return {"design_id": hl.design_id, "baud": baud, "in_width": hl.in_width,
            "in_groups": hl.in_groups, "in_group_size": hl.in_group_size,
            "out_width": hl.out_width, "out_bits": hl.out_bits, "out_groups": out_groups,
            "out_group_size": out_g,
            "targets": [{"name": p.name, "width": p.width, "depth": p.depth,
                         "has_init": p.has_init} for p in link.core.load_ports],
            "input_shape": list(net.input.shape), "output_shape": list(out.shape),
            "in_offset": net.input.bounds[0] if net.input.dtype == "int9" else 0,
            "spram_bits": spram_bits, "board": board.name, "clock_mhz": board.clock_mhz,
            "clock_forced": clock_forced}


def resolve_board(board: str, clock_mhz: float | None = None):
    """The catalog board, at ``clock_mhz`` when given (checked against the board's PLL)."""
    b = get_board(board)
    if clock_mhz is not None:
        if not 1 <= clock_mhz <= 500:
            raise CosparseError(f"--clock must be from 1 to 500 MHz, got {clock_mhz:g}")
        b = dataclasses.replace(b, clock_mhz=float(clock_mhz))
        if b.family in ("ice40", "ecp5") and b.clock_mhz != b.osc_mhz:
            try:
                (ice40_pll if b.family == "ice40" else ecp5_pll)(b.osc_mhz, b.clock_mhz)
            except ValueError as e:
                raise CosparseError(f"--clock on {b.name}: {e}") from None
    return b


def check_outdir(out: Path) -> None:
    """Refuse an output folder that exists and is not a cosparse build (nor empty)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / "manifest.json").exists())):
        raise CosparseError(f"output folder {str(out)!r} exists and is not a cosparse build "
                            "(no manifest.json); choose a new or empty folder")


@contextmanager
def new_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` that replaces ``out`` when the block ends,
    or is removed if it raises: never a half-written ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def compile_model(model: str | os.PathLike, *, board: str, outdir: str | os.PathLike,
                  calibration: np.ndarray | None = None, mode: str = "sparse-sparse",
                  config: str | None = None, baud: int = DEFAULT_BAUD,
                  spram_bits: int | None | str = "auto", clock_mhz: float | None = None,
                  weights_in_logic="auto", lut_share: float = LUT_SHARE,
                  progress: Callable[[str], None] = print) -> Path:
    """Compile ``model`` for ``board`` into ``outdir`` (see the module doc)."""
    b = resolve_board(board, clock_mhz)
    out = Path(outdir)
    check_outdir(out)
    if mode not in ("sparse-sparse", "sparse-weights", "dense"):
        raise CosparseError(f"mode must be sparse-sparse, sparse-weights or dense, got {mode!r}")
    cfg = _read_config(config)
    check_supported(model)
    progress(f"import {model} ({mode})")
    net = import_onnx(model, calibration=calibration, mode=mode,
                      kernels_per_overlay=cfg.get("kernels_per_overlay"))
    net = to_drain_order(net)
    if calibration is not None:
        sample = network_input(net, np.asarray(calibration)[:16], "calibration")
    else:
        sample = np.random.default_rng(0).integers(-128, 128, (4, *net.input.shape)).astype(np.int8)
    return compile_network(net, sample, board=b.name, outdir=out, mode=mode, config=cfg,
                           baud=baud, spram_bits=spram_bits, clock_mhz=clock_mhz,
                           weights_in_logic=weights_in_logic, lut_share=lut_share,
                           progress=progress)


def compile_network(net: ir.Network, sample: np.ndarray, *, board: str,
                    outdir: str | os.PathLike, mode: str = "sparse-sparse",
                    config: dict | None = None, baud: int = DEFAULT_BAUD,
                    spram_bits: int | None | str = "auto", clock_mhz: float | None = None,
                    weights_in_logic="auto", lut_share: float = LUT_SHARE,
                    progress: Callable[[str], None] = print) -> Path:
    """Compile an IR network (in drain order) for ``board`` into ``outdir``.

    The part of :func:`compile_model` after the import: fold, check the fit,
    write the network, Verilog, images, link description and report.
    ``sample`` holds a few int8 network inputs (the activity the folding and
    the performance model use). ``weights_in_logic``: ``"auto"``, ``"none"``
    or a list of layer names (:func:`~.fold.choose_engines`). ``lut_share``: the share
    of the part's LUTs the fold may fill (:func:`~.fold.choose_folding`).
    """
    b = resolve_board(board, clock_mhz)
    out = Path(outdir)
    check_outdir(out)
    cfg = dict(config or {})
    if spram_bits == "auto":
        spram_bits = SPRAM_MIN_BITS if b.spram_kbit else None
    overrides = {n: LayerFold(int(f.get("entries", 1)), f.get("lanes_per_beat"), f.get("width"),
                              str(f.get("engine", "dsp")))
                 for n, f in cfg.get("folding", {}).items()}
    unknown = set(overrides) - {layer.name for layer in net.layers}
    if unknown:
        raise CosparseError(f"config folds name unknown layers {sorted(unknown)}; the layers are "
                            f"{[layer.name for layer in net.layers]}")
    progress(f"fold for {b.name} ({b.multipliers} multipliers)")
    folding = choose_folding(net, sample, max_multipliers=b.multipliers, overrides=overrides,
                             area_first=b.family == "ice40",
                             max_block_rams=board_block_rams(b),
                             weights_in_logic=weights_in_logic, max_luts=b.luts,
                             lut_share=lut_share)
    if folding.logic_layers:
        progress(f"weights in logic: {', '.join(folding.logic_layers)}")
    perf = predict(net, folding, sample)
    mults = multipliers(net, folding)
    rows = layer_table(net, folding, sample)
    in_spram = spram_weight_layers(net, folding, spram_bits) if spram_bits else {}
    blocks = sum(in_spram.values())
    if blocks > b.spram_kbit // 256:
        raise CosparseError(f"the network does not fit {b.name} ({b.fpga}): its large weight "
                            f"memories ({', '.join(in_spram)}) need {blocks} SPRAM blocks, the "
                            f"part has {b.spram_kbit // 256}; choose a larger board or a "
                            f"sparser model (mode {mode})")
    weight_bits = sum(r.get("memory_bits", 0) for r in rows if r["layer"] not in in_spram)
    if weight_bits > b.bram_kbit * 1024:
        per_layer = ", ".join(f"{r['layer']} {r['memory_bits'] / 1024:,.0f}"
                              for r in rows if "memory_bits" in r and r["layer"] not in in_spram)
        raise CosparseError(f"the network does not fit {b.name} ({b.fpga}): its weights need "
                            f"{weight_bits / 1024:,.0f} kbit of block RAM ({per_layer}), the "
                            f"board has {b.bram_kbit:,} kbit"
                            + (f" (besides {blocks} SPRAM blocks)" if blocks else "")
                            + f"; choose a larger board or a sparser model (mode {mode})")
    net.meta.update(board=b.name, folding=folding.to_dict(), multipliers=mults, config=cfg,
                    predicted={"interval_cycles": perf["interval_cycles"],
                               "bottleneck": perf["bottleneck"]})
    with new_folder(out) as tmp:
        ir.save(net, tmp)
        progress("generate Verilog")
        core = lower(net, folding)
        (tmp / "rtl").mkdir()
        core_v = verilog.convert(core, name="cosparse_core", emit_src=False)
        (tmp / "rtl" / "cosparse_core.v").write_text(core_v)
        # The board's logic: the loadable core behind the UART host link. Its memories
        # are the images (the loader's targets, and what `cosparse patch` replaces).
        link = _link_top(net, folding, b, baud, design_id(strip_memory_contents(core_v)),
                         spram_bits)
        (tmp / "rtl" / "cosparse_link_top.v").write_text(
            verilog.convert(link, name="cosparse_link_top", emit_src=False))
        images = write_images(link.core, tmp / "images")
        (tmp / "link.json").write_text(json.dumps(
            _link_json(net, link, b, baud, spram_bits, clock_mhz is not None), indent=1) + "\n")
        progress(f"wrote {len(images)} memory images and bundle.bin")
        (tmp / "report.md").write_text(_report(net, rows, perf, b, mults,
                                                  block_rams(net, folding, b.family)))
        seal(tmp)
    progress(f"wrote {out}: predicted {perf['interval_cycles']:,.0f} cycles per inference "
             f"(bottleneck {perf['bottleneck']}), {mults} multipliers")
    return out
