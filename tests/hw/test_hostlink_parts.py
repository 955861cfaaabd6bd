"""The host link's parts alone, in the Amaranth simulator, with random stalls.

Each part is driven through its own signature: the framer with bytes (and
slow request acceptance), the load check with payload bytes, the inference
runner with a stalling core, the executor with requests against a payload
buffer, the responder with responses whose frames must equal the protocol
module's. Also: the gateware CRC and tables equal the protocol's.
"""

import random

import pytest
from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory

from cosparse.hw import protocol
from cosparse.hw.hostlink_executor import Executor, InferRunner
from cosparse.hw.hostlink_parts import (CRC16, Body, Code, Command, Framer, LoadCheck, Responder,
                                        StatusLayout)
from cosparse.hw.protocol import Command as Cmd
from cosparse.hw.protocol import Status, crc16, load_payload, request_frame, response_frame
from cosparse.hw.streams import dense_layout

from ..helpers import parse_responses, pulse, run_sim


async def send_byte(ctx, stream, byte, rng):
    """Offer ``byte`` on ``stream`` until it is taken, then idle a random while."""
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, byte)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)
    gap = rng.randrange(0, 3)
    if gap:
        await ctx.tick().repeat(gap)


async def request_within(ctx, dut, cycles: int = 5_000):
    """Wait for the framer's request, failing after ``cycles`` (a misframed byte
    stream would otherwise wait forever)."""
    for _ in range(cycles):
        if ctx.get(dut.req.valid):
            return
        await ctx.tick()
    raise AssertionError(f"no request within {cycles} cycles")


def test_crc_and_tables_equal_the_protocol():
    algo = CRC16.algorithm
    assert (algo.crc_width, algo.polynomial, algo.initial_crc) == (
        protocol.CRC16_WIDTH, protocol.CRC16_POLYNOMIAL, protocol.CRC16_INITIAL)
    assert not algo.reflect_input and not algo.reflect_output and algo.xor_output == 0
    assert {m.name: m.value for m in Code} == {m.name: m.value for m in protocol.Code}
    assert {m.name: m.value for m in Command if m.name != "NONE"} == {
        m.name: m.value for m in protocol.Command}
    assert Command.NONE.value == 0 and 0 not in set(protocol.Command)
    st = Status(1, True, True, 5, 0xC0FFEE, 0x12345678, 65535, 255, 3, 4)
    fields = {"version": 1, "flags": {"loaded": 1, "needs_load": 1}, "last_error": 5,
              "design_id": 0xC0FFEE, "weights_id": 0x12345678, "inferences": 65535,
              "rejected": 255, "framing_errors": 3, "overruns": 4}
    bits = StatusLayout.const(fields).as_bits()
    assert bits.to_bytes(protocol.STATUS_BYTES, "little") == st.pack()
    assert StatusLayout.from_bits(bits).design_id == 0xC0FFEE

    proc = CRC16.create()
    rng = random.Random(3)
    data = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))) for _ in range(20)]
    got = []

    async def bench(ctx):
        for d in data:
            await pulse(ctx, proc.start)
            for b in d:
                ctx.set(proc.data, b)
                ctx.set(proc.valid, rng.random() < 0.7)
                while not ctx.get(proc.valid):  # a stall: nothing taken
                    await ctx.tick()
                    ctx.set(proc.valid, rng.random() < 0.7)
                await ctx.tick()
            ctx.set(proc.valid, 0)
            got.append(ctx.get(proc.crc))

    run_sim(proc, [bench])
    assert got == [crc16(d) for d in data]


