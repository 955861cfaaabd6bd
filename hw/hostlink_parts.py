"""The parts of the host link (:class:`cosparse.hw.hostlink.HostLink`) and their records.

:class:`Framer` turns received bytes into a checked request with its payload
in a buffer, :class:`LoadCheck` checks a LOAD's target and range while its
payload arrives, :class:`Executor` runs the request against the core and its
loadable memories, :class:`Responder` sends the response frame. Commands,
codes and the status format come from :mod:`cosparse.hw.protocol`; see
``docs/host-link.md`` for the protocol and its timing.
"""

import types

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from . import protocol
from .protocol import LOAD_HEADER_BYTES, MAX_LOAD_BYTES, STATUS_BYTES
from .streams import dense_layout
from .util import check_int

__all__ = ["Framer", "LoadCheck", "InferRunner", "Executor", "Responder", "Command", "Code", "Body", "CRC16",
           "RequestHeader", "Request", "LoadHeader", "LoadVerdict", "ResponseHeader", "Response",
           "StatusFlags", "StatusLayout", "InferTrailer", "load_write_layout"]

#: The protocol's CRC-16 (:func:`cosparse.hw.protocol.crc16`) for byte-wide data.
CRC16 = catalog.CRC16_CCITT_FALSE(data_width=8)


def _gateware_enum(proto: type, extra: dict[str, int] | None = None) -> type:
    """An 8-bit :mod:`amaranth.lib.enum` enum with the members of the protocol's ``proto``."""
    members = {**{m.name: m.value for m in proto}, **(extra or {})}
    return types.new_class(proto.__name__, (enum.Enum,), {"shape": 8},
                           lambda ns: ns.update(members))


#: Request commands (:class:`cosparse.hw.protocol.Command`); ``NONE`` is no command
#: (the value of an idle register).
Command = _gateware_enum(protocol.Command, {"NONE": 0})
#: Response codes (:class:`cosparse.hw.protocol.Code`).
Code = _gateware_enum(protocol.Code)


class Body(enum.Enum, shape=2):
    """What follows a response's header."""

    NONE = 0
    STATUS = 1
    OUTPUT = 2  # the output frame, then the latency and feed counters


class RequestHeader(data.Struct):
    """A request's header after its sync byte (its bytes in wire order, little-endian)."""

    cmd: Command
    length: 16


class Request(data.Struct):
    """A received request: its header and the framer's verdict (``OK``, ``LENGTH``
    for an oversize frame, ``TRUNCATED`` or ``CRC``)."""

    cmd: Command
    length: 16
    error: Code


class LoadHeader(data.Struct):
    """The head of a LOAD payload (wire order)."""

    target: 8
    address: 32


class LoadVerdict(data.Struct):
    """A LOAD's target and start address with the checks of its range."""

    target: 8
    address: 16  # the low half; ``bad_range`` is set when the high half is not 0
    bad_target: 1
    bad_range: 1


class ResponseHeader(data.Struct):
    """A response's first four bytes (wire order)."""

    sync: 8
    code: Code
    length: 16


class Response(data.Struct):
    """What the executor asks the responder to send."""

    code: Code
    body: Body


#: The STATUS ``flags`` byte (bits of :class:`cosparse.hw.protocol.StatusFlag`).
StatusFlags = data.FlexibleLayout(8, {f.name.lower(): data.Field(1, f.value.bit_length() - 1)
                                      for f in protocol.StatusFlag})
#: The STATUS payload (:data:`cosparse.hw.protocol.STATUS_FIELDS`, wire order).
StatusLayout = data.StructLayout({name: StatusFlags if name == "flags" else unsigned(bits)
                                  for name, bits in protocol.STATUS_FIELDS})


class InferTrailer(data.Struct):
    """The end of an INFER response (:data:`cosparse.hw.protocol.INFER_TRAILER_FORMAT`)."""

    latency: 32
    feed: 32


