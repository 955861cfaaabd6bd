"""The parts of the host link (:class:`cosparse.hw.hostlink.HostLink`) and their records.

:class:`Framer` turns received bytes into a checked request with its payload
in a buffer, :class:`LoadCheck` checks a LOAD's target and range while its
payload arrives, :class:`Responder` sends the response frame; the executor,
which runs the request against the core and its loadable memories, is in
:mod:`cosparse.hw.hostlink_executor`. Commands,
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
from .util import check_int

__all__ = ["Framer", "LoadCheck", "Responder", "Command", "Code", "Body", "CRC16",
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


def const_table(values: list[int], width: int, empty: int) -> Array:
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
        wb_table = const_table(self.word_bytes, 8, 1)
        depth_table = const_table(self.depths, 17, 0)
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