def test_framer_requests_and_payload():
    W, MAXP, TIMEOUT = 3, 20, 30
    dut = Framer(buf_width=W, max_payload=MAXP, timeout=TIMEOUT)
    rng = random.Random(5)
    good = request_frame(Cmd.LOAD, bytes(range(1, 8)))
    bad = bytearray(request_frame(Cmd.SEAL, b"\x01\x02\x03\x04"))
    bad[5] ^= 0x40
    frames = [(b"\x00\x13\xff", 0), (request_frame(Cmd.STATUS), 0), (good, 0), (bytes(bad), 0),
              (request_frame(Cmd.INFER, bytes(MAXP + 5)), 0),
              (request_frame(Cmd.INFER, bytes(8))[:6], 2 * TIMEOUT),
              (request_frame(0x7E, b"\xAA\xBB"), 0)]
    want = [(Cmd.STATUS, 0, Code.OK), (Cmd.LOAD, 7, Code.OK), (Cmd.SEAL, 4, Code.CRC),
            (Cmd.INFER, MAXP + 5, Code.LENGTH), (Cmd.INFER, 8, Code.TRUNCATED),
            (0x7E, 2, Code.OK)]
    mem, got, payloads, starts, overlap = {}, [], [], [], []

    async def host(ctx):
        for data, wait in frames:
            for b in data:
                await send_byte(ctx, dut.rx, b, rng)
            if wait:
                await ctx.tick().repeat(wait)

    async def sink(ctx):
        for _ in want:
            await ctx.tick().until(dut.req.valid)
            req = dut.req.payload
            n = ctx.get(req.length)
            got.append((ctx.get(req.cmd.as_value()), n, ctx.get(req.error)))
            payloads.append(bytes(mem.get(i, 0) for i in range(min(n, MAXP))))
            await ctx.tick().repeat(rng.randrange(1, 6))
            ctx.set(dut.req.ready, 1)
            await ctx.tick()
            ctx.set(dut.req.ready, 0)

    async def monitor(ctx):
        async for _, _, en, addr, data, start, pv, pb, rv, rr in ctx.tick().sample(
                dut.buf.en, dut.buf.addr, dut.buf.data, dut.start, dut.payload.valid,
                dut.payload.payload, dut.req.valid, dut.rx.ready):
            for lane in range(W):
                if en >> lane & 1:
                    mem[addr * W + lane] = data >> (8 * lane) & 0xFF
            starts.append(start)
            overlap.append(rv and rr)

    run_sim(dut, [host, sink], [monitor])
    assert got == [(int(c), n, e) for c, n, e in want]
    assert payloads[1] == bytes(range(1, 8)) and payloads[5] == b"\xAA\xBB"
    assert sum(starts) == len(want) and not any(overlap)  # no byte taken while a request waits


def test_framer_length_limits():
    """Lengths around the payload limit (300: its high byte 1) and the byte boundaries:
    longer than the limit is LENGTH, the rest whole, each length as sent."""
    MAXP = 300
    lengths = [0, 1, 2, 44, 45, 255, 256, 299, 300, 301, 511, 512, 556]
    dut = Framer(buf_width=2, max_payload=MAXP, timeout=1000)
    got = []

    async def host(ctx):
        for n in lengths:
            for b in request_frame(Cmd.LOAD, bytes(i % 251 for i in range(n))):
                ctx.set(dut.rx.valid, 1)
                ctx.set(dut.rx.payload, b)
                await ctx.tick().until(dut.rx.ready)
            ctx.set(dut.rx.valid, 0)

    async def sink(ctx):
        for _ in lengths:
            await request_within(ctx, dut)
            got.append((ctx.get(dut.req.payload.length), ctx.get(dut.req.payload.error)))
            ctx.set(dut.req.ready, 1)
            await ctx.tick()
            ctx.set(dut.req.ready, 0)

    run_sim(dut, [host, sink])
    assert got == [(n, Code.LENGTH if n > MAXP else Code.OK) for n in lengths]


