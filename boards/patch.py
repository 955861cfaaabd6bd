"""``cosparse patch``: new weights into a built bitstream, without synthesis or place and route.

A model retrained (or re-pruned with the same masks' shapes) keeps the
network's topology; only the contents of its weight memories change. The
steps:

1. import the new model like the compiled one (same mode, packing options,
   drain order) and check that its hardware is the same: the board top's
   Verilog, memory contents removed, must be identical (same layers, shapes,
   folding, widths of every constant). Anything else (a bias or
   requantization constant held in logic, a wider accumulator) needs a
   rebuild, and the error says which line of logic differs;
2. write the new contents into the block RAM of nextpnr's placed design
   (``build/cosparse_top.asc``): the bitstream was built with seeded random
   placeholders in every block-RAM weight memory, which locate each memory
   bit in any RAM mode (:func:`~.bitstream.ice40_bram_map`); the result is
   read back and compared. Memories without initial contents (iCE40 SPRAM)
   are only in the weight bundle, which the host loads at run time. ECP5
   builds are refused: YoWASP's ``ecpbram`` cannot load its device database,
   so they carry their contents from synthesis;
3. repack the bitstream and replace, in OUTDIR, the bitstream, memory images,
   bundle, manifest and tensors; the report notes the patch.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from amaranth.back import verilog

from cosparse.compiler import ir
from cosparse.compiler.emit import memory_images, write_images
from cosparse.compiler.manifest import seal, verify
from cosparse.compiler.errors import CosparseError
from cosparse.compiler.folding import Folding
from cosparse.compiler.frontend import check_supported, import_onnx
from cosparse.compiler.lower import lower
from cosparse.compiler.order import to_drain_order
from cosparse.compiler.packer import unpack

from .bitstream import TOP_NAME, pack_placed, patch_placed, tool_env
from .top import LinkTop, strip_memory_contents

__all__ = ["patch_model", "logic_changes", "PatchError"]


class PatchError(CosparseError):
    """The new model cannot be patched into the bitstream."""


def _link_verilog(net, folding, link_cfg: dict, seed: int):
    top = LinkTop(net, folding, divisor=4, timeout=16, spram_bits=link_cfg.get("spram_bits"),
                  design_id=link_cfg["design_id"], patch_seed=seed)
    text = strip_memory_contents(verilog.convert(top, name="cosparse_link_top", emit_src=False))
    return top, text


def logic_changes(old: ir.Network, new: ir.Network, folding: Folding) -> list[str]:
    """The layers whose weights are logic in ``folding`` and differ between the two networks."""
    layers = {la.name: la for la in new.layers}
    return [la.name for la in old.layers if la.name in folding.logic_layers
            and not np.array_equal(unpack(la.overlays), unpack(layers[la.name].overlays))]


def patch_model(outdir: str | os.PathLike, model: str | os.PathLike, *,
                calibration: np.ndarray | None = None,
                progress: Callable[[str], None] = print) -> dict:
    """Patch ``model``'s weights into the bitstream of ``outdir`` (see the module doc)."""
    t0 = time.monotonic()
    out = Path(outdir)
    try:
        rep = json.loads((out / "bitstream.json").read_text())
    except FileNotFoundError:
        raise PatchError(f"{out} has no bitstream to patch (bitstream.json): build it with "
                         "cosparse compile --board B --bitstream") from None
    family = rep.get("family")
    if family != "ice40" or rep.get("patch_seed") is None:
        raise PatchError(f"{out} holds a {family} build; patching works on iCE40 bitstreams "
                         "(ECP5: YoWASP's ecpbram has no device database here, so ECP5 builds "
                         "carry their contents from synthesis): rebuild with cosparse compile "
                         "--bitstream")
    placed = out / "build" / f"{TOP_NAME}.{'asc' if family == 'ice40' else 'config'}"
    if not placed.exists():
        raise PatchError(f"{placed} is missing: the placed design is kept by the bitstream "
                         "build and needed to patch it; rebuild with --bitstream")
    verify(out)
    old = ir.load(out)
    link_cfg = json.loads((out / "link.json").read_text())
    folding = Folding.from_dict(old.meta["folding"])
    check_supported(model)
    progress(f"import {model} ({old.meta.get('mode')})")
    new = import_onnx(model, calibration=calibration, mode=old.meta.get("mode", "sparse-sparse"),
                      kernels_per_overlay=old.meta.get("config", {}).get("kernels_per_overlay"))
    new = to_drain_order(new)
    shape = [(la.name, la.kind) for la in old.layers], [s.shape for s in old.specs()]
    if ([(la.name, la.kind) for la in new.layers], [s.shape for s in new.specs()]) != shape:
        raise PatchError(f"{model} is not the topology of {out} (layers or shapes differ); "
                         "compile it anew")
    fixed = logic_changes(old, new, folding)
    if fixed:
        raise PatchError(f"the new model changes the weights of {', '.join(fixed)}, which this "
                         f"build holds as logic (shift-and-add, fixed at build time), not in "
                         f"memory: rebuild with cosparse compile --bitstream (or compile with "
                         f"--weights-in-logic none to patch those weights later)")
    for key in ("board", "folding", "multipliers", "predicted", "config"):
        if key in old.meta:
            new.meta[key] = old.meta[key]
    progress("check that only memory contents change")
    old_top, old_v = _link_verilog(old, folding, link_cfg, rep.get("patch_seed"))
    new_top, new_v = _link_verilog(new, folding, link_cfg, rep.get("patch_seed"))
    if old_v != new_v:
        diff = [ln for ln in difflib.unified_diff(old_v.splitlines(), new_v.splitlines(), n=0,
                                                  lineterm="")
                if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
        raise PatchError(f"the new weights change the hardware, not only memory contents "
                         f"({len(diff)} lines of logic differ, first: {diff[0].strip()!r} / "
                         f"{diff[1].strip() if len(diff) > 1 else ''!r}): a constant held in "
                         "logic (a bias, a requantization constant of a one-beat layer) or a "
                         "width changed; rebuild with cosparse compile --bitstream")
    old_ports = {p.name: p for p in old_top.core.load_ports}
    new_ports = {p.name: p for p in new_top.core.load_ports}
    # Memories that are not load targets (k-WTA boost tables) are logic of the build.
    fixed_old = {m.name: m.words for m in memory_images(old_top.core) if m.name not in old_ports}
    fixed_new = {m.name: m.words for m in memory_images(new_top.core) if m.name not in new_ports}
    if fixed_old != fixed_new:
        names = sorted(n for n in fixed_new if fixed_old.get(n) != fixed_new[n])
        raise PatchError(f"the new model changes memories that are not weights ({names}, "
                         "e.g. k-WTA boost factors): rebuild with cosparse compile --bitstream")
    changed = [n for n, p in new_ports.items() if p.image != old_ports[n].image]
    bundle_only = [n for n in changed if not new_ports[n].has_init]
    targets = [p for p in new_ports.values() if p.has_init]
    progress(f"{len(changed)} of {len(new_ports)} memories change"
             + (f" ({len(bundle_only)} in SPRAM: loaded at run time)" if bundle_only else ""))
    env = tool_env()
    build = out / "build"
    ext = "bin" if family == "ice40" else "bit"
    placed = patch_placed(build, targets, progress, out_name=f"{TOP_NAME}.patched.asc")
    pack_placed(build, family, env, placed, build / f"{TOP_NAME}.patched.{ext}")
    # Everything is ready: replace OUTDIR's files.
    work = Path(tempfile.mkdtemp(dir=out, prefix=".patch-"))
    try:
        ir.save(new, work / "net")
        # The load ports' names and contents are the core's, as the link top builds it.
        write_images(lower(new, folding, loadable=True, spram_bits=link_cfg.get("spram_bits")),
                     work / "images")
        for f in ("manifest.json", "tensors.npz"):
            os.replace(work / "net" / f, out / f)
        shutil.rmtree(out / "images", ignore_errors=True)
        os.replace(work / "images", out / "images")
        seal(out)  # the new arrays and images are the folder's now
        os.replace(placed, build / f"{TOP_NAME}.filled{placed.suffix}")
        os.replace(build / f"{TOP_NAME}.patched.{ext}", out / f"{TOP_NAME}.{ext}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    patched = [n for n in changed if n not in bundle_only]
    dt = time.monotonic() - t0
    result = {"model": str(model), "patched": patched, "bundle_only": bundle_only,
              "unchanged": len(new_ports) - len(changed), "seconds": round(dt, 2)}
    rep["patch"] = result
    (out / "bitstream.json").write_text(json.dumps(rep, indent=1) + "\n")
    progress(f"patched {len(patched)} block RAM memories"
             + (f"; {len(bundle_only)} SPRAM memories are in the bundle only (cosparse run "
                "loads them)" if bundle_only else "") + f" in {dt:.1f} s")
    return result
