"""Shared test helpers: plain functions used by more than one test module."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from cosparse.compiler import ir
from cosparse.compiler.packer import pack
from cosparse.hw.protocol import CRC_FORMAT, HEADER_FORMAT, SYNC_RESPONSE, crc16
from cosparse.hw.requant import Requantizer
from cosparse.hw.streams import dense_beats, sparse_beats
from cosparse.sim import golden
from cosparse.sim.streamsim import Port, SimResult, simulate
from cosparse.sim.verilate import VerilatorResult, run_streams

#: The paper's example: three 3x3 kernels, three non-zeros each (66% sparse),
#: complementary, overlay into one dense 3x3.
PAPER_W = np.zeros((3, 9), dtype=np.int8)
PAPER_W[0, [0, 4, 8]] = [1, 2, 3]
PAPER_W[1, [1, 5, 6]] = [4, 5, 6]
PAPER_W[2, [2, 3, 7]] = [-1, -2, -3]


def run_cli(*args, cwd=None, timeout: float = 900) -> subprocess.CompletedProcess:
    """The installed ``cosparse`` entry point run with ``args`` (text output captured)."""
    exe = shutil.which("cosparse") or pytest.fail("the cosparse entry point is not installed")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def dense_frames(frames, width: int) -> list[dict]:
    """Dense beats of ``width`` lanes of every frame (``[..., C]``), a group per ``C`` vector."""
    beats = []
    for x in frames:
        x = np.asarray(x)
        beats += dense_beats(x.reshape(-1, x.shape[-1]).astype(np.int64).tolist(), width)
    return beats


def nonzero_pairs(vector) -> list[tuple[int, int]]:
    """The (index, value) pairs of the non-zero elements of ``vector``."""
    return [(int(i), int(vector[i])) for i in np.flatnonzero(vector)]


def sparse_frames(frames, entries: int) -> list[dict]:
    """Sparse beats of ``entries`` of every frame (``[..., C]``): each vector's non-zero pairs."""
    beats = []
    for x in frames:
        x = np.asarray(x)
        beats += sparse_beats([nonzero_pairs(g) for g in x.reshape(-1, x.shape[-1])], entries)
    return beats


def simulate_io(dut, beats: list[dict], count: int, **kw) -> SimResult:
    """Amaranth simulation of ``dut``: ``beats`` into stream ``i``, ``count`` beats out of ``o``."""
    return simulate(dut, [Port(dut.i, dut.in_layout, beats)],
                    [Port(dut.o, dut.out_layout, count=count)], **kw)


def verilate_io(dut, name: str, beats: list[dict], count: int, **kw) -> VerilatorResult:
    """Verilator run of ``dut``: ``beats`` into stream ``i``, ``count`` beats out of ``o``."""
    return run_streams(dut, name, [("i", dut.in_layout, beats)], [("o", dut.out_layout, count)],
                       **kw)


