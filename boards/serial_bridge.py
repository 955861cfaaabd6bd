"""The simulated board: a compiled design's board top in Verilator behind a TCP serial port.

:func:`serve` builds the :class:`~cosparse.boards.top.LinkTop` of a compiled
folder (the board top minus its clock and pins: UART, host link, loadable
core, the same design id and load targets) with Verilator, and runs it with
a cocotb bridge that listens on a TCP port: bytes received on the socket are
sent into the top's ``rx`` pin bit by bit, bytes the top sends on ``tx`` are
decoded and written back. The host runtime connects with pyserial's
``socket://127.0.0.1:PORT``, exactly as it opens ``/dev/ttyUSB1`` for a
board (``cosparse run OUTDIR --port socket://...``).

The simulated UART runs at :data:`SIM_DIVISOR` cycles per bit, whatever the
board's baud rate. Clients are served one after another; the board keeps
running, with its state, between them.

For the host's recovery, the board's reset button can be pressed at chosen
moments (``resets``): after the host's n-th byte (amid a request, or right
after it), or a few cycles into the n-th inference.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from cosparse.compiler import ir
from cosparse.compiler.errors import CosparseError
from cosparse.compiler.folding import Folding
from cosparse.sim.verilate import built_model, default_build_root

from .runtime import LinkLayout
from .top import LinkTop

__all__ = ["serve", "parse_reset", "SIM_DIVISOR", "SIM_TIMEOUT"]

#: Clock cycles per UART bit in simulation.
SIM_DIVISOR = 4
#: Cycles of line silence that truncate a frame in simulation.
SIM_TIMEOUT = 20_000


#: Cycles the reset button is held, and cycles into an inference it is pressed.
RESET_CYCLES = 4
RESET_INTO_INFERENCE = 8


def parse_reset(spec: str) -> tuple[str, int]:
    """A reset moment, ``byte:N`` or ``infer:N`` (N from 1), as ``(kind, N)``."""
    kind, _, n = spec.partition(":")
    if kind not in ("byte", "infer") or not n.isdigit() or int(n) < 1:
        raise CosparseError(f"a reset moment is byte:N (after the host's N-th byte) or infer:N "
                         f"(amid the N-th inference), N from 1; got {spec!r}")
    return kind, int(n)


def link_top_for(outdir: str | Path):
    """The simulated board top of a compiled folder."""
    net = ir.load(outdir)
    layout = LinkLayout.read(outdir)
    link = json.loads((Path(outdir) / "link.json").read_text())
    return LinkTop(net, Folding.from_dict(net.meta["folding"]), divisor=SIM_DIVISOR,
                   timeout=SIM_TIMEOUT, spram_bits=link.get("spram_bits"),
                   design_id=layout.design_id)


def serve(outdir: str | Path, *, port: int = 0, port_file: str | Path | None = None,
          build_root: Path | None = None, max_seconds: float = 3600.0,
          clients: int | None = 1, resets: tuple[str, ...] = (), progress=print,
          ready=None) -> dict:
    """Serve the simulated board of ``outdir`` on ``127.0.0.1:port``.

    One client at a time, ``clients`` of them (None: until ``max_seconds``);
    between clients the board keeps running with its state (loaded weights
    stay loaded), as a board on a serial port does. ``port`` 0 picks a free
    port; it is written to ``port_file`` (when given) once the simulation
    listens. ``resets``: moments to press the reset button (:func:`parse_reset`).
    Returns the session's figures: bytes each way, clients served, resets,
    simulated cycles, wall seconds. ``ready(port)`` is called once it listens.
    """
    if clients is not None and clients < 1:
        raise ValueError(f"clients must be at least 1 (or None), got {clients!r}")
    moments = [parse_reset(r) for r in resets]
    from cocotb_tools.check_results import get_results  # cocotb's runner side, as sim.verilate

    top = link_top_for(outdir)
    progress("build the simulated board top with Verilator")
    with built_model(top, "cosparse_link_top", build_root or default_build_root()) as \
            (runner, build_dir), tempfile.TemporaryDirectory(dir=build_dir, prefix="serve-") as run:
        result = Path(run) / "result.json"
        run = str(Path(run).resolve())
        pf = Path(port_file) if port_file else Path(run) / "port"
        pf.unlink(missing_ok=True)
        env = {"COSPARSE_SERIAL_PORT": str(port), "COSPARSE_SERIAL_PORT_FILE": str(pf.resolve()),
               "COSPARSE_SERIAL_RESULT": str(result), "COSPARSE_SERIAL_DIVISOR": str(SIM_DIVISOR),
               "COSPARSE_SERIAL_MAX_SECONDS": str(max_seconds),
               "COSPARSE_SERIAL_CLIENTS": str(clients or 0),
               "COSPARSE_SERIAL_RESETS": ",".join(f"{k}:{n}" for k, n in moments)}
        stop = threading.Event()

        def announce():  # the simulator runs in another process: watch for its port file
            while not stop.is_set():
                if pf.exists():
                    if ready is not None:
                        ready(int(pf.read_text()))
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=announce, daemon=True)
        watcher.start()
        try:
            xml = runner.test(test_module="cosparse.boards.serial_bridge", hdl_toplevel="cosparse_link_top",
                              build_dir=build_dir, test_dir=run, extra_env=env,
                              log_file=Path(run) / "test.log")
        finally:
            stop.set()
        total, failed = get_results(xml)
        if failed or not result.exists():
            log = (Path(run) / "test.log").read_text()[-3000:]
            raise RuntimeError(f"the simulated board failed:\n{log}")
        return json.loads(result.read_text())


# ---------------------------------------------------------------------------- cocotb side
try:
    import cocotb
except ImportError:  # pragma: no cover - cocotb is a dependency
    cocotb = None

if cocotb is not None:
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles, Edge, FallingEdge

    @cocotb.test()
    async def bridge(dut):
        """Bridge TCP clients, one at a time, to the top's UART pins."""
        d = int(os.environ["COSPARSE_SERIAL_DIVISOR"])
        max_seconds = float(os.environ["COSPARSE_SERIAL_MAX_SECONDS"])
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
        dut.rx.value = 1
        dut.rst.value = 1
        await ClockCycles(dut.clk, 4)
        dut.rst.value = 0
        await ClockCycles(dut.clk, 4)

        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", int(os.environ["COSPARSE_SERIAL_PORT"])))
        srv.listen(1)
        pf = Path(os.environ["COSPARSE_SERIAL_PORT_FILE"])
        tmp = pf.with_suffix(".tmp")
        tmp.write_text(str(srv.getsockname()[1]))
        os.replace(tmp, pf)  # whole, so a reader never sees a half-written number
        srv.setblocking(False)
        clients = int(os.environ.get("COSPARSE_SERIAL_CLIENTS", "1"))  # 0: no limit
        t0 = time.monotonic()

        received = bytearray()  # from the top's tx
        stats = {"bytes_to_device": 0, "bytes_from_device": 0, "clients": 0, "resets": 0}
        moments = [parse_reset(r) for r in os.environ.get("COSPARSE_SERIAL_RESETS", "")
                   .split(",") if r]
        after_byte = {n for k, n in moments if k == "byte"}
        into_inference = {n for k, n in moments if k == "infer"}

        async def press_reset():
            dut.rst.value = 1
            await ClockCycles(dut.clk, RESET_CYCLES)
            dut.rst.value = 0
            stats["resets"] += 1

        async def inference_watch():  # the 'running' LED rises as an inference starts
            started, was = 0, 0
            while True:
                await Edge(dut.leds)
                now = (int(dut.leds.value) >> 1) & 1
                if now and not was:
                    started += 1
                    if started in into_inference:
                        await ClockCycles(dut.clk, RESET_INTO_INFERENCE)
                        await press_reset()
                        now = 0
                was = now

        if into_inference:
            cocotb.start_soon(inference_watch())

        async def tx_monitor():
            while True:
                await FallingEdge(dut.tx)
                await ClockCycles(dut.clk, d + d // 2)
                v = 0
                for i in range(8):
                    v |= int(dut.tx.value) << i
                    await ClockCycles(dut.clk, d)
                received.append(v)

        cocotb.start_soon(tx_monitor())
        cycles = 0

        def out_of_time() -> bool:
            return time.monotonic() - t0 > max_seconds

        # One client at a time; the board runs on, with its state, between them.
        while (clients == 0 or stats["clients"] < clients) and not out_of_time():
            conn = None
            while conn is None and not out_of_time():
                try:
                    conn, _ = srv.accept()
                except BlockingIOError:
                    await ClockCycles(dut.clk, 64 * d)  # nobody listens to tx meanwhile
                    cycles += 64 * d
                    received.clear()
            if conn is None:
                break
            conn.setblocking(False)
            stats["clients"] += 1
            pending = bytearray()
            open_ = True
            while open_ or pending:
                if open_:
                    try:
                        chunk = conn.recv(65536)
                        if not chunk:
                            open_ = False
                        pending += chunk
                    except BlockingIOError:
                        pass
                    except ConnectionError:
                        open_ = False
                if pending:
                    b = pending.pop(0)
                    stats["bytes_to_device"] += 1
                    for bit in [0] + [(b >> i) & 1 for i in range(8)] + [1]:
                        dut.rx.value = bit
                        await ClockCycles(dut.clk, d)
                    cycles += 10 * d
                    if stats["bytes_to_device"] in after_byte:
                        await press_reset()
                        cycles += RESET_CYCLES
                else:
                    await ClockCycles(dut.clk, 16 * d)
                    cycles += 16 * d
                if received and open_:
                    try:
                        conn.sendall(bytes(received))
                        stats["bytes_from_device"] += len(received)
                    except ConnectionError:
                        open_ = False
                    received.clear()
                if out_of_time():
                    break
            conn.close()
        srv.close()
        stats.update(cycles=cycles, seconds=time.monotonic() - t0)
        Path(os.environ["COSPARSE_SERIAL_RESULT"]).write_text(json.dumps(stats))