@pytest.mark.parametrize("where", [1, 3, 5, 6])  # after the sync, in header, payload, CRC
def test_framer_timeout_is_exact(where):
    """A frame whose bytes are at most ``timeout`` idle cycles apart is whole; one idle
    cycle more, anywhere in the frame, truncates it."""
    TIMEOUT = 23
    frame = request_frame(Cmd.LOAD, b"\x05")  # sync, 3 header bytes, 1 payload, 2 CRC
    got = []
    for gap in (TIMEOUT, TIMEOUT + 1):
        dut = Framer(buf_width=2, max_payload=8, timeout=TIMEOUT)

        async def host(ctx):
            for i, b in enumerate(frame):
                if i == where:
                    await ctx.tick().repeat(gap)
                ctx.set(dut.rx.valid, 1)
                ctx.set(dut.rx.payload, b)
                await ctx.tick().until(dut.rx.ready)
                ctx.set(dut.rx.valid, 0)

        async def sink(ctx):  # (accepting the request lets the framer drop the rest)
            await request_within(ctx, dut, 200)
            got.append(ctx.get(dut.req.payload.error))
            ctx.set(dut.req.ready, 1)

        run_sim(dut, [host, sink])
    assert got == [Code.OK, Code.TRUNCATED]


@pytest.mark.parametrize("payload, verdict", [
    (load_payload(0, 3, [1, 2, 3], 2), (0, 3, 0, 0)),
    (load_payload(0, 8, [1, 2, 3], 2), (0, 8, 0, 1)),           # past the end
    (load_payload(0, 0, [1], 2) + b"\x05", (0, 0, 0, 1)),       # not whole words
    (load_payload(1, 0, range(7), 1), (1, 0, 0, 0)),            # exactly to the end
    (load_payload(1, 1, range(7), 1), (1, 1, 0, 1)),
    (load_payload(1, 1 << 16, [1], 1), (1, 0, 0, 1)),           # beyond 16 bits
    (load_payload(2, 0, [1], 1), (2, 0, 1, None)),              # no such target
])
def test_load_check(payload, verdict):
    dut = LoadCheck(word_bytes=[2, 1], depths=[10, 7])
    rng = random.Random(len(payload))
    got = []

    async def bench(ctx):
        for junk in (b"\x01\x02\x03\x04\x05\x06\x07", payload):  # a frame before resets nothing wrong
            await pulse(ctx, dut.start)
            for b in junk:
                ctx.set(dut.payload.payload, b)
                ctx.set(dut.payload.valid, 1)
                await ctx.tick()
                ctx.set(dut.payload.valid, 0)
                if rng.random() < 0.5:
                    await ctx.tick().repeat(rng.randrange(1, 4))
        await ctx.tick().repeat(2)
        v = ctx.get(dut.verdict)
        got.extend([v.target, v.address, v.bad_target, v.bad_range])

    run_sim(dut, [bench])
    assert [g for g, w in zip(got, verdict) if w is not None] == [w for w in verdict if w is not None]


def _with_memory(dut, port, shape, depth, init=(), write=False):
    """``dut`` in a module with a memory behind its ``port`` (a read port, or a write port)."""
    m = Module()
    m.submodules.dut = dut
    m.submodules.mem = mem = Memory(shape=shape, depth=depth, init=list(init))
    wiring.connect(m, port, mem.write_port() if write else mem.read_port())
    return m, mem


