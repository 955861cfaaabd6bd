"""A whole convolution layer from the units: dense map -> zero-skip -> window -> engine -> requant.

The chain the compiler builds for a first conv layer (dense input), checked against the golden
model's OverlayConv with requantization, under random stalls, in Amaranth and in Verilator.
"""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from cosparse.compiler import ir, zoo
from cosparse.compiler.packer import drain_order, engine_parameters, pack
from cosparse.hw.adapters import ZeroSkip
from cosparse.hw.overlay import OverlayEngine
from cosparse.hw.requant import Requantizer
from cosparse.hw.streams import dense_beats, dense_layout
from cosparse.hw.window import SparseWindow
from cosparse.sim import golden
from cosparse.sim.streamsim import Port, simulate
from cosparse.sim.verilate import run_streams


class ConvChain(wiring.Component):
    """ZeroSkip -> SparseWindow -> OverlayEngine -> Requantizer for one conv layer."""

    def __init__(self, layer: ir.OverlayConv, height: int, width: int, channels: int, *,
                 entries: int, lanes_per_beat: int, in_width: int):
        self.skip = ZeroSkip(channels, width=in_width, entries=entries)
        self.window = SparseWindow(height, width, channels, kernel=layer.kernel, stride=layer.stride,
                                   padding=layer.padding, entries=entries)
        self.engine = OverlayEngine(**engine_parameters(layer.overlays), entries=entries,
                                    lanes_per_beat=lanes_per_beat)
        rq = layer.requant
        self.requant = Requantizer(layer.overlays.num_kernels, width=lanes_per_beat,
                                   acc_bits=self.engine.acc_bits,
                                   multiplier=[int(v) for v in rq.multiplier],
                                   shift=[int(v) for v in rq.shift],
                                   bias=[int(v) for v in layer.bias], relu=rq.relu)
        self.in_layout = dense_layout(in_width)
        self.out_layout = dense_layout(lanes_per_beat)
        super().__init__({"i": In(stream.Signature(self.in_layout)),
                          "o": Out(stream.Signature(self.out_layout))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.skip, m.submodules.window = self.skip, self.window
        m.submodules.engine, m.submodules.requant = self.engine, self.requant
        wiring.connect(m, wiring.flipped(self.i), self.skip.i)
        wiring.connect(m, self.skip.o, self.window.i)
        wiring.connect(m, self.window.o, self.engine.i)
        wiring.connect(m, self.engine.o, self.requant.i)
        wiring.connect(m, self.requant.o, wiring.flipped(self.o))
        return m


def make_layer(rng, c, m, k, kernel, padding, stride=(1, 1)):
    w = zoo.complementary_weights(m, kernel[0] * kernel[1] * c, k, rng)
    ov, perm = drain_order(pack(w, k))  # channel n is the engine's n-th output
    rq = ir.Requant(rng.integers(1 << 14, 1 << 16, m).astype(np.int32),
                    rng.integers(12, 16, m).astype(np.int32), False)
    return ir.OverlayConv("conv", overlays=ov, bias=rng.integers(-3000, 3000, m).astype(np.int32),
                          requant=rq, acc_scale=(1.0,) * m, kernel=kernel, stride=stride,
                          padding=padding)


def frames_and_expected(layer, x, width_in, width_out):
    y = golden.run_layer(layer, x)  # [B, Ho, Wo, M]
    beats_in, want = [], []
    for xi, yi in zip(x, y):
        beats_in += dense_beats([list(map(int, v)) for v in xi.reshape(-1, xi.shape[-1])],
                                width_in)
        want += dense_beats([list(map(int, v)) for v in yi.reshape(-1, yi.shape[-1])], width_out)
    return beats_in, want


@pytest.mark.parametrize("c, m, k, kernel, padding, R, P", [
    (1, 8, 2, (3, 3), (1, 1, 1, 1), 1, 4),
    (3, 12, 3, (3, 3), (0, 0, 0, 0), 2, 2),
])
def test_conv_chain_matches_golden(c, m, k, kernel, padding, R, P):
    rng = np.random.default_rng(c * 7 + m)
    layer = make_layer(rng, c, m, k, kernel, padding)
    h = w = 6
    dut = ConvChain(layer, h, w, c, entries=R, lanes_per_beat=P, in_width=c)
    x = rng.integers(-128, 128, (2, h, w, c)).astype(np.int8)
    x[0, 2:4] = 0  # inactive rows: empty groups
    beats_in, want = frames_and_expected(layer, x, c, P)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=c)
    assert res.outputs[0] == want


def test_conv_chain_in_verilator():
    rng = np.random.default_rng(5)
    layer = make_layer(rng, 1, 8, 2, (5, 5), (0, 0, 0, 0))
    dut = ConvChain(layer, 8, 8, 1, entries=1, lanes_per_beat=4, in_width=1)
    x = rng.integers(-128, 128, (2, 8, 8, 1)).astype(np.int8)
    beats_in, want = frames_and_expected(layer, x, 1, 4)
    res = run_streams(dut, "conv_chain", [("i", dut.in_layout, beats_in)],
                      [("o", dut.out_layout, len(want))], stall=0.3, seed=1)
    assert res.outputs[0] == want