def _table(values: list[int], width: int, empty: int) -> Array:
    """``values`` as an array of ``width``-bit constants (``[empty]`` when there are none)."""
    return Array(Const(v, width) for v in (values or [empty]))


def load_write_layout(word_bits: int) -> data.StructLayout:
    """One word written by LOAD: its target memory, address and data."""
    return data.StructLayout({"en": 1, "target": 8, "addr": 16, "data": word_bits})


class Framer(wiring.Component):
    """Bytes to checked requests: sync, header, payload (into a buffer), CRC, timeout.

    Bytes outside a frame (before a sync byte) are dropped. The payload goes
    into the buffer ``buf_width`` bytes per word (unless the frame is longer
    than ``max_payload``: it is then only received and counted). The request
    is handed on the cycle after the frame's last byte (or its timeout); no
    byte is taken until it is accepted.

    Parameters
    ----------
    buf_width : int
        Bytes per word of the payload buffer.
    max_payload : int
        Longest payload that fits the buffer.
    timeout : int
        Cycles without a byte after which a frame in progress is truncated.

    Members
    -------
    rx : In(stream.Signature(unsigned(8)))
        Bytes from the UART receiver.
    req : Out(stream.Signature(Request))
        The request (header and verdict); accepting it ends the transaction.
    buf : In(WritePort.Signature(...))
        Write port of the payload buffer (``ceil(max_payload / buf_width)`` words).
    start : Out(1)
        A frame's sync byte is taken.
    payload : Out(stream.Signature(unsigned(8), always_ready=True))
        Each payload byte as it is taken (for checks while the frame arrives).
    busy : Out(1)
        Inside a frame, or its request not yet accepted.
    """

    def __init__(self, *, buf_width: int, max_payload: int, timeout: int):
        self.buf_width = check_int("buf_width", buf_width, 1, 256)
        self.max_payload = check_int("max_payload", max_payload, 1, (1 << 16) - 1)
        self.timeout = check_int("timeout", timeout, 1)
        self.buf_depth = -(-max_payload // buf_width)
        super().__init__({
            "rx": In(stream.Signature(unsigned(8))),
            "req": Out(stream.Signature(Request)),
            "buf": In(WritePort.Signature(addr_width=ceil_log2(self.buf_depth),
                                          shape=unsigned(8 * buf_width), granularity=8)),
            "start": Out(1),
            "payload": Out(stream.Signature(unsigned(8), always_ready=True)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        W = self.buf_width
        m.submodules.crc = crc = CRC16.create()
        header = Signal(RequestHeader)
        hdr = Signal(2)  # header bytes seen
        left = Signal(16)  # payload bytes still to come
        wa = Signal(range(self.buf_depth))  # payload word/lane the next byte goes to
        wl = Signal(range(max(W, 2)))
        crc_lo = Signal(8)
        crc_seen = Signal()
        crc_bad = Signal()
        # Cycles without a byte: counts down from timeout - 1, and the frame is
        # truncated once it is negative (its sign bit, not a comparison of all its bits).
        idle = Signal(range(-1, self.timeout))
        last = Signal()  # the payload byte to come is the last (left == 1)
        lo_over, lo_zero, lo_one = Signal(), Signal(), Signal()  # the length's low byte
        oversize = Signal()
        truncated = Signal()

        rxb = self.rx.payload
        take = Signal()
        m.d.comb += [take.eq(self.rx.valid & self.rx.ready), crc.data.eq(rxb),
                     self.payload.payload.eq(rxb)]

        def count_idle():
            """Inside a frame without a byte: count, and truncate it at the timeout."""
            with m.If(idle[-1]):
                m.d.sync += truncated.eq(1)
                m.next = "DONE"
            with m.Else():
                m.d.sync += idle.eq(idle - 1)

        with m.FSM(name="framer") as fsm:
            with m.State("SYNC"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(take & (rxb == protocol.SYNC_REQUEST)):
                    m.d.comb += [crc.start.eq(1), self.start.eq(1)]
                    m.d.sync += [hdr.eq(0), wa.eq(0), wl.eq(0), idle.eq(self.timeout - 1),
                                 oversize.eq(0),
                                 truncated.eq(0), crc_seen.eq(0)]
                    m.next = "HEADER"

            with m.State("HEADER"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(take):
                    m.d.comb += crc.valid.eq(1)
                    m.d.sync += [header.as_value().word_select(hdr, 8).eq(rxb), hdr.eq(hdr + 1),
                                 idle.eq(self.timeout - 1)]
                    # The length's low byte is compared as it arrives, its high byte
                    # (from the receiver) with constants only.
                    with m.If(hdr == 1):
                        m.d.sync += [lo_over.eq(rxb > (self.max_payload & 0xFF)),
                                     lo_zero.eq(rxb == 0), lo_one.eq(rxb == 1)]
                    with m.If(hdr == 2):
                        hi_max = self.max_payload >> 8
                        m.d.sync += [oversize.eq((rxb > hi_max) | ((rxb == hi_max) & lo_over)),
                                     left.eq(Cat(header.length[:8], rxb)),
                                     last.eq((rxb == 0) & lo_one)]
                        with m.If((rxb == 0) & lo_zero):
                            m.next = "CRC"
                        with m.Else():
                            m.next = "PAYLOAD"
                with m.Else():
                    count_idle()

            with m.State("PAYLOAD"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(take):
                    m.d.comb += [crc.valid.eq(1), self.payload.valid.eq(1)]
                    m.d.sync += [left.eq(left - 1), last.eq(left == 2),
                                 idle.eq(self.timeout - 1)]
                    with m.If(~oversize):
                        m.d.comb += [self.buf.addr.eq(wa), self.buf.data.eq(rxb.replicate(W)),
                                     self.buf.en.eq(1 << wl)]
                        with m.If(wl == W - 1):
                            m.d.sync += [wl.eq(0), wa.eq(wa + 1)]
                        with m.Else():
                            m.d.sync += wl.eq(wl + 1)
                    with m.If(last):
                        m.next = "CRC"
                with m.Else():
                    count_idle()

            with m.State("CRC"):  # received low byte first
                m.d.comb += self.rx.ready.eq(1)
                with m.If(take):
                    m.d.sync += [crc_seen.eq(1), idle.eq(self.timeout - 1)]
                    with m.If(~crc_seen):
                        m.d.sync += crc_lo.eq(rxb)
                    with m.Else():
                        m.d.sync += crc_bad.eq(crc.crc != Cat(crc_lo, rxb))
                        m.next = "DONE"
                with m.Else():
                    count_idle()

            with m.State("DONE"):
                m.d.comb += self.req.valid.eq(1)
                with m.If(self.req.ready):
                    m.next = "SYNC"

        req = self.req.payload
        m.d.comb += [req.cmd.eq(header.cmd), req.length.eq(header.length), self.busy.eq(~fsm.ongoing("SYNC"))]
        with m.If(oversize):
            m.d.comb += req.error.eq(Code.LENGTH)
        with m.Elif(truncated):
            m.d.comb += req.error.eq(Code.TRUNCATED)
        with m.Elif(crc_bad):
            m.d.comb += req.error.eq(Code.CRC)
        with m.Else():
            m.d.comb += req.error.eq(Code.OK)
        return m


class LoadCheck(wiring.Component):
    """A LOAD's target and range, checked while its payload arrives.

    Every payload is parsed as if it were a LOAD's: the target and address
    from its first bytes, then whole words of the target's width counted.
    The verdict is registered (settled two cycles after the last payload
    byte, while the CRC bytes arrive), so the executor's decision does not
    wait for it.

    Parameters
    ----------
    word_bytes : list of int
        Bytes per word of each load target.
    depths : list of int
        Words of each load target.

    Members
    -------
    start : In(1)
        A frame begins.
    payload : In(stream.Signature(unsigned(8), always_ready=True))
        The frame's payload bytes.
    verdict : Out(LoadVerdict)
        Target, start address and the checks.
    """

    def __init__(self, *, word_bytes: list[int], depths: list[int]):
        if len(word_bytes) != len(depths):
            raise ValueError(f"word_bytes and depths differ in length: {len(word_bytes)} "
                             f"and {len(depths)}")
        self.word_bytes = [check_int("word_bytes", b, 1, 255) for b in word_bytes]
        self.depths = [check_int("depths", d, 0, 1 << 16) for d in depths]
        super().__init__({
            "start": In(1),
            "payload": In(stream.Signature(unsigned(8), always_ready=True)),
            "verdict": Out(LoadVerdict),
        })

    def elaborate(self, platform):
        m = Module()
        n = len(self.word_bytes)
        wb_table = _table(self.word_bytes, 8, 1)
        depth_table = _table(self.depths, 17, 0)
        head = Signal(LoadHeader)
        hpos = Signal(range(LOAD_HEADER_BYTES + 1))  # payload bytes seen, up to the header's
        lane = Signal(8)  # byte of the word being received
        words = Signal(range(MAX_LOAD_BYTES + 1))  # whole words received
        byte = self.payload.payload
        with m.If(self.start):
            m.d.sync += [head.eq(0), hpos.eq(0), lane.eq(0), words.eq(0)]
        with m.Elif(self.payload.valid):
            with m.If(hpos != LOAD_HEADER_BYTES):
                m.d.sync += [head.as_value().word_select(hpos, 8).eq(byte), hpos.eq(hpos + 1)]
            with m.Elif(lane == wb_table[head.target] - 1):
                m.d.sync += [lane.eq(0), words.eq(words + 1)]
            with m.Else():
                m.d.sync += lane.eq(lane + 1)
        v = self.verdict
        m.d.comb += [v.target.eq(head.target), v.address.eq(head.address[:16])]
        m.d.sync += [v.bad_target.eq(head.target >= n),
                     v.bad_range.eq((lane != 0) | (head.address[16:] != 0)
                                    | (head.address[:16] + words > depth_table[head.target]))]
        return m


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
            c.word_last.eq(_table(self.word_bytes, 8, 1)[load.target] - 1),
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


class Responder(wiring.Component):
    """Response frames: header, body (STATUS, or the output frame and counters), CRC.

    One byte is offered every other cycle at most (a byte's slot follows the
    output buffer's read of its word). The response is accepted with its
    last byte.

    Parameters
    ----------
    out_beats : int
        Output beats per frame (words of the output buffer).
    out_beat_bytes : int
        Bytes per output beat.

    Members
    -------
    resp : In(stream.Signature(Response))
        What to send; its payload is read while the frame goes out.
    status : In(StatusLayout)
        The STATUS body.
    trailer : In(InferTrailer)
        The end of an INFER body.
    out_buf : In(ReadPort.Signature(...))
        Read port of the output buffer.
    tx : Out(stream.Signature(unsigned(8)))
        Bytes to the UART transmitter.
    """

    def __init__(self, *, out_beats: int, out_beat_bytes: int):
        self.out_beats = check_int("out_beats", out_beats, 1)
        self.out_beat_bytes = check_int("out_beat_bytes", out_beat_bytes, 1)
        self.out_bytes = out_beats * out_beat_bytes
        super().__init__({
            "resp": In(stream.Signature(Response)),
            "status": In(StatusLayout),
            "trailer": In(InferTrailer),
            "out_buf": In(ReadPort.Signature(addr_width=ceil_log2(out_beats),
                                             shape=unsigned(8 * out_beat_bytes))),
            "tx": Out(stream.Signature(unsigned(8))),
        })

    def elaborate(self, platform):
        m = Module()
        OB = self.out_beat_bytes
        trailer_bytes = InferTrailer.as_shape().size // 8
        m.submodules.crc = crc = CRC16.create()
        body_kind = self.resp.payload.body
        # The body's length follows from its kind (no register of its own).
        length = Signal(16)
        with m.Switch(body_kind):
            with m.Case(Body.STATUS):
                m.d.comb += length.eq(STATUS_BYTES)
            with m.Case(Body.OUTPUT):
                m.d.comb += length.eq(self.out_bytes + trailer_bytes)
        header = Signal(ResponseHeader)
        m.d.comb += [header.sync.eq(protocol.SYNC_RESPONSE), header.code.eq(self.resp.payload.code),
                     header.length.eq(length)]

        phase = Signal(2)  # 0 header, 1 body, 2 CRC
        cnt = Signal(range(max(STATUS_BYTES, self.out_bytes + trailer_bytes) + 1))
        s_bi = Signal(5)  # STATUS byte
        s_oa = Signal(range(max(self.out_beats, 2)))  # output beat and its byte
        s_ol = Signal(range(max(OB, 2)))
        s_in_cnt = Signal()  # INFER: past the output bytes, into the counters
        s_ci = Signal(3)
        m.d.comb += self.out_buf.en.eq(0)  # a read port holds its data unless a state reads

        with m.FSM(name="responder"):
            with m.State("IDLE"):
                with m.If(self.resp.valid):
                    m.d.comb += crc.start.eq(1)
                    m.d.sync += [phase.eq(0), cnt.eq(0), s_bi.eq(0), s_oa.eq(0), s_ol.eq(0),
                                 s_in_cnt.eq(0), s_ci.eq(0)]
                    m.next = "PREP"
            with m.State("PREP"):  # the output buffer's read of this byte's word
                m.d.comb += [self.out_buf.addr.eq(s_oa), self.out_buf.en.eq(1)]
                m.next = "SEND"
            with m.State("SEND"):
                out_byte = self.out_buf.data.word_select(s_ol, 8) if OB > 1 else self.out_buf.data[:8]
                body = Signal(8)
                with m.If(body_kind == Body.STATUS):
                    m.d.comb += body.eq(self.status.as_value().word_select(s_bi, 8))
                with m.Elif(~s_in_cnt):
                    m.d.comb += body.eq(out_byte)
                with m.Else():
                    m.d.comb += body.eq(self.trailer.as_value().word_select(s_ci, 8))
                byte = Signal(8)
                with m.Switch(phase):
                    with m.Case(0):
                        m.d.comb += byte.eq(header.as_value().word_select(cnt[:2], 8))
                    with m.Case(1):
                        m.d.comb += byte.eq(body)
                    with m.Default():
                        m.d.comb += byte.eq(Mux(cnt[0], crc.crc[8:], crc.crc[:8]))
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(byte), crc.data.eq(byte)]
                with m.If(self.tx.ready):
                    m.next = "PREP"
                    # the CRC covers the header after its sync byte, and the body
                    m.d.comb += crc.valid.eq(((phase == 0) & (cnt[:2] != 0)) | (phase == 1))
                    with m.Switch(phase):
                        with m.Case(0):
                            with m.If(cnt[:2] == 3):
                                m.d.sync += [phase.eq(Mux(length == 0, 2, 1)),
                                             cnt.eq(Mux(length == 0, 0, length))]
                            with m.Else():
                                m.d.sync += cnt.eq(cnt + 1)
                        with m.Case(1):
                            m.d.sync += [cnt.eq(cnt - 1), s_bi.eq(s_bi + 1)]
                            with m.If(s_in_cnt):
                                m.d.sync += s_ci.eq(s_ci + 1)
                            with m.Elif(s_ol == OB - 1):
                                m.d.sync += [s_ol.eq(0), s_oa.eq(s_oa + 1)]
                                with m.If(s_oa == self.out_beats - 1):
                                    m.d.sync += s_in_cnt.eq(1)
                            with m.Else():
                                m.d.sync += s_ol.eq(s_ol + 1)
                            with m.If(cnt == 1):
                                m.d.sync += [phase.eq(2), cnt.eq(0)]
                        with m.Default():
                            with m.If(cnt[0]):
                                m.d.comb += self.resp.ready.eq(1)
                                m.next = "IDLE"
                            with m.Else():
                                m.d.sync += cnt.eq(1)
        return m
