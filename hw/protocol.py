"""The host-link protocol in plain Python: frames, commands, codes, status, CRC-16.

Both ends share this module: the gateware (:mod:`cosparse.hw.hostlink`)
builds its tables from it and the host runtime (:mod:`cosparse.boards.runtime`)
encodes and decodes frames with it. It imports no Amaranth, so a host
without the HDL toolchain can talk to a board. The wire format, commands,
codes and timing are described in ``docs/host-link.md``.
"""

from __future__ import annotations

import binascii
import enum
import struct
from dataclasses import astuple, dataclass

__all__ = ["SYNC_REQUEST", "SYNC_RESPONSE", "PROTOCOL_VERSION", "MAX_LOAD_BYTES",
           "LOAD_HEADER_BYTES", "LOAD_HEADER_FORMAT", "SEAL_FORMAT", "INFER_TRAILER_FORMAT",
           "HEADER_FORMAT", "CRC_FORMAT", "Command", "Code", "ERRORS", "StatusFlag",
           "STATUS_FIELDS", "STATUS_FORMAT", "STATUS_BYTES", "Status",
           "CRC16_WIDTH", "CRC16_POLYNOMIAL", "CRC16_INITIAL", "crc16",
           "request_frame", "response_frame", "load_payload"]

#: First byte of a request frame.
SYNC_REQUEST = 0x5A
#: First byte of a response frame.
SYNC_RESPONSE = 0xA5
#: Reported by STATUS.
PROTOCOL_VERSION = 1
#: Data bytes of one LOAD frame (after its target and address).
MAX_LOAD_BYTES = 256

#: ``struct`` format of a frame's header after the sync byte: command (or code) and
#: payload length.
HEADER_FORMAT = "<BH"
#: ``struct`` format of a frame's CRC, sent after the payload.
CRC_FORMAT = "<H"
#: ``struct`` format of the head of a LOAD payload: target and word address.
LOAD_HEADER_FORMAT = "<BI"
LOAD_HEADER_BYTES = struct.calcsize(LOAD_HEADER_FORMAT)
#: ``struct`` format of the SEAL payload: the weights id.
SEAL_FORMAT = "<I"
#: ``struct`` format of the end of an INFER response: latency and feed cycles.
INFER_TRAILER_FORMAT = "<II"


class Command(enum.IntEnum):
    """Request commands (the ``cmd`` byte)."""

    STATUS = 0x01
    LOAD = 0x02
    SEAL = 0x03
    INFER = 0x04


class Code(enum.IntEnum):
    """Response codes (the ``code`` byte): 0 is success, the rest are refusals."""

    OK = 0
    CRC = 1
    LENGTH = 2
    TRUNCATED = 3
    UNKNOWN_COMMAND = 4
    UNKNOWN_TARGET = 5
    RANGE = 6
    NOT_LOADED = 7


#: What each code means, for messages.
ERRORS = {
    Code.OK: "ok",
    Code.CRC: "CRC mismatch (corrupted frame)",
    Code.LENGTH: "wrong length for the command, or longer than the device accepts",
    Code.TRUNCATED: "truncated frame (the line went idle inside it)",
    Code.UNKNOWN_COMMAND: "unknown command",
    Code.UNKNOWN_TARGET: "unknown load target",
    Code.RANGE: "load beyond the end of the target memory, or not whole words",
    Code.NOT_LOADED: "weights not loaded (the design has memories without initial contents)",
}


class StatusFlag(enum.IntFlag):
    """Bits of the STATUS ``flags`` byte."""

    LOADED = 1
    NEEDS_LOAD = 2
    #: The device was reset (or configured) since its last STATUS answer.
    RESET = 4


#: The STATUS payload's fields in wire order, with their widths in bits (little-endian).
STATUS_FIELDS = (
    ("version", 16), ("flags", 8), ("last_error", 8), ("design_id", 32), ("weights_id", 32),
    ("inferences", 32), ("rejected", 16), ("framing_errors", 8), ("overruns", 8),
)
#: ``struct`` format of the STATUS payload (the fields of :data:`STATUS_FIELDS`).
STATUS_FORMAT = "<" + "".join({8: "B", 16: "H", 32: "I"}[bits] for _, bits in STATUS_FIELDS)
STATUS_BYTES = struct.calcsize(STATUS_FORMAT)


@dataclass(frozen=True)
class Status:
    """The STATUS payload, decoded."""

    version: int
    loaded: bool
    needs_load: bool
    last_error: int
    design_id: int
    weights_id: int
    inferences: int
    rejected: int
    framing_errors: int
    overruns: int
    #: Reset (or configured) since the last STATUS answer: the counters started again.
    reset: bool = False

    @classmethod
    def unpack(cls, payload: bytes) -> "Status":
        v, flags, err, did, wid, n, rej, fe, ov = struct.unpack(STATUS_FORMAT, payload)
        return cls(v, bool(flags & StatusFlag.LOADED), bool(flags & StatusFlag.NEEDS_LOAD), err,
                   did, wid, n, rej, fe, ov, bool(flags & StatusFlag.RESET))

    def pack(self) -> bytes:
        v, loaded, needs, *rest, reset = astuple(self)
        flags = ((StatusFlag.LOADED if loaded else 0) | (StatusFlag.NEEDS_LOAD if needs else 0)
                 | (StatusFlag.RESET if reset else 0))
        return struct.pack(STATUS_FORMAT, v, flags, *rest)


#: CRC-16/CCITT-FALSE (also known as CRC-16/IBM-3740): polynomial 0x1021, initial value
#: 0xFFFF, no reflection, no output XOR; computed over a frame from its command (or code)
#: byte to the end of its payload.
CRC16_WIDTH = 16
CRC16_POLYNOMIAL = 0x1021
CRC16_INITIAL = 0xFFFF


def crc16(data: bytes, crc: int = CRC16_INITIAL) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (continuing from ``crc``)."""
    return binascii.crc_hqx(bytes(data), crc)


def _frame(sync: int, head: int, payload: bytes) -> bytes:
    body = struct.pack(HEADER_FORMAT, head, len(payload)) + bytes(payload)
    return bytes([sync]) + body + struct.pack(CRC_FORMAT, crc16(body))


def request_frame(cmd: int, payload: bytes = b"") -> bytes:
    """One request frame: ``0x5A | cmd u8 | len u16 | payload | crc u16``."""
    return _frame(SYNC_REQUEST, cmd, payload)


def response_frame(code: int, payload: bytes = b"") -> bytes:
    """One response frame: ``0xA5 | code u8 | len u16 | payload | crc u16``."""
    return _frame(SYNC_RESPONSE, code, payload)


def load_payload(target: int, address: int, words, word_bytes: int) -> bytes:
    """A LOAD payload: ``words`` (``word_bytes`` each, little-endian) from ``address``."""
    return struct.pack(LOAD_HEADER_FORMAT, target, address) + b"".join(
        int(w).to_bytes(word_bytes, "little") for w in words)