def test_infer_runner_feeds_and_collects():
    words = [0x0201, 0x0403, 0x0605, 0x0807]
    out_layout = dense_layout(2, signed(32))
    dut = InferRunner(in_width=2, in_beats=4, group_beats=2, out_beats=3, out_layout=out_layout,
                      out_beat_bytes=8, buf_depth=5)
    m, _ = _with_memory(dut, dut.buf, unsigned(16), 5, words)
    rng = random.Random(7)
    beats, outs, written, taken, trailer = [], [rng.getrandbits(64) for _ in range(3)], {}, [], []

    async def bench(ctx):
        await pulse(ctx, dut.start)
        ctx.set(dut.run, 1)
        await ctx.tick().until(dut.done)
        ctx.set(dut.run, 0)
        trailer.extend([ctx.get(dut.trailer.latency), ctx.get(dut.trailer.feed)])

    async def core(ctx):
        cycle, out_i = 0, 0
        async for _, _, iv, ir, data, last, end, ov, orr, en, addr, wdata in ctx.tick().sample(
                dut.core_i.valid, dut.core_i.ready, dut.core_i.payload.data.as_value(),
                dut.core_i.payload.last, dut.core_i.payload.end, dut.core_o.valid,
                dut.core_o.ready, dut.out_buf.en, dut.out_buf.addr, dut.out_buf.data):
            cycle += 1
            if iv and ir:
                beats.append((data, last, end))
                taken.append(cycle)
            if en:
                written[addr] = wdata
            if ov and orr:
                out_i += 1
                taken.append(cycle)
            ctx.set(dut.core_i.ready, rng.random() < 0.5)
            fed = beats and beats[-1][2]
            if fed and out_i < 3 and rng.random() < 0.5:
                ctx.set(dut.core_o.valid, 1)
                ctx.set(dut.core_o.payload.as_value(), outs[out_i])
            else:
                ctx.set(dut.core_o.valid, 0)

    run_sim(m, [bench], [core])
    assert beats == [(words[0], 0, 0), (words[1], 1, 0), (words[2], 0, 0), (words[3], 1, 1)]
    assert written == dict(enumerate(outs))
    ins, outs_at = taken[:4], taken[4:]
    assert trailer == [outs_at[-1] - ins[0], ins[-1] - ins[0]]


