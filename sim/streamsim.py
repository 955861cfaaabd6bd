"""Amaranth-simulator stream helpers shared by every unit test.

:func:`simulate` drives any number of input streams with beats, collects a
known number of beats from output streams, and stalls every stream at random
(valid low on inputs, ready low on outputs) with probability ``stall`` per
beat. It returns the decoded output beats and the cycle each was accepted
in, so tests can check values against the golden model and measure
throughput.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from amaranth.sim import Simulator

from cosparse.hw.streams import decode, encode

__all__ = ["Port", "simulate", "SimResult", "SimTimeout"]


class SimTimeout(AssertionError):
    """The design did not produce the expected beats in time."""


@dataclass
class Port:
    """A stream of the design under test, with its payload layout.

    ``beats`` (inputs) are dicts for :func:`encode`; ``count`` (outputs) is
    how many beats to collect.
    """

    stream: Any
    layout: Any
    beats: list = field(default_factory=list)
    count: int = 0
    stall: float | None = None  # None: the simulation's default


@dataclass
class SimResult:
    outputs: list[list[dict]]  # decoded beats per output port
    cycles: list[list[int]]  # cycle of each accepted output beat
    input_cycles: list[list[int]]  # cycle each input beat was accepted
    total_cycles: int


def simulate(dut, inputs: list[Port], outputs: list[Port], *, stall: float = 0.3, seed: int = 0,
             max_cycles: int = 200_000, vcd: str | None = None,
             extra_testbenches: tuple = ()) -> SimResult:
    """Run ``dut`` in the Amaranth simulator; see the module doc."""
    rng = random.Random(seed)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    cycle = [0]
    done = [False] * len(outputs)
    fed = [False] * len(inputs)
    out_beats: list[list[dict]] = [[] for _ in outputs]
    out_cycles: list[list[int]] = [[] for _ in outputs]
    in_cycles: list[list[int]] = [[] for _ in inputs]

    async def clock_counter(ctx):
        async for _ in ctx.tick():
            cycle[0] += 1

    def make_driver(k: int, port: Port):
        p = stall if port.stall is None else port.stall

        async def driver(ctx):
            for beat in port.beats:
                while rng.random() < p:
                    await ctx.tick()
                ctx.set(port.stream.payload.as_value(), encode(port.layout, beat))
                ctx.set(port.stream.valid, 1)
                await ctx.tick().until(port.stream.ready)
                in_cycles[k].append(cycle[0])
                ctx.set(port.stream.valid, 0)
            fed[k] = True
        return driver

    def make_monitor(k: int, port: Port):
        p = stall if port.stall is None else port.stall

        async def monitor(ctx):
            for _ in range(port.count):
                while rng.random() < p:
                    await ctx.tick()
                ctx.set(port.stream.ready, 1)
                raw, = await ctx.tick().sample(port.stream.payload.as_value()).until(port.stream.valid)
                out_cycles[k].append(cycle[0])
                out_beats[k].append(decode(port.layout, raw))
                ctx.set(port.stream.ready, 0)
            done[k] = True
        return monitor

    async def watchdog(ctx):
        # Finished when every output beat has arrived and every input beat
        # was accepted (an unconsumed input is a failure too).
        while not (all(done) and all(fed)):
            await ctx.tick()
            if cycle[0] > max_cycles:
                got = ", ".join(f"{len(b)}/{p.count}" for b, p in zip(out_beats, outputs))
                sent = ", ".join(f"{len(c)}/{len(p.beats)}" for c, p in zip(in_cycles, inputs))
                raise SimTimeout(f"no completion after {max_cycles} cycles "
                                 f"(outputs {got}; inputs accepted {sent})")

    sim.add_process(clock_counter)
    for k, port in enumerate(inputs):
        sim.add_testbench(make_driver(k, port))
    for k, port in enumerate(outputs):
        sim.add_testbench(make_monitor(k, port))
    sim.add_testbench(watchdog)
    for tb in extra_testbenches:
        sim.add_testbench(tb, background=True)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return SimResult(out_beats, out_cycles, in_cycles, cycle[0])
