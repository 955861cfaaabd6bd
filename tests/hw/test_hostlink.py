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
from amaranth.hdl import ResetInserter, Signal

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

    run_sim(top, [host], background=[tx_line(top, out)])
    return bytes(out)


def tx_line(top: LinkTop, out: bytearray):
    """A testbench decoding the bytes ``top`` sends on ``tx`` into ``out``."""

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

    return line


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


def run_link_with_reset(top: LinkTop, requests: list[tuple[bytes, int]], reset_at: int,
                        when) -> bytes:
    """As :func:`run_link`, with the reset button pressed (two cycles) during request
    ``reset_at``: ``when(ctx)`` cycles after its last byte, once it holds."""
    out = bytearray()
    rst = Signal()
    dut = ResetInserter({"sync": rst})(top)
    pressed = []

    async def host(ctx):
        for k, (data, wait) in enumerate(requests):
            for b in data:
                for v in uart_bits(b):
                    ctx.set(top.rx, v)
                    await ctx.tick().repeat(DIV)
            if k == reset_at:
                for _ in range(20 * DIV * wait):
                    if when(ctx):
                        break
                    await ctx.tick()
                else:
                    raise AssertionError("the moment to reset never came")
                ctx.set(rst, 1)
                await ctx.tick().repeat(2)
                ctx.set(rst, 0)
                pressed.append(len(out))
            await ctx.tick().repeat(DIV * wait)

    run_sim(dut, [host], background=[tx_line(top, out)])
    assert pressed, "the reset was not pressed"
    return bytes(out)


def test_reset_during_a_weight_load_leaves_the_weights_unsealed(design):
    """A reset in the middle of a LOAD's writes: the words already written stay, so the
    device must not run on them. STATUS says 'reset' and 'not loaded', INFER is refused
    until the host loads and seals again; then the answer is the golden model's."""
    net, _ = design
    top = LinkTop(net, Folding(input_width=1), divisor=DIV, timeout=TIMEOUT)  # all in BRAM
    ports = top.core.load_ports
    p = max(ports, key=lambda q: q.depth)
    assert all(q.has_init for q in ports) and p.depth >= 4
    x = np.random.default_rng(11).integers(-128, 128, 12).astype(np.int8)
    want = golden.run(net, x[None])[0]
    status, infer = request_frame(Command.STATUS), request_frame(Command.INFER, x.tobytes())
    zeros = request_frame(Command.LOAD, load_payload(ports.index(p), 0, [0] * p.depth,
                                                     p.word_bytes))
    reqs = [(status, 300), (status, 300),
            (zeros, 1200),                                      # 2: reset amid its writes
            (status, 300), (infer, 300),
            *[(request_frame(Command.LOAD, load_payload(i, 0, q.image, q.word_bytes)), 1200)
              for i, q in enumerate(ports)],
            (request_frame(Command.SEAL, struct.pack("<I", 0x5EA1)), 300),
            (infer, 2500), (status, 300)]
    writes = []

    def second_write(ctx) -> bool:  # a word of the LOAD has been written, more to come
        if ctx.get(top.link.load.en):
            writes.append(1)
        return len(writes) >= 2

    res = parse_responses(run_link_with_reset(top, reqs, 2, second_write))
    assert len(res) == len(reqs) - 1  # the interrupted LOAD got no answer
    codes = [c for c, _ in res]
    n = len(ports)
    assert codes == [0, 0, 0, 7] + [0] * n + [0, 0, 0]
    first, second, after = (Status.unpack(res[k][1]) for k in (0, 1, 2))
    assert first.reset and first.loaded  # configured: the bitstream's weights
    assert not second.reset  # a STATUS answer clears the flag
    assert after.reset and not after.loaded and after.inferences == 0
    np.testing.assert_array_equal(np.frombuffer(res[-2][1][:16], "<i4"), want)
    last = Status.unpack(res[-1][1])
    assert last.loaded and not last.reset and last.weights_id == 0x5EA1


def test_reset_during_an_inference_keeps_the_sealed_weights(design):
    """A reset while the core computes: no answer; the weights (SPRAM-style, loaded by the
    host) stay sealed with their id, and the host's retry is answered correctly."""
    net, _ = design
    top = LinkTop(net, Folding(input_width=1), divisor=DIV, timeout=TIMEOUT, spram_bits=64)
    ports = top.core.load_ports
    assert any(not q.has_init for q in ports)
    x = np.random.default_rng(12).integers(-128, 128, 12).astype(np.int8)
    want = golden.run(net, x[None])[0]
    status, infer = request_frame(Command.STATUS), request_frame(Command.INFER, x.tobytes())
    reqs = [*[(request_frame(Command.LOAD, load_payload(i, 0, q.image, q.word_bytes)), 1200)
              for i, q in enumerate(ports)],
            (request_frame(Command.SEAL, struct.pack("<I", 0xBEEF)), 300),
            (status, 300), (status, 300),  # the first says 'reset' (configured)
            (infer, 2500),                                      # reset while it runs
            (status, 300), (infer, 2500)]
    k_infer = len(ports) + 3
    res = parse_responses(run_link_with_reset(top, reqs, k_infer,
                                              lambda ctx: ctx.get(top.link.leds[1])))
    assert [c for c, _ in res] == [0] * (len(reqs) - 1)
    before, after = Status.unpack(res[k_infer - 1][1]), Status.unpack(res[k_infer][1])
    assert before.loaded and not before.reset and before.weights_id == 0xBEEF
    assert after.reset and after.loaded and after.weights_id == 0xBEEF
    assert after.inferences == 0 and after.last_error == 0
    np.testing.assert_array_equal(np.frombuffer(res[-1][1][:16], "<i4"), want)
