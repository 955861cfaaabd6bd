"""The host link: the request/response protocol of :mod:`cosparse.hw.protocol` over the UART.

:class:`HostLink` sits between the UART byte streams and the network core;
its parts are in :mod:`cosparse.hw.hostlink_parts` and
:mod:`cosparse.hw.hostlink_executor`. A request is acted on only once its
CRC has been checked; a corrupted, truncated or oversize frame gets an
error response and changes nothing. :class:`LoadPort` is the write
access of the LOAD command to one memory of a unit. The protocol and its
timing are described in ``docs/host-link.md``.
"""

import struct

from amaranth.hdl import Cat, Module, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from . import protocol
from .hostlink_executor import Executor
from .hostlink_parts import Framer, LoadCheck, Responder
from .loader import LoadPort, load_bus_signature
from .protocol import LOAD_HEADER_BYTES, MAX_LOAD_BYTES
from .streams import dense_layout
from .util import check_int

__all__ = ["HostLink"]

class HostLink(wiring.Component):
    """Request/response protocol engine between the UART byte streams and the core.

    Parameters
    ----------
    in_width : int
        ``W``: elements per input beat of the core.
    in_groups, in_group_size : int
        Groups per input frame and elements per group (beats per group:
        ``ceil(in_group_size / W)``).
    out_width, out_bits : int
        ``D`` and the element width (8 or 32) of the core's output beats.
    out_beats : int
        Output beats per frame.
    load_ports : list of LoadPort
        The core's loadable memories, in bundle order.
    design_id : int
        32-bit identifier of the compiled design, reported by STATUS.
    timeout : int
        Cycles without a byte after which a frame in progress is truncated.

    Members
    -------
    rx : In(stream.Signature(unsigned(8)))
        Bytes from the UART receiver.
    tx : Out(stream.Signature(unsigned(8)))
        Bytes to the UART transmitter.
    core_i : Out(stream.Signature(dense_layout(in_width)))
        To the core's input.
    core_o : In(stream.Signature(dense_layout(out_width, signed(out_bits))))
        From the core's output.
    leds : Out(4)
        Status: 0 loaded, 1 inference running, 2 an error was answered,
        3 a frame is being received or answered.
    framing_errors, overruns : In(8)
        The UART receiver's counters, reported by STATUS.
    load : Out(load_bus_signature(...))
        With load ports: LOAD's words for the core's load bus (target numbers
        index ``load_ports``).
    """

    def __init__(self, *, in_width: int, in_groups: int, in_group_size: int, out_width: int,
                 out_bits: int, out_beats: int, load_ports: list[LoadPort] = (),
                 design_id: int = 0, timeout: int = 1 << 20):
        self.in_width = check_int("in_width", in_width, 1, 256)
        self.in_groups = check_int("in_groups", in_groups, 1)
        self.in_group_size = check_int("in_group_size", in_group_size, 1)
        self.out_width = check_int("out_width", out_width, 1, 256)
        if out_bits not in (8, 16, 32):
            raise ValueError(f"out_bits must be 8, 16 or 32, got {out_bits!r}")
        self.out_bits = out_bits
        self.out_beats = check_int("out_beats", out_beats, 1)
        self.load_ports = list(load_ports)
        if len(self.load_ports) > 255:
            raise ValueError(f"at most 255 load targets, got {len(self.load_ports)}")
        self.design_id = check_int("design_id", design_id, 0, (1 << 32) - 1)
        self.timeout = check_int("timeout", timeout, 16)
        self.group_beats = -(-in_group_size // in_width)
        self.in_beats = in_groups * self.group_beats
        self.in_bytes = self.in_beats * in_width
        self.out_beat_bytes = out_width * out_bits // 8
        self.out_bytes = out_beats * self.out_beat_bytes
        self.max_payload = max(self.in_bytes, LOAD_HEADER_BYTES + MAX_LOAD_BYTES,
                               struct.calcsize(protocol.SEAL_FORMAT))
        self.needs_load = any(not p.has_init for p in self.load_ports)
        self.in_layout = dense_layout(in_width)
        self.out_layout = dense_layout(out_width, signed(out_bits))
        super().__init__({
            "rx": In(stream.Signature(unsigned(8))),
            "tx": Out(stream.Signature(unsigned(8))),
            "core_i": Out(stream.Signature(self.in_layout)),
            "core_o": In(stream.Signature(self.out_layout)),
            "leds": Out(4),
            "framing_errors": In(8),
            "overruns": In(8),
            **({"load": Out(load_bus_signature(max(p.width for p in self.load_ports)))}
               if self.load_ports else {}),
        })

    def elaborate(self, platform):
        m = Module()
        ports = self.load_ports
        m.submodules.framer = framer = Framer(buf_width=self.in_width,
                                              max_payload=self.max_payload, timeout=self.timeout)
        m.submodules.load_check = check = LoadCheck(word_bytes=[p.word_bytes for p in ports],
                                                    depths=[p.depth for p in ports])
        m.submodules.executor = ex = Executor(
            in_width=self.in_width, in_beats=self.in_beats, group_beats=self.group_beats,
            out_beats=self.out_beats, out_layout=self.out_layout,
            out_beat_bytes=self.out_beat_bytes, max_payload=self.max_payload,
            word_bytes=[p.word_bytes for p in ports], hw_depths=[p.hw_depth for p in ports],
            design_id=self.design_id, needs_load=self.needs_load)
        m.submodules.responder = resp = Responder(out_beats=self.out_beats,
                                                  out_beat_bytes=self.out_beat_bytes)
        # The request payload (W bytes per word) and the output frame.
        m.submodules.payload = pbuf = Memory(shape=unsigned(8 * self.in_width),
                                             depth=framer.buf_depth, init=[])
        m.submodules.outbuf = obuf = Memory(shape=unsigned(8 * self.out_beat_bytes),
                                            depth=self.out_beats, init=[])
        wiring.connect(m, framer.buf, pbuf.write_port(granularity=8))
        wiring.connect(m, ex.buf, pbuf.read_port())
        wiring.connect(m, ex.out_buf, obuf.write_port())
        wiring.connect(m, resp.out_buf, obuf.read_port())

        wiring.connect(m, wiring.flipped(self.rx), framer.rx)
        wiring.connect(m, framer.payload, check.payload)
        wiring.connect(m, framer.req, ex.req)
        wiring.connect(m, ex.resp, resp.resp)
        wiring.connect(m, resp.tx, wiring.flipped(self.tx))
        wiring.connect(m, ex.core_i, wiring.flipped(self.core_i))
        wiring.connect(m, wiring.flipped(self.core_o), ex.core_o)
        m.d.comb += [check.start.eq(framer.start), ex.load.eq(check.verdict),
                     resp.status.eq(ex.status), resp.trailer.eq(ex.trailer),
                     ex.framing_errors.eq(self.framing_errors), ex.overruns.eq(self.overruns),
                     self.leds.eq(Cat(ex.loaded, ex.running, ex.error_seen, framer.busy))]

        # A word's write goes out on the core's load bus, whose decoder registers it
        # per target memory (the route across the die gets a cycle of its own).
        if ports:
            w = ex.write
            m.d.comb += [self.load.en.eq(w.en), self.load.target.eq(w.target),
                         self.load.addr.eq(w.addr), self.load.data.eq(w.data[:len(self.load.data)])]
        return m
