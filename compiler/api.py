"""The public Python API: compile a model, run it, build it, keep it.

::

    from cosparse.compiler import api

    acc = api.compile("model.onnx", board="ulx3s-85f", calibration=x_cal)
    y = acc.golden(x)              # the bit-exact integer model, outputs as the ONNX model's
    sim = acc.simulate(x[:8])      # Verilator: sim.outputs == acc.golden(x[:8]), sim.interval_cycles
    acc.save("out/")               # the folder `cosparse compile` writes
    report = acc.build()           # bitstream and its report (yosys, nextpnr)
    acc = api.load("out/")

Every command of the ``cosparse`` CLI is a call of this module. Failures are
:class:`~cosparse.compiler.errors.CosparseError` with a one-paragraph message.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from cosparse.boards.bitstream import build_bitstream, tool_env
from cosparse.boards.catalog import BOARDS, Board, get_board
from cosparse.boards.patch import patch_model
from cosparse.boards.runtime import Device, DeviceError
from cosparse.boards.serial_bridge import serve as serve_board
from cosparse.hw.protocol import Code
from cosparse.sim import golden as golden_model
from cosparse.sim.netsim import simulate_network

from . import ir
from .manifest import verify
from .build import (DEFAULT_BAUD, check_outdir, compile_model, compile_network, network_input,
                    network_output, new_folder)
from .errors import CosparseError
from .fold import LUT_SHARE
from .folding import Folding
from .perf import predict

__all__ = ["compile", "compile_ir", "load", "boards", "patch", "serve", "check_bitstream_tools",
           "Accelerator", "Simulation", "BoardRun", "MODES"]

#: What a build processes: every weight and input (dense), the non-zero weights
#: (sparse-weights), or the non-zero weights of the active inputs (sparse-sparse).
MODES = ("sparse-sparse", "sparse-weights", "dense")

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class Simulation:
    """Outputs and cycle counts of inferences in Verilator.

    Attributes
    ----------
    outputs : ndarray
        Float outputs in the model's layout (as :meth:`Accelerator.golden`).
    raw : ndarray
        The core's integer outputs (int8, or int32 logits), in the IR's layout.
    latency_cycles : int
        Input of the first frame to its last output beat.
    interval_cycles : float or None
        Mean cycles between consecutive outputs (None for one input).
    predicted_interval_cycles : float
        The performance model's interval for the same inputs.
    total_cycles : int
    seconds : float
        Wall time of the simulation.
    """

    outputs: np.ndarray
    raw: np.ndarray
    latency_cycles: int
    interval_cycles: float | None
    predicted_interval_cycles: float
    total_cycles: int
    seconds: float


@dataclass
class BoardRun:
    """Outputs of inferences on a board (or a simulated one) over the UART link."""

    outputs: np.ndarray
    raw: np.ndarray
    latency_cycles: list[int]
    seconds: float
    loaded_bytes: int
    #: Requests sent again (no answer, a corrupted one, a damaged frame) and weight
    #: bundles loaded again after the device lost them.
    retries: int = 0
    reloads: int = 0


class Accelerator:
    """A compiled network for one board: its IR, folding and report, and its folder.

    Made by :func:`compile` or :func:`load`, not directly.

    Attributes
    ----------
    network : ir.Network
        The quantized network, overlay layers in drain order; ``network.meta``
        holds the board, folding and predicted cycles.
    folding : Folding or None
        Each layer's parallelism (None for a network saved without one,
        which only the golden model can run).
    board : Board
    report : str
        ``report.md``: per layer shapes, density, fill, MACs, fold, cycles, memory.
    folder : Path
        The compiled folder (a temporary one until :meth:`save`).
    """

    def __init__(self, folder: str | os.PathLike, *, temporary: bool = False):
        self.folder = Path(folder)
        verify(self.folder)  # never run a folder edited after compiling
        self.network = ir.load(self.folder)
        fold = self.network.meta.get("folding")
        self.folding = None if fold is None else Folding.from_dict(fold)
        self.board = get_board(self.network.meta.get("board", "sim"))
        report = self.folder / "report.md"
        self.report = report.read_text() if report.exists() else ""
        self._cleanup = (weakref.finalize(self, shutil.rmtree, self.folder.parent, True)
                         if temporary else None)

    def __repr__(self) -> str:
        return (f"<Accelerator {self.network.name!r} for {self.board.name}, "
                f"{len(self.network.layers)} layers, {str(self.folder)!r}>")

    @property
    def predicted_interval_cycles(self) -> float:
        """The performance model's cycles per inference on the compile's sample."""
        return float(self.network.meta.get("predicted", {}).get("interval_cycles", float("nan")))

    def quantize(self, x: np.ndarray, what: str = "input") -> np.ndarray:
        """Float inputs in the model's layout (or the IR's int8 frames) as int8 frames."""
        return network_input(self.network, np.asarray(x), what)

    def dequantize(self, y: np.ndarray) -> np.ndarray:
        """The core's integer outputs as float32 in the model's layout and order."""
        return network_output(self.network, y)

    def golden(self, x: np.ndarray, *, raw: bool = False) -> np.ndarray:
        """The golden model's outputs for inputs ``x`` ``[N, ...]``.

        Float outputs in the model's layout, or with ``raw`` the integer
        outputs the hardware produces (bit for bit).
        """
        y = golden_model.run(self.network, self.quantize(x))
        return y if raw else self.dequantize(y)

    def require_folding(self) -> None:
        """Raise :class:`CosparseError` unless the folder holds a folding (a core to build)."""
        if self.folding is None:
            raise CosparseError(f"{str(self.folder)!r} holds no folding (manifest meta.folding); "
                                "compile it with cosparse compile")

    def predict(self, x: np.ndarray) -> dict:
        """The performance model's cycles per stage and interval for inputs ``x``."""
        self.require_folding()
        return predict(self.network, self.folding, self.quantize(x))

    def simulate(self, x: np.ndarray, *, waves: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> Simulation:
        """Run inputs ``x`` back to back through the core in Verilator.

        The model is built once into ``folder/sim_build`` and reused. With
        ``waves``, an FST trace is written beside it.
        """
        self.require_folding()
        xq = self.quantize(x)
        t0 = time.perf_counter()
        run = simulate_network(self.network, self.folding, xq, build_root=self.sim_build,
                               waves=waves, progress=progress)
        dt = time.perf_counter() - t0
        pred = predict(self.network, self.folding, xq[1:] if len(xq) > 1 else xq)
        return Simulation(self.dequantize(run.outputs), run.outputs, run.latency_cycles,
                          run.interval_cycles, pred["interval_cycles"], run.total_cycles, dt)

    @property
    def sim_build(self) -> Path:
        """Where the Verilator models of this accelerator are built."""
        return self.folder / "sim_build"

    def save(self, folder: str | os.PathLike) -> Path:
        """Copy the compiled folder (and its bitstream build, if any; not the Verilator
        models) to ``folder`` (a new or empty folder, or an earlier build); this
        accelerator then lives there."""
        out = Path(folder)
        if out.resolve() == self.folder.resolve():
            return out
        check_outdir(out)
        with new_folder(out) as tmp:
            shutil.copytree(self.folder, tmp, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("sim_build"))
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None
        self.folder = out
        return out

    def build(self, *, progress: Progress = _quiet, pnr_minutes: float | None = None) -> dict:
        """Synthesise, place, route and pack the board's bitstream into ``folder/build``.

        Returns the bitstream report (``bitstream.json``: tools, utilisation,
        Fmax, clock). Needs a real board (not ``sim``). Compiled without
        ``clock_mhz``, a design that misses the board's default clock is built
        once more at the highest PLL clock below its Fmax (with a margin: see
        :func:`~cosparse.boards.bitstream.build_bitstream`).
        """
        if self.board.family == "sim":
            raise CosparseError("a bitstream needs a real board; this accelerator was compiled "
                                "for 'sim' (the core alone in Verilator)")
        tool_env()
        return build_bitstream(self.folder, progress=progress, pnr_minutes=pnr_minutes)

    def patch(self, model: str | os.PathLike, *, calibration: np.ndarray | None = None,
              progress: Progress = _quiet) -> None:
        """New weights of ``model`` (same topology) into the built iCE40 bitstream,
        without place and route."""
        patch(self.folder, model, calibration=calibration, progress=progress)
        self.network = ir.load(self.folder)

    def run(self, x: np.ndarray, port: str, *, baud: int | None = None, timeout: float = 5.0,
            load: str = "auto", retries: int = 2, progress: Progress = _quiet) -> BoardRun:
        """Inferences on a board programmed with this build, over its serial ``port``.

        ``load``: ``auto`` loads the weight bundle when the device has none (and again
        if it loses them, as a reset amid a load does), ``always`` loads it first anyway,
        ``never`` refuses a device without weights. A request with no answer (a reset
        amid an inference, line noise) is sent again up to ``retries`` times, and lost
        weights are loaded again up to ``retries`` times.
        """
        if load not in ("auto", "always", "never"):
            raise CosparseError(f"load must be auto, always or never, not {load!r}")
        xq = self.quantize(x)
        dev = Device.open(self.folder, port, baud=baud, timeout=timeout, retries=retries,
                          progress=progress)
        bundle = self.folder / "images" / "bundle.bin"
        sent, reloads = 0, 0

        def load_weights() -> None:
            nonlocal sent
            t0 = time.perf_counter()
            n = dev.load_bundle(bundle.read_bytes(), progress=progress)
            dt = time.perf_counter() - t0
            sent += n
            progress(f"loaded {n:,} bytes of weights in {dt:.1f} s ({n / max(dt, 1e-9):,.0f} B/s)")

        def infer(xi: np.ndarray) -> tuple[np.ndarray, int]:
            nonlocal reloads
            while True:
                before = dev.retried
                try:
                    y, latency, _ = dev.infer(xi)
                except DeviceError as e:
                    if e.code != Code.NOT_LOADED or load == "never" or reloads >= retries:
                        raise
                    progress("the device has lost its weights (a reset amid a load?): "
                             "loading them again")
                    reloads += 1
                    load_weights()
                    continue
                if dev.retried > before:  # say what the device went through
                    st = dev.status()
                    if st.reset:
                        progress(f"the device was reset: weights "
                                 f"{'still sealed' if st.loaded else 'not loaded'}")
                return y, latency

        try:
            st = dev.check_design()
            progress(f"device runs design {st.design_id:08x}: weights "
                     f"{'loaded' if st.loaded else 'not loaded'}, {st.inferences} inferences "
                     "so far")
            if load == "always" or (load == "auto" and not st.loaded):
                load_weights()
            elif not st.loaded:
                raise CosparseError("the device's weights are not loaded and load='never'")
            ys, lat = [], []
            t0 = time.perf_counter()
            step = max(1, len(xq) // 10)
            for i, xi in enumerate(xq):
                y, latency = infer(xi)
                ys.append(y)
                lat.append(latency)
                if (i + 1) % step == 0 or i + 1 == len(xq):
                    progress(f"{i + 1}/{len(xq)} inferences")
            dt = time.perf_counter() - t0
        finally:
            dev.close()
        raw = np.stack(ys)
        return BoardRun(self.dequantize(raw), raw, lat, dt, sent, dev.retried, reloads)

    def serve(self, *, port: int = 0, port_file: str | os.PathLike | None = None,
              clients: int | None = 1, max_seconds: float = 3600.0,
              resets: tuple[str, ...] = (), progress: Progress = _quiet,
              ready: Callable[[int], None] | None = None) -> dict:
        """The board top in Verilator behind a TCP serial port (``socket://127.0.0.1:port``),
        for ``clients`` clients one after another (None: until ``max_seconds``), the board
        keeping its state between them; returns the session's figures. ``resets``: moments
        to press its reset button, ``byte:N`` (after the host's N-th byte) or ``infer:N``
        (amid the N-th inference)."""
        return serve(self.folder, port=port, port_file=port_file, clients=clients,
                     max_seconds=max_seconds, resets=resets, progress=progress, ready=ready)


def _model_path(model: str | os.PathLike | onnx.ModelProto, work: Path) -> Path:
    if isinstance(model, onnx.ModelProto):
        # Named after the graph, as a file of the model usually is (the network's name).
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in model.graph.name)
        path = work / f"{stem or 'model'}.onnx"
        onnx.save(model, str(path))
        return path
    return Path(model)


def compile(model: str | os.PathLike | onnx.ModelProto, *, board: str = "sim",
            calibration: np.ndarray | None = None, mode: str = "sparse-sparse",
            outdir: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
            baud: int = DEFAULT_BAUD, clock_mhz: float | None = None,
            weights_in_logic: str | list[str] = "auto", lut_share: float = LUT_SHARE,
            progress: Progress = _quiet) -> Accelerator:
    """Compile an ONNX model into an accelerator for ``board``.

    Parameters
    ----------
    model : path or onnx.ModelProto
        A float or QDQ model (PyTorch's exporters, ONNX Runtime's quantizer).
    board : str
        A catalog board (:func:`boards`), or ``sim`` for the core alone.
    calibration : ndarray, optional
        Float inputs ``[N, ...]`` in the model's layout, to quantize a float
        model's activations (and to fold on real activity).
    mode : str
        One of :data:`MODES`.
    outdir : path, optional
        Write the compiled folder there (default: a temporary folder until
        :meth:`Accelerator.save`).
    config : path, optional
        A JSON config (``kernels_per_overlay``, per-layer ``folding``).
    baud, clock_mhz
        The host link's baud rate and the design's clock (default the board's).
    weights_in_logic : "auto", "none" or list of str
        Layers whose weights become shift-and-add logic instead of an engine
        of DSP multipliers and weight memory (a first conv on a dense map):
        ``"auto"`` takes them where the part's LUTs allow, a list names them.
        Their weights are fixed at build time (:meth:`Accelerator.patch`
        refuses to change them).
    lut_share : float
        The share of the part's LUTs the fold may fill (0.1 to 1, default 0.8):
        less leaves the router room on a congested part, at more cycles.

    Returns
    -------
    Accelerator

    Raises
    ------
    CosparseError
        An unsupported model, one that does not fit the board, bad arguments.
    """
    if outdir is not None:
        out, temporary = Path(outdir), False
    else:
        out, temporary = Path(tempfile.mkdtemp(prefix="cosparse-")) / "accelerator", True
    # A ModelProto is written to a file first: in the temporary folder, or in one of
    # its own beside a given outdir, removed after the compile.
    work = None
    if isinstance(model, onnx.ModelProto) and not temporary:
        work = Path(tempfile.mkdtemp(prefix="cosparse-model-"))
    try:
        model_path = _model_path(model, work or out.parent)
        compile_model(model_path, board=board, outdir=out, calibration=calibration, mode=mode,
                      config=None if config is None else str(config), baud=baud,
                      clock_mhz=clock_mhz, weights_in_logic=weights_in_logic,
                      lut_share=lut_share, progress=progress)
    except BaseException:
        if temporary:
            shutil.rmtree(out.parent, ignore_errors=True)
        raise
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return Accelerator(out, temporary=temporary)


def compile_ir(net: ir.Network, sample: np.ndarray, *, board: str = "sim",
               mode: str = "sparse-sparse", outdir: str | os.PathLike | None = None,
               config: dict | None = None, weights_in_logic: str | list[str] = "auto",
               lut_share: float = LUT_SHARE, progress: Progress = _quiet) -> Accelerator:
    """Compile an IR network (overlay layers in drain order) for ``board``.

    ``sample`` holds a few int8 network inputs: the activity the fold and
    the performance model use. Otherwise as :func:`compile`.
    """
    if outdir is not None:
        out, temporary = Path(outdir), False
    else:
        out, temporary = Path(tempfile.mkdtemp(prefix="cosparse-")) / "accelerator", True
    try:
        compile_network(net, np.asarray(sample), board=board, outdir=out, mode=mode,
                        config=config, weights_in_logic=weights_in_logic,
                        lut_share=lut_share, progress=progress)
    except BaseException:
        if temporary:
            shutil.rmtree(out.parent, ignore_errors=True)
        raise
    return Accelerator(out, temporary=temporary)


def load(folder: str | os.PathLike) -> Accelerator:
    """The accelerator compiled into ``folder`` (by :func:`compile` or ``cosparse compile``)."""
    return Accelerator(folder)


def check_bitstream_tools(board: str) -> Board:
    """The catalog board, after checking that it is real and that yosys and nextpnr run,
    before any long work."""
    b = get_board(board)
    if b.family == "sim":
        raise CosparseError("--bitstream needs a real board (--board B, see cosparse boards); "
                            "'sim' is the core alone in Verilator")
    tool_env()
    return b


def patch(folder: str | os.PathLike, model: str | os.PathLike, *,
          calibration: np.ndarray | None = None, progress: Progress = _quiet) -> None:
    """New weights of ``model`` (same topology) into the iCE40 bitstream built in
    ``folder``, without place and route (see :meth:`Accelerator.patch`)."""
    patch_model(folder, model, calibration=calibration, progress=progress)


def serve(folder: str | os.PathLike, *, port: int = 0,
          port_file: str | os.PathLike | None = None, clients: int | None = 1,
          max_seconds: float = 3600.0, resets: tuple[str, ...] = (),
          progress: Progress = _quiet, ready: Callable[[int], None] | None = None) -> dict:
    """The board top of the compiled ``folder`` in Verilator on a TCP serial port
    (see :meth:`Accelerator.serve`)."""
    verify(folder)
    return serve_board(folder, port=port, port_file=port_file, clients=clients,
                       max_seconds=max_seconds, resets=tuple(resets),
                       build_root=Path(folder) / "sim_build", progress=progress, ready=ready)


def boards() -> dict[str, Board]:
    """The target boards by name, with their resources."""
    return dict(BOARDS)
