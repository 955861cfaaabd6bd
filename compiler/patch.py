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
2. for every memory whose contents changed: block RAM in the bitstream is
   rewritten with ``icebram`` (iCE40, on the placed ``.asc``) or ``ecpbram``
   (ECP5, on the ``.config``), which find the old contents and put the new
   ones in their place; memories without initial contents (iCE40 SPRAM) are
   only in the weight bundle, which the host loads at run time;
3. repack the bitstream and replace, in OUTDIR, the bitstream, memory images,
   bundle, manifest and tensors; the report notes the patch.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import ir
from .errors import CosparseError

__all__ = ["patch_model", "PatchError"]


class PatchError(CosparseError):
    """The new model cannot be patched into the bitstream."""


def _link_verilog(net, folding, link_cfg: dict):
    from amaranth.back import verilog

    from cosparse.boards.top import LinkTop

    from .build import strip_memory_contents

    top = LinkTop(net, folding, divisor=4, timeout=16, spram_bits=link_cfg.get("spram_bits"),
                  design_id=link_cfg["design_id"])
    return top, strip_memory_contents(verilog.convert(top, name="cosparse_link_top",
                                                      emit_src=False))


def _tool(env: dict, var: str, args: list[str], cwd: Path, stdin=None, stdout=None) -> None:
    proc = subprocess.run([env[var], *args], cwd=cwd, stdin=stdin, stdout=stdout,
                          stderr=subprocess.PIPE, env=env)
    if proc.returncode != 0:
        raise PatchError(f"{env[var]} failed: {proc.stderr.decode(errors='replace').strip()[-500:]}")


def patch_model(outdir: str | os.PathLike, model: str | os.PathLike, *,
                calibration: np.ndarray | None = None,
                progress: Callable[[str], None] = print) -> dict:
    """Patch ``model``'s weights into the bitstream of ``outdir`` (see the module doc)."""
    from cosparse.hw.network import Folding

    from .bitstream import TOP_NAME, tool_env
    from .images import memory_images, write_images
    from .onnx_frontend import check_supported, import_onnx
    from .order import to_drain_order

    t0 = time.monotonic()
    out = Path(outdir)
    try:
        rep = json.loads((out / "bitstream.json").read_text())
    except FileNotFoundError:
        raise PatchError(f"{out} has no bitstream to patch (bitstream.json): build it with "
                         "cosparse compile --board B --bitstream") from None
    family = rep.get("family")
    if family not in ("ice40", "ecp5"):
        raise PatchError(f"{out} holds a {family} build; patching needs an iCE40 or ECP5 "
                         "bitstream")
    placed = out / "build" / f"{TOP_NAME}.{'asc' if family == 'ice40' else 'config'}"
    if not placed.exists():
        raise PatchError(f"{placed} is missing: the placed design is kept by the bitstream "
                         "build and needed to patch it; rebuild with --bitstream")
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
    for key in ("board", "folding", "multipliers", "predicted", "config"):
        if key in old.meta:
            new.meta[key] = old.meta[key]
    progress("check that only memory contents change")
    old_top, old_v = _link_verilog(old, folding, link_cfg)
    new_top, new_v = _link_verilog(new, folding, link_cfg)
    if old_v != new_v:
        diff = [ln for ln in difflib.unified_diff(old_v.splitlines(), new_v.splitlines(), n=0,
                                                  lineterm="")
                if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
        raise PatchError(f"the new weights change the hardware, not only memory contents "
                         f"({len(diff)} lines of logic differ, first: {diff[0].strip()!r} / "
                         f"{diff[1].strip() if len(diff) > 1 else ''!r}): a constant held in "
                         "logic (a bias, a requantization constant of a one-beat layer) or a "
                         "width changed; rebuild with cosparse compile --bitstream")
    old_imgs = {m.name: m for m in memory_images(old_top.core)}
    new_imgs = {m.name: m for m in memory_images(new_top.core)}
    in_spram = {t["name"] for t in link_cfg["targets"] if not t["has_init"]}
    changed = [n for n in new_imgs if new_imgs[n].words != old_imgs[n].words]
    env = tool_env()
    work = Path(tempfile.mkdtemp(dir=out, prefix=".patch-"))
    try:
        cur = work / placed.name
        shutil.copy(placed, cur)
        patched, bundle_only = [], []
        for name in changed:
            if name in in_spram:
                bundle_only.append(name)
                continue
            a, b = old_imgs[name], new_imgs[name]
            digits = max(1, -(-a.width // 4))
            (work / "from.hex").write_text("".join(f"{w:0{digits}x}\n" for w in a.words))
            (work / "to.hex").write_text("".join(f"{w:0{digits}x}\n" for w in b.words))
            nxt = work / f"next.{placed.suffix[1:]}"
            progress(f"patch {name} ({a.depth} x {a.width} bits)")
            if family == "ice40":
                with open(cur, "rb") as fin, open(nxt, "wb") as fout:
                    _tool(env, "ICEBRAM", ["from.hex", "to.hex"], work, stdin=fin, stdout=fout)
            else:
                _tool(env, "ECPBRAM", ["-i", cur.name, "-o", nxt.name, "-f", "from.hex",
                                       "-t", "to.hex"], work)
            os.replace(nxt, cur)
            patched.append(name)
        ext = "bin" if family == "ice40" else "bit"
        progress("repack the bitstream")
        if family == "ice40":
            _tool(env, "ICEPACK", [cur.name, f"{TOP_NAME}.{ext}"], work)
        else:
            _tool(env, "ECPPACK", ["--input", cur.name, "--bit", f"{TOP_NAME}.{ext}"], work)
        # Everything is ready: replace OUTDIR's files.
        ir.save(new, work / "net")
        write_images(new_top.core, work / "images")
        for f in ("manifest.json", "tensors.npz"):
            os.replace(work / "net" / f, out / f)
        shutil.rmtree(out / "images", ignore_errors=True)
        os.replace(work / "images", out / "images")
        os.replace(cur, placed)
        os.replace(work / f"{TOP_NAME}.{ext}", out / f"{TOP_NAME}.{ext}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dt = time.monotonic() - t0
    result = {"model": str(model), "patched": patched, "bundle_only": bundle_only,
              "unchanged": len(new_imgs) - len(changed), "seconds": round(dt, 2)}
    rep["patch"] = result
    (out / "bitstream.json").write_text(json.dumps(rep, indent=1) + "\n")
    progress(f"patched {len(patched)} block RAM memories"
             + (f"; {len(bundle_only)} SPRAM memories are in the bundle only (cosparse run "
                "loads them)" if bundle_only else "") + f" in {dt:.1f} s")
    return result
