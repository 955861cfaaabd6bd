"""The host-link protocol module: CRC, frames, status format (its host-side imports: tests/test_layers.py)."""

import binascii
import random

import pytest

from cosparse.hw import protocol
from cosparse.hw.protocol import Command, Status, crc16, request_frame, response_frame


def test_crc16_is_ccitt_false():
    assert crc16(b"123456789") == 0x29B1  # the catalogue's check value
    rng = random.Random(1)
    for n in range(40):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert crc16(data) == binascii.crc_hqx(data, 0xFFFF)
        assert crc16(data[n // 2:], crc16(data[:n // 2])) == crc16(data)


def test_frames():
    f = request_frame(Command.SEAL, b"\x01\x02\x03\x04")
    assert f[:4] == bytes([0x5A, 3, 4, 0]) and f[4:8] == b"\x01\x02\x03\x04"
    assert int.from_bytes(f[8:], "little") == crc16(f[1:8])
    assert response_frame(0)[0] == 0xA5 and len(response_frame(0, b"xy")) == 8
    assert protocol.load_payload(2, 0x10, [0x0102, 7], 2) == bytes([2, 0x10, 0, 0, 0, 2, 1, 7, 0])


def test_status_round_trip():
    assert protocol.STATUS_BYTES == sum(b for _, b in protocol.STATUS_FIELDS) // 8 == 20
    st = Status(1, True, False, 6, 0xC0FFEE, 0xABCD1234, 70000, 300, 2, 255)
    assert Status.unpack(st.pack()) == st
    with pytest.raises(Exception):
        Status.unpack(b"\x00" * 19)
