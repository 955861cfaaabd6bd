"""The host link's executor: requests run against the core and its loadable memories.

:class:`Executor` decides a checked request from the framer
(:class:`~cosparse.hw.hostlink_parts.Framer`) and runs it: STATUS, LOAD,
SEAL, and INFER through :class:`InferRunner`. See ``docs/host-link.md``.
"""

import types

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from . import protocol
from .hostlink_parts import (Body, Code, Command, InferTrailer, LoadVerdict, Request, Response,
                             StatusLayout, const_table, load_write_layout)
from .protocol import LOAD_HEADER_BYTES
from .streams import dense_layout
from .util import check_int

__all__ = ["InferRunner", "Executor"]


class InferRunner(wiring.Component):
    """INFER's data path: the payload buffer's beats into the core, its output frame out.

    Input beats are read from the payload buffer (one word per beat) and
    offered back to back as the core takes them, with ``last`` at the end of
    each group and ``end`` on the frame's last beat; every output beat is
    written into the output buffer. Two counters are kept: the *latency*
    (first input beat taken to last output beat) and the *feed* (first to
    last input beat taken).

    Parameters
    ----------
    in_width : int
        Elements (bytes) per input beat: a word of the payload buffer.
    in_beats, group_beats : int
        Input beats per frame, and per group.
    out_beats : int
        Output beats per frame.
    out_layout : Layout
        The core's output beat.
    out_beat_bytes : int
        Bytes per output beat (a word of the output buffer).
    buf_depth : int
        Words of the payload buffer.

    Members
    -------
    start : In(1)
        Reset the feeder and the counters (the cycle before ``run``).
    run : In(1)
        Feed and collect; outside it the streams are idle and the buffers untouched.
    buf : In(ReadPort.Signature(...))
        Read port of the payload buffer.
    core_i : Out(stream.Signature(dense_layout(in_width)))
    core_o : In(stream.Signature(out_layout))
    out_buf : In(WritePort.Signature(...))
        Write port of the output buffer.
    done : Out(1)
        The frame's last output beat has been taken (a register: from the cycle
        after, until ``start``).
    trailer : Out(InferTrailer)
        The counters.
    """

    def __init__(self, *, in_width: int, in_beats: int, group_beats: int, out_beats: int,
                 out_layout, out_beat_bytes: int, buf_depth: int):
        self.in_width = check_int("in_width", in_width, 1, 256)
        self.in_beats = check_int("in_beats", in_beats, 1)
        self.group_beats = check_int("group_beats", group_beats, 1)
        self.out_beats = check_int("out_beats", out_beats, 1)
        self.out_beat_bytes = check_int("out_beat_bytes", out_beat_bytes, 1)
        self.buf_depth = check_int("buf_depth", buf_depth, in_beats)
        super().__init__({
            "start": In(1),
            "run": In(1),
            "buf": In(ReadPort.Signature(addr_width=ceil_log2(buf_depth),
                                         shape=unsigned(8 * in_width))),
            "core_i": Out(stream.Signature(dense_layout(in_width))),
            "core_o": In(stream.Signature(out_layout)),
            "out_buf": In(WritePort.Signature(addr_width=ceil_log2(out_beats),
                                              shape=unsigned(8 * out_beat_bytes))),
            "done": Out(1),
            "trailer": Out(InferTrailer),
        })

    def elaborate(self, platform):
        m = Module()
        latency = Signal(32)
        feed = Signal(24)
        f_addr = Signal(range(self.buf_depth + 1))
        f_valid = Signal()
        f_beat = Signal(range(self.in_beats + 1))
        f_gb = Signal(range(self.group_beats + 1))
        f_last = Signal()
        f_end = Signal()
        c_beats = Signal(range(self.out_beats + 1))
        started = Signal()
        feeding_done = Signal()
        # The last output beat is taken: registered, so the executor's decision and the
        # response's enables start from it, not from the core's output FIFO.
        collected = Signal()
        m.d.comb += [self.buf.en.eq(0), self.trailer.latency.eq(latency),
                     self.trailer.feed.eq(feed), self.done.eq(collected)]

        with m.If(self.start):
            m.d.sync += [f_addr.eq(0), f_valid.eq(0), f_beat.eq(0), f_gb.eq(0), c_beats.eq(0),
                         started.eq(0), feeding_done.eq(0), latency.eq(0), feed.eq(0),
                         collected.eq(0)]
        with m.Elif(self.run):
            adv = Signal()
            m.d.comb += [adv.eq(~f_valid | self.core_i.ready), self.buf.addr.eq(f_addr),
                         self.buf.en.eq(adv), self.core_i.valid.eq(f_valid),
                         self.core_i.payload.data.eq(self.buf.data),
                         self.core_i.payload.last.eq(f_last), self.core_i.payload.end.eq(f_end)]
            with m.If(adv):
                with m.If(f_beat < self.in_beats):
                    m.d.sync += [f_valid.eq(1), f_addr.eq(f_addr + 1), f_beat.eq(f_beat + 1),
                                 f_last.eq(f_gb == self.group_beats - 1),
                                 f_end.eq(f_beat == self.in_beats - 1)]
                    with m.If(f_gb == self.group_beats - 1):
                        m.d.sync += f_gb.eq(0)
                    with m.Else():
                        m.d.sync += f_gb.eq(f_gb + 1)
                with m.Else():
                    m.d.sync += f_valid.eq(0)
            fed = self.core_i.valid & self.core_i.ready
            with m.If(fed):
                m.d.sync += started.eq(1)
                with m.If(f_end):
                    m.d.sync += feeding_done.eq(1)
            with m.If(started & ~feeding_done):
                m.d.sync += feed.eq(feed + 1)
            with m.If((started | fed) & ~collected):
                m.d.sync += latency.eq(latency + 1)
            m.d.comb += [self.core_o.ready.eq(1), self.out_buf.addr.eq(c_beats),
                         self.out_buf.data.eq(self.core_o.payload.data.as_value()),
                         self.out_buf.en.eq(self.core_o.valid)]
            with m.If(self.core_o.valid):
                m.d.sync += c_beats.eq(c_beats + 1)
                with m.If(c_beats == self.out_beats - 1):
                    # the latency stops here: last output beat minus first input beat
                    m.d.sync += [collected.eq(1), latency.eq(latency)]
        return m


