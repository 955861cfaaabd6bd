"""Small helpers shared by tests (plain functions)."""

import struct

from cosparse.hw.protocol import CRC_FORMAT, HEADER_FORMAT, SYNC_RESPONSE, crc16


def uart_bits(byte: int) -> list[int]:
    """The line levels of one UART byte: start bit, 8 data bits (LSB first), stop bit."""
    return [0] + [(byte >> i) & 1 for i in range(8)] + [1]


def parse_responses(data: bytes) -> list[tuple[int, bytes]]:
    """(code, payload) of each host-link response frame in ``data``; every CRC must match."""
    res, i = [], 0
    while i < len(data):
        assert data[i] == SYNC_RESPONSE, f"byte {i} is {data[i]:#x}, not a response sync"
        code, n = struct.unpack(HEADER_FORMAT, data[i + 1:i + 4])
        body = data[i + 1:i + 4 + n]
        (crc,) = struct.unpack(CRC_FORMAT, data[i + 4 + n:i + 6 + n])
        assert crc16(body) == crc, f"response at byte {i}: CRC {crc:#06x}, expected {crc16(body):#06x}"
        res.append((code, data[i + 4:i + 4 + n]))
        i += n + 6
    return res