def test_executor_commands():
    W = 2
    dut = Executor(in_width=W, in_beats=2, group_beats=1, out_beats=2,
                   out_layout=dense_layout(1, signed(8)), out_beat_bytes=1, max_payload=12,
                   word_bytes=[2, 1], hw_depths=[10, 7], design_id=0x42, needs_load=True)
    m = Module()
    m.submodules.dut = dut
    m.submodules.buf = buf = Memory(shape=unsigned(8 * W), depth=6, init=[])
    m.submodules.out = out = Memory(shape=unsigned(8), depth=2, init=[])
    wiring.connect(m, dut.buf, buf.read_port())
    wiring.connect(m, dut.out_buf, out.write_port())
    wp = buf.write_port()
    rng = random.Random(11)
    P = protocol.Command
    load = load_payload(0, 2, [0x0102, 0x0304], 2)
    # (cmd, payload, framing error, verdict (bad_target, bad_range)) -> (code, body)
    reqs = [(P.STATUS, b"", Code.OK, (0, 0)), (P.INFER, b"\x01\x02\x03\x04", Code.OK, (0, 0)),
            (P.SEAL, b"\x00" * 4, Code.CRC, (0, 0)), (0x7E, b"", Code.OK, (0, 0)),
            (P.LOAD, load[:3], Code.OK, (0, 0)), (P.LOAD, load, Code.OK, (1, 1)),
            (P.LOAD, load, Code.OK, (0, 1)), (P.LOAD, load, Code.OK, (0, 0)),
            (P.SEAL, b"\xEF\xBE\xAD\xDE", Code.OK, (0, 0)),
            (P.INFER, b"\x01\x02\x03\x04", Code.OK, (0, 0)), (P.STATUS, b"", Code.OK, (0, 0))]
    want = [(Code.OK, "STATUS"), (Code.NOT_LOADED, "NONE"), (Code.CRC, "NONE"),
            (Code.UNKNOWN_COMMAND, "NONE"), (Code.LENGTH, "NONE"), (Code.UNKNOWN_TARGET, "NONE"),
            (Code.RANGE, "NONE"), (Code.OK, "NONE"), (Code.OK, "NONE"), (Code.OK, "OUTPUT"),
            (Code.OK, "STATUS")]
    got, writes, fed, status = [], [], [], []

    async def bench(ctx):
        for cmd, payload, error, (bad_t, bad_r) in reqs:
            padded = payload + bytes(-len(payload) % W)
            for a in range(len(padded) // W):
                ctx.set(wp.addr, a)
                ctx.set(wp.data, int.from_bytes(padded[a * W:a * W + W], "little"))
                ctx.set(wp.en, 1)
                await ctx.tick()
            ctx.set(wp.en, 0)
            ctx.set(dut.load, {"target": payload[0] if payload else 0, "address": 2,
                               "bad_target": bad_t, "bad_range": bad_r})
            ctx.set(dut.req.payload.cmd.as_value(), int(cmd))
            ctx.set(dut.req.payload.length, len(payload))
            ctx.set(dut.req.payload.error, error)
            ctx.set(dut.req.valid, 1)
            await ctx.tick().until(dut.resp.valid)
            resp = dut.resp.payload
            got.append((ctx.get(resp.code), ctx.get(resp.body).name))
            await ctx.tick().repeat(rng.randrange(1, 5))
            ctx.set(dut.resp.ready, 1)
            assert ctx.get(dut.req.ready)  # the request is accepted with its response
            await ctx.tick()
            ctx.set(dut.resp.ready, 0)
            ctx.set(dut.req.valid, 0)
            status.append(ctx.get(dut.status))

    async def world(ctx):
        out_sent = 0
        async for _, _, w_en, w_t, w_a, w_d, iv, ir, iend, ov in ctx.tick().sample(
                dut.write.en, dut.write.target, dut.write.addr, dut.write.data,
                dut.core_i.valid, dut.core_i.ready, dut.core_i.payload.end, dut.core_o.valid):
            if w_en:
                writes.append((w_t, w_a, w_d))
            if iv and ir:
                fed.append(1)
                out_sent = 0 if iend else out_sent
            if ov:
                out_sent += 1
            ctx.set(dut.core_i.ready, rng.random() < 0.5)
            ctx.set(dut.core_o.valid, len(fed) == 2 and out_sent < 2 and rng.random() < 0.5)

    run_sim(m, [bench], [world])
    assert got == want
    assert writes == [(0, 2, 0x0102), (0, 3, 0x0304)]
    first, last = status[0], status[-1]
    assert (first.flags.loaded, first.flags.needs_load, first.design_id) == (0, 1, 0x42)
    assert (last.flags.loaded, last.weights_id, last.inferences, last.rejected,
            last.last_error) == (1, 0xDEADBEEF, 1, 6, protocol.Code.RANGE)


def test_responder_frames():
    beats = [0x0201, 0x0403, 0x0605]
    dut = Responder(out_beats=3, out_beat_bytes=2)
    m, _ = _with_memory(dut, dut.out_buf, unsigned(16), 3, beats)
    st = Status(1, False, True, 3, 0xC0FFEE, 7, 2, 1, 0, 9)
    fields = {"version": 1, "flags": {"needs_load": 1}, "last_error": 3, "design_id": 0xC0FFEE,
              "weights_id": 7, "inferences": 2, "rejected": 1, "overruns": 9}
    rng = random.Random(13)
    sent = bytearray()
    resps = [(Code.OK, "STATUS"), (Code.CRC, "NONE"), (Code.OK, "OUTPUT")]

    async def bench(ctx):
        ctx.set(dut.status, StatusLayout.const(fields))
        ctx.set(dut.trailer, {"latency": 0x11223344, "feed": 0x55})
        for code, body in resps:
            ctx.set(dut.resp.payload, {"code": code, "body": getattr(Body, body)})
            ctx.set(dut.resp.valid, 1)
            await ctx.tick().until(dut.resp.ready)
            ctx.set(dut.resp.valid, 0)
            await ctx.tick().repeat(rng.randrange(1, 4))

    async def line(ctx):
        async for _, _, v, r, b in ctx.tick().sample(dut.tx.valid, dut.tx.ready, dut.tx.payload):
            if v and r:
                sent.append(b)
            ctx.set(dut.tx.ready, rng.random() < 0.4)

    run_sim(m, [bench], [line])
    output = b"".join(b.to_bytes(2, "little") for b in beats)
    trailer = (0x11223344).to_bytes(4, "little") + (0x55).to_bytes(4, "little")
    assert bytes(sent) == (response_frame(0, st.pack()) + response_frame(1)
                           + response_frame(0, output + trailer))
    assert [c for c, _ in parse_responses(bytes(sent))] == [0, 1, 0]