class Executor(wiring.Component):
    """Runs checked requests: STATUS, LOAD, SEAL and INFER, and keeps the link's state.

    A request is decided the cycle after it is offered: a framing error or a bad
    command, length, target or range is refused (counted in ``rejected``,
    kept as the last error) and changes nothing. LOAD reads the payload
    buffer a byte at a time and writes whole words (``write``); INFER feeds
    the buffer's beats to the core and collects its output frame into the
    output buffer. The request is accepted once its response has been sent.

    Parameters
    ----------
    in_width : int
        ``W``: bytes per payload buffer word, elements per input beat.
    in_beats, group_beats : int
        Input beats per frame, and per group (the beats of a ``last`` flag).
    out_beats : int
        Output beats per frame.
    out_beat_bytes : int
        Bytes per output beat (a word of the output buffer).
    max_payload : int
        Bytes of the payload buffer.
    word_bytes, hw_depths : list of int
        Bytes per word and words in hardware of each load target.
    design_id : int
        Reported by STATUS.
    needs_load : bool
        Some memory has no initial contents: INFER is refused until SEAL.

    Members
    -------
    req : In(stream.Signature(Request))
        From the framer.
    load : In(LoadVerdict)
        From the load check.
    buf : In(ReadPort.Signature(...))
        Read port of the payload buffer.
    core_i : Out(stream.Signature(dense_layout(in_width)))
    core_o : In(stream.Signature(out_layout))
    out_buf : In(WritePort.Signature(...))
        Write port of the output buffer (one output beat per word).
    write : Out(load_write_layout(...))
        A word for a load target (valid while ``en``).
    resp : Out(stream.Signature(Response))
        To the responder; accepted when the response has been sent.
    status : Out(StatusLayout)
    trailer : Out(InferTrailer)
        The last inference's latency and feed cycles.
    framing_errors, overruns : In(8)
        The UART receiver's counters, for STATUS.
    loaded, running, error_seen : Out(1)
        For the LEDs.
    """

    def __init__(self, *, in_width: int, in_beats: int, group_beats: int, out_beats: int,
                 out_layout, out_beat_bytes: int, max_payload: int, word_bytes: list[int],
                 hw_depths: list[int], design_id: int = 0, needs_load: bool = False):
        self.in_width = check_int("in_width", in_width, 1, 256)
        self.in_beats = check_int("in_beats", in_beats, 1)
        self.group_beats = check_int("group_beats", group_beats, 1)
        self.out_beats = check_int("out_beats", out_beats, 1)
        self.out_beat_bytes = check_int("out_beat_bytes", out_beat_bytes, 1)
        self.max_payload = check_int("max_payload", max_payload, 1, (1 << 16) - 1)
        self.word_bytes = list(word_bytes)
        self.hw_depths = list(hw_depths)
        self.design_id = check_int("design_id", design_id, 0, (1 << 32) - 1)
        self.needs_load = bool(needs_load)
        self.out_layout = out_layout
        self.buf_depth = -(-max_payload // in_width)
        self.word_bits = 8 * max(self.word_bytes, default=1)
        super().__init__({
            "req": In(stream.Signature(Request)),
            "load": In(LoadVerdict),
            "buf": In(ReadPort.Signature(addr_width=ceil_log2(self.buf_depth),
                                         shape=unsigned(8 * in_width))),
            "core_i": Out(stream.Signature(dense_layout(in_width))),
            "core_o": In(stream.Signature(out_layout)),
            "out_buf": In(WritePort.Signature(addr_width=ceil_log2(out_beats),
                                              shape=unsigned(8 * out_beat_bytes))),
            "write": Out(load_write_layout(self.word_bits)),
            "resp": Out(stream.Signature(Response)),
            "status": Out(StatusLayout, init={
                "version": protocol.PROTOCOL_VERSION, "design_id": self.design_id,
                "flags": {"needs_load": int(self.needs_load)}}),
            "trailer": Out(InferTrailer),
            "framing_errors": In(8),
            "overruns": In(8),
            "loaded": Out(1),
            "running": Out(1),
            "error_seen": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        W = self.in_width
        load, buf = self.load, self.buf
        loaded, running = self.loaded, self.running
        m.d.comb += buf.en.eq(0)  # a read port holds its data unless a state reads
        m.submodules.infer = infer = InferRunner(
            in_width=W, in_beats=self.in_beats, group_beats=self.group_beats,
            out_beats=self.out_beats, out_layout=self.out_layout,
            out_beat_bytes=self.out_beat_bytes, buf_depth=self.buf_depth)
        wiring.connect(m, infer.core_i, wiring.flipped(self.core_i))
        wiring.connect(m, wiring.flipped(self.core_o), infer.core_o)
        wiring.connect(m, infer.out_buf, wiring.flipped(self.out_buf))
        m.d.comb += [infer.buf.data.eq(buf.data), self.trailer.eq(infer.trailer)]

        # The seal survives a reset (the memories keep their words through it): a reset
        # during a LOAD leaves the weights unsealed, one after a SEAL leaves them sealed.
        sealed = Signal(init=int(not self.needs_load), reset_less=True)
        weights_id = Signal(32, reset_less=True)
        # Set by a reset (the flop ``booted`` is cleared by it), cleared by a STATUS answer.
        booted = Signal()
        reset_seen = Signal(init=1, reset_less=True)
        m.d.sync += booted.eq(1)
        with m.If(~booted):
            m.d.sync += reset_seen.eq(1)
        m.d.comb += loaded.eq(sealed)
        last_error = Signal(8)
        inferences = Signal(16)
        rejected = Signal(8)
        resp = Signal(Response)
        # LOAD and SEAL: the payload read a byte at a time
        x_ra = Signal(range(self.buf_depth))
        x_rl = Signal(range(max(W, 2)))
        x_left = Signal(range(self.max_payload + 1))
        x_empty = Signal()  # x_left == 0, registered with it
        x_word = Signal(self.word_bits)
        l_byte = Signal(8)
        # byte of the word (LOAD) or of the weights id (SEAL, to 4)
        x_j = Signal(range(max(self.word_bits // 8, 4) + 1))
        x_k = Signal(range(max(self.hw_depths, default=1) + 1))
        r = types.SimpleNamespace(ra=x_ra, rl=x_rl, left=x_left, empty=x_empty, j=x_j, k=x_k,
                                  loaded=sealed, running=running)

        st = self.status  # the constant fields are its initial value
        m.d.comb += [
            st.flags.loaded.eq(loaded), st.flags.reset.eq(reset_seen),
            st.last_error.eq(last_error),
            st.weights_id.eq(weights_id), st.inferences.eq(inferences), st.rejected.eq(rejected),
            st.framing_errors.eq(self.framing_errors), st.overruns.eq(self.overruns),
            self.resp.payload.eq(resp),
            self.write.target.eq(load.target), self.write.addr.eq(x_k),
            self.write.data.eq(x_word),
        ]

        def finish(code, body=Body.NONE):
            """End a request: answer ``code`` (and ``body``)."""
            m.d.sync += [resp.code.eq(code), resp.body.eq(body)]
            m.next = "RESPOND"
            if not (isinstance(code, Code) and code == Code.OK):
                m.d.sync += [last_error.eq(code), self.error_seen.eq(1)]

        def reject(code):
            m.d.sync += rejected.eq(rejected + 1)
            finish(code)

        def next_byte():
            """Advance the payload read to its next byte."""
            with m.If(x_rl == W - 1):
                m.d.sync += [x_rl.eq(0), x_ra.eq(x_ra + 1)]
            with m.Else():
                m.d.sync += x_rl.eq(x_rl + 1)

        checks = self._checks(m)
        with m.FSM(name="executor"):
            # A request waits a cycle in IDLE while its checks are registered: the
            # decision then starts from registers beside it, not from the framer's
            # and the load check's outputs across the link.
            with m.State("IDLE"):
                with m.If(self.req.valid):
                    m.next = "DECIDE"
            with m.State("DECIDE"):
                self._decide(m, r, checks, infer, reject, finish)

            # LOAD: read payload bytes in order, assemble words, write them.
            with m.State("LOAD_READ"):
                m.d.comb += [buf.addr.eq(x_ra), buf.en.eq(1)]
                with m.If(x_empty):
                    finish(Code.OK)
                with m.Else():
                    m.next = "LOAD_LATCH"
            # The payload byte is registered first: the block RAM's clock-to-out (5.8 ns
            # on ECP5) then ends in a register, not in the word assembly.
            with m.State("LOAD_LATCH"):
                m.d.sync += l_byte.eq(buf.data.word_select(x_rl, 8))
                m.next = "LOAD_BYTE"
            with m.State("LOAD_BYTE"):
                m.d.sync += [x_word.word_select(x_j, 8).eq(l_byte), x_left.eq(x_left - 1),
                             x_empty.eq(x_left == 1)]
                next_byte()
                with m.If(x_j == checks.word_last):
                    m.d.sync += x_j.eq(0)
                    m.next = "LOAD_WRITE"
                with m.Else():
                    m.d.sync += x_j.eq(x_j + 1)
                    m.next = "LOAD_READ"
            with m.State("LOAD_WRITE"):
                m.d.comb += self.write.en.eq(1)
                m.d.sync += [x_k.eq(x_k + 1), x_word.eq(0)]
                m.next = "LOAD_READ"

            # SEAL: the weights id from the payload's four bytes.
            with m.State("SEAL_READ"):
                m.d.comb += [buf.addr.eq(x_ra), buf.en.eq(1)]
                with m.If(x_j == 4):
                    m.d.sync += sealed.eq(1)
                    finish(Code.OK)
                with m.Else():
                    m.next = "SEAL_BYTE"
            with m.State("SEAL_BYTE"):
                m.d.sync += [weights_id.word_select(x_j[:2], 8).eq(buf.data.word_select(x_rl, 8)),
                             x_j.eq(x_j + 1)]
                next_byte()
                m.next = "SEAL_READ"

            # INFER: feed the payload's beats to the core, collect its output frame.
            with m.State("INFER"):
                m.d.comb += [infer.run.eq(1), buf.addr.eq(infer.buf.addr), buf.en.eq(infer.buf.en)]
                with m.If(infer.done):
                    m.d.sync += [running.eq(0), inferences.eq(inferences + 1)]
                    finish(Code.OK, Body.OUTPUT)

            # The response is sent; accepting it releases the framer.
            with m.State("RESPOND"):
                m.d.comb += self.resp.valid.eq(1)
                with m.If(self.resp.ready):
                    m.d.comb += self.req.ready.eq(1)
                    with m.If(resp.body == Body.STATUS):
                        m.d.sync += reset_seen.eq(0)
                    m.next = "IDLE"
        return m

    def _checks(self, m: Module) -> types.SimpleNamespace:
        """A request's checks, registered every cycle from the framer's request and the
        load check's verdict (both hold still while a request waits)."""
        W, req, load = self.in_width, self.req.payload, self.load
        c = types.SimpleNamespace(
            error=Signal(Code), cmd=Signal(Command), left=Signal(16),
            status_length=Signal(), load_short=Signal(), seal_length=Signal(),
            infer_length=Signal(), bad_target=Signal(), bad_range=Signal(),
            address=Signal(16), load_empty=Signal(),
            word_last=Signal(range(max(self.word_bits // 8, 4) + 1)))
        m.d.sync += [
            c.error.eq(req.error), c.cmd.eq(req.cmd),
            c.left.eq(req.length - LOAD_HEADER_BYTES),
            c.status_length.eq(req.length == 0),
            c.load_short.eq(req.length < LOAD_HEADER_BYTES),
            c.seal_length.eq(req.length == 4),
            c.infer_length.eq(req.length == self.in_beats * W),
            c.bad_target.eq(load.bad_target), c.bad_range.eq(load.bad_range),
            c.address.eq(load.address),
            # (a LOAD's payload after its header is empty; the last byte of a target's word)
            c.load_empty.eq(req.length == LOAD_HEADER_BYTES),
            c.word_last.eq(const_table(self.word_bytes, 8, 1)[load.target] - 1),
        ]
        return c

    def _decide(self, m: Module, r: types.SimpleNamespace, c: types.SimpleNamespace,
                infer: InferRunner, reject, finish) -> None:
        """DECIDE: a request's registered checks ``c``, and the first state of the
        command it passes to."""
        W = self.in_width
        with m.If(c.error != Code.OK):
            reject(c.error)
        with m.Elif(c.cmd == Command.STATUS):
            with m.If(~c.status_length):
                reject(Code.LENGTH)
            with m.Else():
                finish(Code.OK, Body.STATUS)
        with m.Elif(c.cmd == Command.LOAD):
            with m.If(c.load_short):
                reject(Code.LENGTH)
            with m.Elif(c.bad_target):
                reject(Code.UNKNOWN_TARGET)
            with m.Elif(c.bad_range):
                reject(Code.RANGE)
            with m.Else():
                m.d.sync += [r.ra.eq(LOAD_HEADER_BYTES // W),
                             r.rl.eq(LOAD_HEADER_BYTES % W),
                             r.left.eq(c.left), r.empty.eq(c.load_empty),
                             r.j.eq(0), r.k.eq(c.address), r.loaded.eq(0)]
                m.next = "LOAD_READ"
        with m.Elif(c.cmd == Command.SEAL):
            with m.If(~c.seal_length):
                reject(Code.LENGTH)
            with m.Else():
                m.d.sync += [r.ra.eq(0), r.rl.eq(0), r.j.eq(0)]
                m.next = "SEAL_READ"
        with m.Elif(c.cmd == Command.INFER):
            with m.If(~c.infer_length):
                reject(Code.LENGTH)
            with m.Elif(~r.loaded):
                reject(Code.NOT_LOADED)
            with m.Else():
                m.d.comb += infer.start.eq(1)
                m.d.sync += r.running.eq(1)
                m.next = "INFER"
        with m.Else():
            reject(Code.UNKNOWN_COMMAND)