def run_sim(dut, testbenches=(), processes=(), background=()) -> None:
    """Run the Amaranth simulator on ``dut`` (1 MHz clock) until its testbenches end."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for bench in testbenches:
        sim.add_testbench(bench)
    for bench in background:
        sim.add_testbench(bench, background=True)
    for proc in processes:
        sim.add_process(proc)
    sim.run()


async def pulse(ctx, signal) -> None:
    """Hold ``signal`` at 1 for one clock cycle (in an Amaranth testbench)."""
    ctx.set(signal, 1)
    await ctx.tick()
    ctx.set(signal, 0)


def requant_constants(rng, channels: int, *, shift_lo: int = 0, shift_hi: int = 24,
                      relu: bool = False) -> tuple:
    """Random requantizer constants of ``channels`` channels: (multiplier, shift, bias, relu)."""
    mult = rng.integers(1, 1 << 16, channels)
    shift = rng.integers(shift_lo, shift_hi + 1, channels)
    bias = rng.integers(-(1 << 20), 1 << 20, channels)
    return mult, shift, bias, relu


def requantizer(channels: int, width: int, acc_bits: int, mult, shift, bias, relu,
                **kw) -> Requantizer:
    """A :class:`Requantizer` of ``width`` lanes over these per-channel constants (``kw``:
    ``lo``, ``hi``, ``rounding``, ...)."""
    return Requantizer(channels, width=width, acc_bits=acc_bits,
                       multiplier=[int(v) for v in mult], shift=[int(v) for v in shift],
                       bias=[int(v) for v in bias], relu=relu, **kw)


def requant_golden(acc, mult, shift, bias, relu, **kw) -> np.ndarray:
    """The golden model's requantization of accumulators ``acc`` (channels last); ``kw``:
    ``lo``, ``hi``, ``rounding``."""
    rq = ir.Requant(np.asarray(mult, np.int32), np.asarray(shift, np.int32), relu, **kw)
    return golden.requantize(acc.astype(np.float64), rq, np.asarray(bias, np.int64))


def random_acc(rng, shape, acc_bits: int) -> np.ndarray:
    """Accumulators spread over every magnitude, including both extremes."""
    mag = rng.integers(0, acc_bits, shape)
    acc = rng.integers(-(1 << 62), 1 << 62, shape) >> (62 - mag)
    acc = np.clip(acc, -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1)
    flat = acc.reshape(-1)
    flat[:4] = [-(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1, 0, -1]
    return acc


def overlay_layer(cls, name: str, w: np.ndarray, k: int | None, rng: np.random.Generator,
                  *, requant: bool = True, relu: bool = False, rq_kw: dict | None = None,
                  **kw) -> ir.Layer:
    """An overlay layer over int8 weights ``w`` with random bias and requant constants
    (``rq_kw``: the requantization's ``lo``, ``hi``, ``rounding``)."""
    m = w.shape[0]
    rq = None
    if requant:
        rq = ir.Requant(rng.integers(1, 1 << 16, m).astype(np.int32),
                        rng.integers(8, 24, m).astype(np.int32), relu, **(rq_kw or {}))
    return cls(name, overlays=pack(w, k), bias=rng.integers(-5000, 5000, m).astype(np.int32),
               requant=rq, acc_scale=tuple([0.01] * m), **kw)


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


def write_tiny(folder: Path, *, negate_w2: bool = False, seed: int = 0) -> tuple[Path, Path, Path]:
    """A tiny ONNX model (Gemm, ReLU, Gemm), small enough for an iCE40 UP5K.

    (model.onnx, calibration.npy, inputs.npy) in ``folder``; ``negate_w2`` gives the
    same model with the last layer's weights negated (same scales: a patchable change)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 16)).astype(np.float32)
    w1[rng.random(w1.shape) < 0.5] = 0
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.5, (4, 8)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 4).astype(np.float32)
    if negate_w2:
        w2 = -w2
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
         numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("tiny_w2.onnx" if negate_w2 else "tiny.onnx")
    onnx.save(model, path)
    np.save(folder / "cal.npy", rng.normal(0, 1, (64, 16)).astype(np.float32))
    np.save(folder / "x.npy", rng.normal(0, 1, (5, 16)).astype(np.float32))
    return path, folder / "cal.npy", folder / "x.npy"


#: The small ONNX test models and their digits data (``scripts/make_test_models.py``).
ONNX_DATA = Path(__file__).resolve().parent / "compiler" / "data"


def compile_tiny(folder: Path, board: str, **options) -> tuple[Path, Path, Path, Path]:
    """:func:`write_tiny` compiled for ``board`` (calibrated on its ``cal.npy``) into
    ``folder / "out"``: (model, calibration, inputs, compiled folder)."""
    from cosparse.compiler.build import compile_model

    model, cal, x = write_tiny(folder)
    out = folder / "out"
    compile_model(model, board=board, outdir=out, calibration=np.load(cal),
                  progress=lambda s: None, **options)
    return model, cal, x, out


def digits(model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibration, test inputs, labels) of the 8x8 digits in ``model``'s input layout.

    Models whose name starts with ``mlp`` (or ``bv_mlp``, the Brevitas ones) take
    flat vectors, the others ``[N, 1, 8, 8]`` maps.
    """
    d = np.load(ONNX_DATA / "digits.npz")
    cal, x = d["calib"], d["x"]
    if model.startswith(("mlp", "bv_mlp")):
        cal, x = cal.reshape(len(cal), -1), x.reshape(len(x), -1)
    return cal, x, d["y"]


def quantize_qdq(src: Path, dst: Path, cal: np.ndarray, *, symmetric: bool = True) -> Path:
    """ONNX Runtime's static QDQ quantization of ``src`` into ``dst``, calibrated on ``cal``.

    int8 symmetric activations and per-channel int8 symmetric weights; with
    ``symmetric=False``, ONNX Runtime's default activations (uint8, zero points).
    """
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": cal[i:i + 32]} for i in range(0, len(cal), 32)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
    return dst


def rescaled_kwta_model(path, rng) -> None:
    """x -> QDQ -> Gemm -> QDQ(s1) -> k-WTA (threshold, mask Mul) -> QDQ(s2 != s1) -> Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    n_in, n_hid, k = 12, 24, 6
    z = "zp"

    def qdq(t, scale):
        return [helper.make_node("QuantizeLinear", [t, scale, z], [t + "_q"]),
                helper.make_node("DequantizeLinear", [t + "_q", scale, z], [t + "_d"])]
    w1 = rng.integers(-127, 128, (n_hid, n_in)).astype(np.int8)  # int8 weights, scale 0.004
    w2 = rng.integers(-127, 128, (3, n_hid)).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["w1q", "sw", z], ["w1"]),
             helper.make_node("DequantizeLinear", ["w2q", "sw", z], ["w2"]), *qdq("x", "sx"),
             helper.make_node("Gemm", ["x_d", "w1", "b1"], ["h"], transB=1), *qdq("h", "s1"),
             helper.make_node("TopK", ["h_d", "k"], ["v", "i"], axis=1),
             helper.make_node("Slice", ["v", "km1", "k", "one"], ["thr"]),
             helper.make_node("GreaterOrEqual", ["h_d", "thr"], ["m"]),
             helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["h_d", "mf"], ["y1"]), *qdq("y1", "s2"),
             helper.make_node("Gemm", ["y1_d", "w2", "b2"], ["y"], transB=1)]
    inits = {"sx": np.float32(1 / 127), "s1": np.float32(0.05), "s2": np.float32(0.037),
             "zp": np.int8(0), "w1q": w1, "w2q": w2, "sw": np.float32(0.004),
             "b1": np.zeros(n_hid, np.float32), "b2": np.zeros(3, np.float32),
             "k": np.array([k], np.int64), "km1": np.array([k - 1], np.int64),
             "one": np.array([1], np.int64)}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(np.asarray(v), name) for name, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def load_script(name: str):
    """``scripts/<name>.py`` as a module (the scripts are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
