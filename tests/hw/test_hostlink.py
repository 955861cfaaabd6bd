"""The host link over a real UART line, in the Amaranth simulator.

A small network's :class:`LinkTop` (UART, host link, loadable core with an
SPRAM-style memory that starts empty) is driven bit by bit from request
frames made by the host runtime's own encoder; responses are decoded from
the ``tx`` pin. Checked: every error path answers its code and changes
nothing (corrupted, truncated, oversize, unknown command, load out of
range, inference before the weights are sealed), loading and sealing, and
an inference equal to the golden model's with its cycle counters.
"""

import struct

import numpy as np
import pytest

from cosparse.boards.top import LinkTop
from cosparse.compiler import zoo
from cosparse.compiler.order import to_drain_order
from cosparse.compiler.folding import Folding
from cosparse.hw.protocol import STATUS_BYTES, Command, Status, load_payload, request_frame
from cosparse.sim import golden

from ..helpers import parse_responses, run_sim, uart_bits

DIV = 4
TIMEOUT = 300


def run_link(top: LinkTop, requests: list[tuple[bytes, int]]) -> bytes:
    """Send each request's bytes, then idle ``wait`` bit times; return all bytes sent back."""
    out = bytearray()

    async def host(ctx):
        for data, wait in requests:
            for b in data:
                for v in uart_bits(b):
                    ctx.set(top.rx, v)
                    await ctx.tick().repeat(DIV)
            await ctx.tick().repeat(DIV * wait)

    async def line(ctx):
        while True:
            await ctx.tick()
            if ctx.get(top.tx) == 0:  # start bit: sample each data bit in its middle
                await ctx.tick().repeat(DIV + DIV // 2)
                v = 0
                for i in range(8):
                    v |= ctx.get(top.tx) << i
                    await ctx.tick().repeat(DIV)
                out.append(v)

    run_sim(top, [host], background=[line])
    return bytes(out)


@pytest.fixture(scope="module")
def design():
    net = to_drain_order(zoo.random_network((12,), [("linear", 8, 2), ("global", 3),
                                                    ("logits", 4, 1)], seed=3))
    top = LinkTop(net, Folding(input_width=1), divisor=DIV, timeout=TIMEOUT, spram_bits=64,
                  design_id=0xC0FFEE)
    return net, top


def test_link_protocol_errors_load_seal_and_infer(design):
    net, top = design
    ports = top.core.load_ports
    assert [p.has_init for p in ports].count(False) >= 1  # an SPRAM-style memory starts empty
    x = np.random.default_rng(5).integers(-128, 128, (2, 12)).astype(np.int8)
    want = golden.run(net, x)

    def load(i, p, addr=0, words=None):
        words = p.image if words is None else words
        return request_frame(Command.LOAD, load_payload(i, addr, words, p.word_bytes))

    status = request_frame(Command.STATUS)
    infer0 = request_frame(Command.INFER, x[0].tobytes())
    corrupt = bytearray(infer0)
    corrupt[6] ^= 0x10
    reqs = [
        (b"\x00\x13garbage", 20),                            # outside a frame: ignored
        (status, 300),                                        # 0 status
        (infer0, 300),                                        # 1 not loaded: refused
        (bytes(corrupt), 300),                                # 2 CRC
        (infer0[:9], 2 * TIMEOUT // DIV + 300),               # 3 truncated
        (request_frame(Command.INFER, bytes(300)), 300),  # 4 oversize
        (request_frame(0x7E), 300),                           # 5 unknown command
        (request_frame(Command.INFER, x[0].tobytes()[:5]), 300),  # 6 wrong length
        (load(len(ports), ports[0]), 300),                    # 7 no such target
        (load(0, ports[0], addr=ports[0].depth - 1, words=ports[0].image[:2]), 300),  # 8 range
        *[(load(i, p), 1200) for i, p in enumerate(ports)],   # loads
        (request_frame(Command.SEAL, struct.pack("<I", 0xABCD1234)), 300),
        (infer0, 2500),
        (request_frame(Command.INFER, x[1].tobytes()), 2500),
        (status, 300),
    ]
    res = parse_responses(run_link(top, reqs))
    assert len(res) == len(reqs) - 1  # the garbage got no answer
    codes = [c for c, _ in res]
    n = len(ports)
    assert codes[:9] == [0, 7, 1, 3, 2, 4, 2, 5, 6]
    assert codes[9:9 + n + 1] == [0] * (n + 1)
    st0 = Status.unpack(res[0][1])
    assert len(res[0][1]) == STATUS_BYTES
    assert (st0.version, st0.loaded, st0.needs_load, st0.design_id) == (1, False, True, 0xC0FFEE)
    for k, (code, payload) in enumerate(res[-3:-1]):
        assert code == 0
        y = np.frombuffer(payload[:16], "<i4")
        np.testing.assert_array_equal(y, want[k])
        latency, feed = struct.unpack("<II", payload[16:])
        assert feed == 11  # 12 one-element beats, taken back to back
        assert 50 < latency < 2000
    st = Status.unpack(res[-1][1])
    assert (st.loaded, st.weights_id, st.inferences, st.last_error) == (True, 0xABCD1234, 2, 6)
    assert st.rejected == 8 and st.framing_errors == 0 and st.overruns == 0


def test_partial_load_unseals(design):
    """A load clears 'loaded' until the next seal: a half-loaded core never runs."""
    net, _ = design
    top = LinkTop(net, Folding(input_width=1), divisor=DIV, timeout=TIMEOUT)  # all in BRAM
    p = top.core.load_ports[0]
    assert all(q.has_init for q in top.core.load_ports)
    x = np.zeros(12, np.int8)
    reqs = [(request_frame(Command.LOAD, load_payload(0, 0, [0], p.word_bytes)), 300),
            (request_frame(Command.INFER, x.tobytes()), 300)]
    assert [c for c, _ in parse_responses(run_link(top, reqs))] == [0, 7]


def test_spram_weights_banked_off_the_ice40_load_and_infer(design, monkeypatch):
    """An SPRAM-style weight memory deeper than a bank, elaborated off the iCE40 (as
    Verilator and the demo's simulation do): banked, loaded by the host, == golden."""
    from cosparse.hw import overlay

    net, _ = design
    monkeypatch.setattr(overlay, "WEIGHT_BANK_WORDS", 2)
    top = LinkTop(net, Folding(input_width=1), divisor=DIV, timeout=TIMEOUT, spram_bits=64)
    ports = top.core.load_ports
    spram = [p for p in ports if not p.has_init]
    assert spram and max(p.hw_depth for p in spram) > overlay.WEIGHT_BANK_WORDS
    x = np.random.default_rng(9).integers(-128, 128, (1, 12)).astype(np.int8)
    want = golden.run(net, x)
    reqs = [(request_frame(Command.LOAD, load_payload(i, 0, p.image, p.word_bytes)), 1200)
            for i, p in enumerate(ports)]
    reqs += [(request_frame(Command.SEAL, struct.pack("<I", 1)), 300),
             (request_frame(Command.INFER, x[0].tobytes()), 2500)]
    res = parse_responses(run_link(top, reqs))
    assert [c for c, _ in res] == [0] * len(reqs)
    np.testing.assert_array_equal(np.frombuffer(res[-1][1][:16], "<i4"), want[0])
