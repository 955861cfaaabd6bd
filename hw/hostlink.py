"""The host link: a framed request/response protocol over the UART.

Frames
------
Every request is ``0x5A | cmd u8 | len u16 | payload[len] | crc u16``, every
response ``0xA5 | code u8 | len u16 | payload[len] | crc u16``; integers are
little-endian and the CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial
0xFFFF, ``binascii.crc_hqx(data, 0xFFFF)``) over everything between the sync
byte and the CRC. A request is only acted on once its CRC has been checked:
a corrupted, truncated (no byte for ``timeout`` cycles inside a frame) or
oversize frame gets an error response and changes nothing. Bytes outside a
frame (before a sync byte) are ignored.

Commands (``cmd``) and their payloads:

==========  ===============================  =================================
command     request payload                  response payload (code OK)
==========  ===============================  =================================
STATUS 01   none                             :data:`STATUS_FORMAT` (20 bytes)
LOAD 02     target u8, address u32, words    none
            (``ceil(width / 8)`` bytes each,
            little-endian), at most
            :data:`MAX_LOAD_BYTES` bytes
SEAL 03     weights id u32 (the bundle's     none
            CRC-32)
INFER 04    the input frame: ``beats x W``   the output frame (``beats x D x
            int8 (the core's input beats,    bytes per element``, little-
            padding lanes zero)              endian) | latency u32 | feed u32
==========  ===============================  =================================

LOAD writes words into one of the core's loadable memories (``target``: the
index in the build's ``images/index.json`` order) starting at ``address``;
it clears the *loaded* flag, which SEAL sets again. A core with memories
that have no initial contents (iCE40 SPRAM) refuses INFER until sealed.
INFER streams the input into the core, collects its whole output frame,
and answers with it and two cycle counters: the *latency* (first input beat
taken to last output beat) and the *feed* (first to last input beat taken).

Error codes (``code``) are :data:`ERRORS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .util import check_int
from .streams import dense_layout

__all__ = ["HostLink", "LoadPort", "SYNC_REQUEST", "SYNC_RESPONSE", "COMMANDS", "ERRORS",
           "STATUS_FORMAT", "STATUS_BYTES", "PROTOCOL_VERSION", "MAX_LOAD_BYTES", "crc16_update"]

SYNC_REQUEST = 0x5A
SYNC_RESPONSE = 0xA5
PROTOCOL_VERSION = 1
#: Data bytes of one LOAD frame (after target and address).
MAX_LOAD_BYTES = 256
#: Words of one iCE40 block RAM in its 256 x 16 mode: patchable memories are padded
#: to whole blocks.
PATCH_BLOCK = 256
COMMANDS = {"STATUS": 0x01, "LOAD": 0x02, "SEAL": 0x03, "INFER": 0x04}
ERRORS = {
    0: "ok",
    1: "CRC mismatch (corrupted frame)",
    2: "wrong length for the command, or longer than the device accepts",
    3: "truncated frame (the line went idle inside it)",
    4: "unknown command",
    5: "unknown load target",
    6: "load beyond the end of the target memory, or not whole words",
    7: "weights not loaded (the design has memories without initial contents)",
}
#: ``struct`` format of the STATUS payload: version, flags (bit 0 loaded, bit 1
#: needs load), last error, design id, weights id, inferences, rejected frames,
#: framing errors, overruns.
STATUS_FORMAT = "<HBBIIIHBB"
STATUS_BYTES = 20


def crc16_update(crc, byte):
    """CRC-16/CCITT-FALSE of one more byte (Amaranth values or Python ints)."""
    for i in range(7, -1, -1):
        fb = crc[15] ^ byte[i] if not isinstance(crc, int) else ((crc >> 15) ^ (byte >> i)) & 1
        if isinstance(crc, int):
            crc = ((crc << 1) & 0xFFFF) ^ (0x1021 if fb else 0)
        else:
            crc = Cat(Const(0, 1), crc[:15]) ^ Mux(fb, 0x1021, 0)
    return crc


@dataclass(eq=False)
class LoadPort:
    """Write access of the host loader to one memory of a unit.

    The unit creates it (``addr``, ``data``, ``en`` are plain signals the
    loader drives) and adds a write port to the memory in ``elaborate``.
    ``image`` is the memory's contents for the weight bundle (also when the
    memory itself has no initial contents: ``has_init`` False).
    """

    name: str
    width: int
    depth: int
    image: tuple[int, ...]
    has_init: bool = True

    def __post_init__(self):
        # 16 bits whatever the depth: writes may reach every word of a padded memory, so
        # synthesis keeps (and initialises) all of it.
        self.addr = Signal(16, name=f"{self.name}_load_addr")
        self.data = Signal(self.width, name=f"{self.name}_load_data")
        self.en = Signal(name=f"{self.name}_load_en")
        #: Set for a bitstream whose block RAM contents are patched later (see
        #: :mod:`cosparse.boards.patch`): the memory is built with seeded random
        #: contents over whole block RAMs (:data:`PATCH_BLOCK` words), so every bit
        #: column is a unique pattern the patcher can find.
        self.patch_seed: int | None = None

    @property
    def word_bytes(self) -> int:
        return -(-self.width // 8)

    @property
    def hw_depth(self) -> int:
        """Depth of the memory in hardware (padded for patching)."""
        if self.patch_seed is None:
            return self.depth
        return -(-self.depth // PATCH_BLOCK) * PATCH_BLOCK

    def placeholder(self) -> tuple[int, ...]:
        """The seeded random contents a patchable memory is built with."""
        import numpy as np
        rng = np.random.default_rng(self.patch_seed)
        return tuple(int.from_bytes(rng.bytes(self.word_bytes), "little")
                     & ((1 << self.width) - 1) for _ in range(self.hw_depth))

    def hw_init(self) -> tuple[int, ...] | list:
        """Initial contents in hardware: none (SPRAM), the placeholder, or the image."""
        if not self.has_init:
            return []
        return self.placeholder() if self.patch_seed is not None else self.image


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
    """

    def __init__(self, *, in_width: int, in_groups: int, in_group_size: int, out_width: int,
                 out_bits: int, out_beats: int, load_ports: list[LoadPort] = (),
                 design_id: int = 0, timeout: int = 1 << 20):
        from amaranth.hdl import signed
        self.in_width = check_int("in_width", in_width, 1, 256)
        self.in_groups = check_int("in_groups", in_groups, 1)
        self.in_group_size = check_int("in_group_size", in_group_size, 1)
        self.out_width = check_int("out_width", out_width, 1, 256)
        if out_bits not in (8, 32):
            raise ValueError(f"out_bits must be 8 or 32, got {out_bits!r}")
        self.out_bits = out_bits
        self.out_beats = check_int("out_beats", out_beats, 1)
        self.load_ports = list(load_ports)
        if len(self.load_ports) > 255:
            raise ValueError(f"at most 255 load targets, got {len(self.load_ports)}")
        self.design_id = check_int("design_id", design_id, 0, (1 << 32) - 1)
        self.timeout = check_int("timeout", timeout, 16)
        self.in_beats = in_groups * -(-in_group_size // in_width)
        self.in_bytes = self.in_beats * in_width
        self.out_beat_bytes = out_width * out_bits // 8
        self.out_bytes = out_beats * self.out_beat_bytes
        self.max_payload = max(self.in_bytes, MAX_LOAD_BYTES + 5, 4)
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
        })

    def elaborate(self, platform):
        m = Module()
        W = self.in_width
        maxp = self.max_payload
        buf_depth = -(-maxp // W)
        bpg = -(-self.in_group_size // W)  # input beats per group
        OB = self.out_beat_bytes
        ports = self.load_ports
        n_targets = len(ports)

        # ---------------- memories: request payload (W bytes per word), output frame
        m.submodules.payload = pbuf = Memory(shape=unsigned(8 * W), depth=buf_depth, init=[])
        pw = pbuf.write_port(granularity=8)
        pr = pbuf.read_port()
        m.submodules.outbuf = obuf = Memory(shape=unsigned(8 * OB), depth=self.out_beats,
                                            init=[])
        ow = obuf.write_port()
        orr = obuf.read_port()
        # Read ports hold their data unless a state reads (their ``en`` starts at 1).
        m.d.comb += [pr.en.eq(0), orr.en.eq(0)]

        # ---------------- state
        crc = Signal(16)
        cmd = Signal(8)
        length = Signal(16)
        hdr = Signal(2)  # header bytes seen (cmd, len lo, len hi)
        left = Signal(16)  # payload bytes still to come
        hpos = Signal(range(6))  # payload bytes seen, up to the LOAD header's 5
        wa = Signal(range(buf_depth))  # payload word/lane the next byte goes to
        wl = Signal(range(max(W, 2)))
        crc_lo = Signal(8)
        crc_seen = Signal(2)
        idle = Signal(range(self.timeout + 1))
        oversize = Signal()
        truncated = Signal()
        # LOAD fields captured as they arrive
        target = Signal(8)
        laddr = Signal(16)  # the address's low half; ``laddr_hi``: the high half is not 0
        laddr_hi = Signal()
        lane = Signal(8)  # byte of the word being received
        lwords = Signal(range(MAX_LOAD_BYTES + 1))  # whole words of this LOAD

        loaded = Signal(init=int(not self.needs_load))
        weights_id = Signal(32)
        last_error = Signal(8)
        error_seen = Signal()
        inferences = Signal(16)
        rejected = Signal(8)
        latency = Signal(32)
        feed = Signal(24)

        resp_code = Signal(8)
        resp_kind = Signal(2)  # 0 none, 1 status, 2 output
        # The body's length follows from its kind (no register of its own).
        resp_len = Signal(16)
        m.d.comb += resp_len.eq(Array([Const(0, 16), Const(STATUS_BYTES, 16),
                                       Const(self.out_bytes + 8, 16), Const(0, 16)])[resp_kind])
        running = Signal()

        wb_table = Array(Const(p.word_bytes, 8) for p in ports) if ports else Array([Const(1, 8)])
        depth_table = (Array(Const(p.depth, 17) for p in ports) if ports
                       else Array([Const(0, 17)]))

        # LOAD's target and range checks, registered: their inputs are final once the
        # payload is in, a CRC's two bytes before CHECK reads them (off CHECK's path).
        bad_target = Signal()
        bad_range = Signal()
        m.d.sync += [bad_target.eq(target >= n_targets),
                     bad_range.eq((lane != 0) | laddr_hi | (laddr + lwords > depth_table[target]))]

        status_bytes = Signal(STATUS_BYTES * 8)
        m.d.comb += status_bytes.eq(Cat(
            Const(PROTOCOL_VERSION, 16), loaded, Const(int(self.needs_load), 1), Const(0, 6),
            last_error, Const(self.design_id, 32), weights_id, inferences, Const(0, 16),
            rejected, Const(0, 8), self.framing_errors, self.overruns))


        rxb = self.rx.payload
        take = Signal()
        m.d.comb += take.eq(self.rx.valid & self.rx.ready)
        # One CRC network for both directions: the byte received, or (SEND) the byte sent.
        crc_byte = Signal(8)
        crc_next = Signal(16)
        m.d.comb += [crc_byte.eq(rxb), crc_next.eq(crc16_update(crc, crc_byte))]

        # response sender: header, body, CRC phases with their own small counters
        s_phase = Signal(2)
        # header byte / body bytes left / CRC byte
        s_cnt = Signal(range(max(STATUS_BYTES, self.out_bytes + 8) + 1))
        s_bi = Signal(5)  # STATUS byte
        s_oa = Signal(range(max(self.out_beats, 2)))
        s_ol = Signal(range(max(OB, 2)))
        s_in_cnt = Signal()  # INFER: past the output bytes, into the counters
        s_ci = Signal(3)

        # LOAD execution
        x_ra = Signal(range(buf_depth))
        x_rl = Signal(range(max(W, 2)))
        x_left = Signal(range(maxp + 1))
        x_word = Signal(8 * max((p.word_bytes for p in ports), default=1))
        l_byte = Signal(8)
        # byte of the word (LOAD) or of the weights id (SEAL, to 4)
        x_j = Signal(range(max(max((p.word_bytes for p in ports), default=1), 4) + 1))
        x_k = Signal(range(max((p.hw_depth for p in ports), default=1) + 1))
        # A word's write: registered per target memory (address, data, enable) and
        # landing the cycle after LOAD_WRITE, so the route from the link to a memory
        # across the die has a cycle of its own (the state decode in front of a
        # LUT RAM's write address was a 20 ns path on an ECP5-85F build).
        load_write = Signal()
        for t, lp in enumerate(ports):
            w_addr = Signal.like(lp.addr, name=f"{lp.name}_{t}_w_addr")
            w_data = Signal(lp.width, name=f"{lp.name}_{t}_w_data", reset_less=True)
            w_en = Signal(name=f"{lp.name}_{t}_w_en")
            m.d.sync += w_en.eq(load_write & (target == t))
            with m.If(load_write):
                m.d.sync += [w_addr.eq(x_k), w_data.eq(x_word[:lp.width])]
            m.d.comb += [lp.addr.eq(w_addr), lp.data.eq(w_data), lp.en.eq(w_en)]

        # INFER feeder / collector
        f_addr = Signal(range(buf_depth + 1))
        f_valid = Signal()
        f_beat = Signal(range(self.in_beats + 1))
        f_gb = Signal(range(bpg + 1))
        f_last = Signal()
        f_end = Signal()
        c_beats = Signal(range(self.out_beats + 1))
        started = Signal()
        feeding_done = Signal()

        def finish(code):
            """End a request: answer ``code`` with no payload."""
            m.d.sync += [resp_code.eq(code), resp_kind.eq(0)]
            if isinstance(code, int) and code == 0:
                return
            m.d.sync += [last_error.eq(code), error_seen.eq(1)]

        def count_idle():
            """Inside a frame without a byte: count, and truncate it at the timeout."""
            with m.If(idle == self.timeout):
                m.d.sync += truncated.eq(1)
                m.next = "CHECK"
            with m.Else():
                m.d.sync += idle.eq(idle + 1)

        def reject(code):
            m.d.sync += [rejected.eq(rejected + 1)]
            finish(code)

        with m.FSM(name="link") as fsm:
            with m.State("SYNC"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(take & (rxb == SYNC_REQUEST)):
                    m.d.sync += [crc.eq(0xFFFF), hdr.eq(0), hpos.eq(0), wa.eq(0), wl.eq(0),
                                 idle.eq(0), oversize.eq(0), truncated.eq(0), crc_seen.eq(0),
                                 lane.eq(0), lwords.eq(0), laddr.eq(0), laddr_hi.eq(0),
                                 target.eq(0)]
                    m.next = "HEADER"

            with m.State("HEADER"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(take):
                    m.d.sync += [crc.eq(crc_next), hdr.eq(hdr + 1), idle.eq(0)]
                    with m.Switch(hdr):
                        with m.Case(0):
                            m.d.sync += cmd.eq(rxb)
                        with m.Case(1):
                            m.d.sync += length[:8].eq(rxb)
                        with m.Case(2):
                            m.d.sync += length[8:].eq(rxb)
                            full = Cat(length[:8], rxb)
                            m.d.sync += [oversize.eq(full > maxp), left.eq(full)]
                            with m.If(full == 0):
                                m.next = "CRC"
                            with m.Else():
                                m.next = "PAYLOAD"
                with m.Else():
                    count_idle()

            with m.State("PAYLOAD"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(take):
                    m.d.sync += [crc.eq(crc_next), left.eq(left - 1), idle.eq(0)]
                    with m.If(hpos != 5):
                        m.d.sync += hpos.eq(hpos + 1)
                    with m.If(~oversize):
                        m.d.comb += [pw.addr.eq(wa), pw.data.eq(rxb.replicate(W)),
                                     pw.en.eq(1 << wl)]
                        with m.If(wl == W - 1):
                            m.d.sync += [wl.eq(0), wa.eq(wa + 1)]
                        with m.Else():
                            m.d.sync += wl.eq(wl + 1)
                    # LOAD: target, address, then count whole words of the target's width
                    with m.If(hpos == 0):
                        m.d.sync += target.eq(rxb)
                    with m.Elif(hpos == 1):
                        m.d.sync += laddr[:8].eq(rxb)
                    with m.Elif(hpos == 2):
                        m.d.sync += laddr[8:].eq(rxb)
                    with m.Elif(hpos < 5):
                        m.d.sync += laddr_hi.eq(laddr_hi | (rxb != 0))
                    with m.Else():
                        with m.If(lane == wb_table[target] - 1):
                            m.d.sync += [lane.eq(0), lwords.eq(lwords + 1)]
                        with m.Else():
                            m.d.sync += lane.eq(lane + 1)
                    with m.If(left == 1):
                        m.next = "CRC"
                with m.Else():
                    count_idle()

            with m.State("CRC"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(take):
                    m.d.sync += [crc_seen.eq(crc_seen + 1), idle.eq(0)]
                    with m.If(crc_seen == 0):
                        m.d.sync += crc_lo.eq(rxb)
                    with m.Else():
                        m.d.sync += crc.eq(crc ^ Cat(crc_lo, rxb))  # zero when they match
                        m.next = "CHECK"
                with m.Else():
                    count_idle()

            with m.State("CHECK"):
                m.next = "RESPOND"
                with m.If(oversize):
                    reject(2)
                with m.Elif(truncated):
                    reject(3)
                with m.Elif(crc != 0):
                    reject(1)
                with m.Else():
                    with m.Switch(cmd):
                        with m.Case(COMMANDS["STATUS"]):
                            with m.If(length != 0):
                                reject(2)
                            with m.Else():
                                finish(0)
                                m.d.sync += resp_kind.eq(1)
                        with m.Case(COMMANDS["LOAD"]):
                            with m.If(length < 5):
                                reject(2)
                            with m.Elif(bad_target):
                                reject(5)
                            with m.Elif(bad_range):
                                reject(6)
                            with m.Else():
                                m.d.sync += [x_ra.eq(5 // W), x_rl.eq(5 % W), x_left.eq(length - 5),
                                             x_j.eq(0), x_k.eq(laddr), loaded.eq(0)]
                                m.next = "LOAD_READ"
                        with m.Case(COMMANDS["SEAL"]):
                            with m.If(length != 4):
                                reject(2)
                            with m.Else():
                                m.d.sync += [x_ra.eq(0), x_rl.eq(0), x_j.eq(0)]
                                m.next = "SEAL_READ"
                        with m.Case(COMMANDS["INFER"]):
                            with m.If(length != self.in_bytes):
                                reject(2)
                            with m.Elif(~loaded):
                                reject(7)
                            with m.Else():
                                m.d.sync += [f_addr.eq(0), f_valid.eq(0), f_beat.eq(0),
                                             f_gb.eq(0), c_beats.eq(0), started.eq(0),
                                             feeding_done.eq(0), latency.eq(0), feed.eq(0),
                                             running.eq(1)]
                                m.next = "INFER"
                        with m.Default():
                            reject(4)

            # LOAD: read payload bytes in order, assemble words, write them.
            with m.State("LOAD_READ"):
                m.d.comb += [pr.addr.eq(x_ra), pr.en.eq(1)]
                with m.If(x_left == 0):
                    finish(0)
                    m.next = "RESPOND"
                with m.Else():
                    m.next = "LOAD_LATCH"
            # The payload byte is registered first: the block RAM's clock-to-out (5.8 ns
            # on ECP5) then ends in a register, not in the word assembly.
            with m.State("LOAD_LATCH"):
                m.d.sync += l_byte.eq(pr.data.word_select(x_rl, 8))
                m.next = "LOAD_BYTE"
            with m.State("LOAD_BYTE"):
                m.d.sync += [x_word.word_select(x_j, 8).eq(l_byte), x_left.eq(x_left - 1)]
                with m.If(x_rl == W - 1):
                    m.d.sync += [x_rl.eq(0), x_ra.eq(x_ra + 1)]
                with m.Else():
                    m.d.sync += x_rl.eq(x_rl + 1)
                with m.If(x_j == wb_table[target] - 1):
                    m.d.sync += x_j.eq(0)
                    m.next = "LOAD_WRITE"
                with m.Else():
                    m.d.sync += x_j.eq(x_j + 1)
                    m.next = "LOAD_READ"
            with m.State("LOAD_WRITE"):
                m.d.comb += load_write.eq(1)
                m.d.sync += [x_k.eq(x_k + 1), x_word.eq(0)]
                m.next = "LOAD_READ"

            # SEAL: the weights id from the payload's four bytes.
            with m.State("SEAL_READ"):
                m.d.comb += [pr.addr.eq(x_ra), pr.en.eq(1)]
                with m.If(x_j == 4):
                    m.d.sync += loaded.eq(1)
                    finish(0)
                    m.next = "RESPOND"
                with m.Else():
                    m.next = "SEAL_BYTE"
            with m.State("SEAL_BYTE"):
                m.d.sync += [weights_id.word_select(x_j[:2], 8).eq(pr.data.word_select(x_rl, 8)),
                             x_j.eq(x_j + 1)]
                with m.If(x_rl == W - 1):
                    m.d.sync += [x_rl.eq(0), x_ra.eq(x_ra + 1)]
                with m.Else():
                    m.d.sync += x_rl.eq(x_rl + 1)
                m.next = "SEAL_READ"

            # INFER: feed the payload's beats to the core, collect its output frame.
            with m.State("INFER"):
                adv = Signal()
                m.d.comb += [adv.eq(~f_valid | self.core_i.ready),
                             pr.addr.eq(f_addr), pr.en.eq(adv),
                             self.core_i.valid.eq(f_valid),
                             self.core_i.payload.as_value().eq(Cat(pr.data, f_last, f_end))]
                with m.If(adv):
                    with m.If(f_beat < self.in_beats):
                        m.d.sync += [f_valid.eq(1), f_addr.eq(f_addr + 1), f_beat.eq(f_beat + 1),
                                     f_last.eq(f_gb == bpg - 1),
                                     f_end.eq(f_beat == self.in_beats - 1)]
                        with m.If(f_gb == bpg - 1):
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
                with m.If(started | fed):
                    m.d.sync += latency.eq(latency + 1)
                m.d.comb += self.core_o.ready.eq(1)
                m.d.comb += [ow.addr.eq(c_beats), ow.data.eq(self.core_o.payload.data.as_value()),
                             ow.en.eq(self.core_o.valid)]
                with m.If(self.core_o.valid):
                    m.d.sync += c_beats.eq(c_beats + 1)
                    with m.If(c_beats == self.out_beats - 1):
                        m.d.sync += [running.eq(0), inferences.eq(inferences + 1),
                                     latency.eq(latency)]  # last output beat minus first input
                        finish(0)
                        m.d.sync += resp_kind.eq(2)
                        m.next = "RESPOND"

            # Response: header, body, CRC, one byte per UART slot.
            with m.State("RESPOND"):
                m.d.sync += [s_phase.eq(0), s_cnt.eq(0), s_bi.eq(0), s_oa.eq(0), s_ol.eq(0),
                             s_in_cnt.eq(0), s_ci.eq(0), crc.eq(0xFFFF)]
                m.next = "SEND_PREP"
            with m.State("SEND_PREP"):  # the output buffer's read of this byte's word
                m.d.comb += [orr.addr.eq(s_oa), orr.en.eq(1)]
                m.next = "SEND"
            with m.State("SEND"):
                out_byte = orr.data.word_select(s_ol, 8) if OB > 1 else orr.data[:8]
                body = Signal(8)
                with m.If(resp_kind == 1):
                    m.d.comb += body.eq(status_bytes.word_select(s_bi, 8))
                with m.Elif(~s_in_cnt):
                    m.d.comb += body.eq(out_byte)
                with m.Else():
                    m.d.comb += body.eq(Cat(latency, feed, Const(0, 8)).word_select(s_ci, 8))
                byte = Signal(8)
                with m.Switch(s_phase):
                    with m.Case(0):
                        m.d.comb += byte.eq(Array([Const(SYNC_RESPONSE, 8), resp_code,
                                                   resp_len[:8], resp_len[8:]])[s_cnt[:2]])
                    with m.Case(1):
                        m.d.comb += byte.eq(body)
                    with m.Default():
                        m.d.comb += byte.eq(Mux(s_cnt[0], crc[8:], crc[:8]))
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(byte), crc_byte.eq(byte)]
                m.next = "SEND"
                with m.If(self.tx.ready):
                    m.next = "SEND_PREP"
                    with m.If(((s_phase == 0) & (s_cnt[:2] != 0)) | (s_phase == 1)):
                        m.d.sync += crc.eq(crc_next)
                    with m.Switch(s_phase):
                        with m.Case(0):
                            with m.If(s_cnt[:2] == 3):
                                m.d.sync += [s_phase.eq(Mux(resp_len == 0, 2, 1)),
                                             s_cnt.eq(Mux(resp_len == 0, 0, resp_len))]
                            with m.Else():
                                m.d.sync += s_cnt.eq(s_cnt + 1)
                        with m.Case(1):
                            m.d.sync += [s_cnt.eq(s_cnt - 1), s_bi.eq(s_bi + 1)]
                            with m.If(s_in_cnt):
                                m.d.sync += s_ci.eq(s_ci + 1)
                            with m.Elif(s_ol == OB - 1):
                                m.d.sync += [s_ol.eq(0), s_oa.eq(s_oa + 1)]
                                with m.If(s_oa == self.out_beats - 1):
                                    m.d.sync += s_in_cnt.eq(1)
                            with m.Else():
                                m.d.sync += s_ol.eq(s_ol + 1)
                            with m.If(s_cnt == 1):
                                m.d.sync += [s_phase.eq(2), s_cnt.eq(0)]
                        with m.Default():
                            with m.If(s_cnt[0]):
                                m.next = "SYNC"
                            with m.Else():
                                m.d.sync += s_cnt.eq(1)
        m.d.comb += self.leds.eq(Cat(loaded, running, error_seen, ~fsm.ongoing("SYNC")))
        return m
