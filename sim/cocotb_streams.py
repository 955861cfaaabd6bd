"""Generic cocotb stream testbench: drivers, monitors and the one test they run.

The pytest side (:mod:`cosparse.sim.verilate`) writes a JSON spec -- for each
input port its payload beats as integers, for each output port how many
beats to collect, the stall probability and the seed -- and points
``COSPARSE_TB_SPEC`` at it. :func:`run_streams` drives the ports of the
Verilated design (Amaranth names them ``<port>__payload/valid/ready``) with
random valid/ready stalls and writes the collected beats and the cycle of
each into ``COSPARSE_TB_RESULT``; the comparison with the golden model
happens back in pytest, so this module knows nothing of any unit.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly, RisingEdge, with_timeout

__all__ = ["StreamDriver", "StreamMonitor", "run_streams"]


PERIOD_NS = 10


class _Cycles:
    """Rising edges since the end of reset, read off the simulation time (no
    coroutine wakes on every edge to count them)."""

    def __init__(self):
        self.t0 = None

    def start(self) -> None:
        self.t0 = get_sim_time("ns")

    @property
    def now(self) -> int:
        return int(get_sim_time("ns") - self.t0) // PERIOD_NS


def _bind(obj, dut, prefix: str, clk, cycles: _Cycles, rng: random.Random, stall: float) -> None:
    """Attach the stream ``<prefix>__payload/valid/ready`` of ``dut`` and the run's state."""
    obj.payload = getattr(dut, f"{prefix}__payload")
    obj.valid = getattr(dut, f"{prefix}__valid")
    obj.ready = getattr(dut, f"{prefix}__ready")
    obj.clk, obj.cycles, obj.rng, obj.stall = clk, cycles, rng, stall


class StreamDriver:
    """Drives ``<prefix>__payload/valid`` and honours ``<prefix>__ready``.

    Signals are written just after a rising edge and sampled in the
    read-only phase before the next one, when the design's combinational
    ``ready`` has settled: a beat is taken at the edge after a sample with
    valid and ready both high.
    """

    def __init__(self, *args):
        _bind(self, *args)
        self.accepted: list[int] = []
        self.valid.value = 0

    async def send(self, beats: list[int]) -> None:
        for raw in beats:
            while self.rng.random() < self.stall:
                self.valid.value = 0
                await RisingEdge(self.clk)
            self.payload.value = raw
            self.valid.value = 1
            while True:
                await ReadOnly()
                taken = bool(self.ready.value)
                if taken:
                    await RisingEdge(self.clk)
                    break
                # Sleep until ready rises (it settles before the read-only phase).
                await RisingEdge(self.ready)
            self.accepted.append(self.cycles.now)
        self.valid.value = 0


class StreamMonitor:
    """Collects beats from ``<prefix>__payload/valid``, driving ``ready`` with stalls."""

    def __init__(self, *args):
        _bind(self, *args)
        self.beats: list[str] = []
        self.at: list[int] = []
        self.ready.value = 0

    async def receive(self, count: int) -> None:
        while len(self.beats) < count:
            ready = self.rng.random() >= self.stall
            self.ready.value = int(ready)
            await ReadOnly()
            if ready and self.valid.value:
                self.beats.append(hex(self.payload.value.to_unsigned()))
                self.at.append(self.cycles.now)
            elif ready and not self.stall:
                await RisingEdge(self.valid)  # nothing to take: sleep until valid rises
                continue
            await RisingEdge(self.clk)
        self.ready.value = 0


@cocotb.test()
async def run_streams(dut):
    """Drive and collect every stream named in the spec; save what came out."""
    spec = json.loads(open(os.environ["COSPARSE_TB_SPEC"]).read())
    rng = random.Random(spec["seed"])
    stall = spec["stall"]
    clk = dut.clk
    cocotb.start_soon(Clock(clk, PERIOD_NS, unit="ns").start())
    cycles = _Cycles()
    dut.rst.value = 1
    drivers = [StreamDriver(dut, p["port"], clk, cycles, rng, stall) for p in spec["inputs"]]
    monitors = [StreamMonitor(dut, p["port"], clk, cycles, rng, stall) for p in spec["outputs"]]
    for _ in range(2):
        await RisingEdge(clk)
    dut.rst.value = 0
    cycles.start()
    for d, p in zip(drivers, spec["inputs"]):
        cocotb.start_soon(d.send([int(b, 16) for b in p["beats"]]))
    waits = [cocotb.start_soon(m.receive(p["count"])) for m, p in zip(monitors, spec["outputs"])]
    deadline = spec["max_cycles"]
    for w in waits:
        left = deadline - cycles.now
        try:
            if left <= 0:
                raise cocotb.triggers.SimTimeoutError
            await with_timeout(w, left * PERIOD_NS, "ns")
        except cocotb.triggers.SimTimeoutError:
            raise AssertionError(
                f"timeout after {deadline} cycles: got "
                + ", ".join(f"{len(m.beats)}/{p['count']}"
                            for m, p in zip(monitors, spec["outputs"]))) from None
    result = {"outputs": [{"port": p["port"], "beats": m.beats, "cycles": m.at}
                          for m, p in zip(monitors, spec["outputs"])],
              "inputs": [{"port": p["port"], "cycles": d.accepted}
                         for d, p in zip(drivers, spec["inputs"])]}
    with open(os.environ["COSPARSE_TB_RESULT"], "w") as f:
        json.dump(result, f)
