"""The public Python API: compile, golden, simulate, save, load, as a notebook uses it."""

import numpy as np
import onnx
import pytest

from cosparse.compiler import api, ir
from cosparse.compiler.errors import CosparseError
from cosparse.compiler.zoo import gsc_cs
from cosparse.compiler.order import to_drain_order

from ..helpers import write_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, cal, x = write_tiny(tmp_path_factory.mktemp("tiny"))
    return model, np.load(cal), np.load(x)


def test_compile_a_path_simulate_equals_golden_and_save_load(tiny, tmp_path):
    model, cal, x = tiny
    acc = api.compile(model, board="sim", calibration=cal)
    assert acc.folder.exists() and acc.network.layers and acc.folding is not None
    assert all(layer.name in acc.report for layer in acc.network.layers
               if isinstance(layer, ir.OverlayLayer))
    y = acc.golden(x)
    assert y.shape == (len(x), 4) and y.dtype == np.float32
    raw = acc.golden(x, raw=True)
    assert np.array_equal(acc.dequantize(raw), y)
    sim = acc.simulate(x)
    assert np.array_equal(sim.raw, raw) and np.array_equal(sim.outputs, y)
    assert sim.interval_cycles is not None
    assert abs(sim.interval_cycles - sim.predicted_interval_cycles) <= \
        0.01 * sim.predicted_interval_cycles + 1

    temporary = acc.folder
    saved = acc.save(tmp_path / "saved")
    assert saved == tmp_path / "saved" and acc.folder == saved
    assert not temporary.exists()  # the temporary compile is cleaned up once saved
    again = api.load(saved)
    assert np.array_equal(again.golden(x), y)
    assert again.folding == acc.folding and again.board.name == "sim"


def test_compile_a_model_proto_into_a_folder_equals_the_path(tiny, tmp_path):
    model, cal, x = tiny
    from_path = api.compile(model, board="sim", calibration=cal, outdir=tmp_path / "a")
    from_proto = api.compile(onnx.load(model), board="sim", calibration=cal,
                             outdir=tmp_path / "b")
    assert (tmp_path / "b" / "manifest.json").exists()
    assert np.array_equal(from_path.golden(x), from_proto.golden(x))
    assert from_path.report == from_proto.report


def test_compile_ir_network(tmp_path):
    net = to_drain_order(gsc_cs(seed=3, reduced=True))
    x = np.random.default_rng(0).integers(-128, 128, (3, *net.input.shape)).astype(np.int8)
    acc = api.compile_ir(net, x, board="ulx3s-85f", outdir=tmp_path / "g")
    assert acc.board.name == "ulx3s-85f"
    assert np.array_equal(acc.golden(x, raw=True), api.load(tmp_path / "g").golden(x, raw=True))
    assert acc.predict(x)["interval_cycles"] > 0


def test_errors_are_cosparse_errors(tiny, tmp_path):
    model, cal, _ = tiny
    with pytest.raises(ir.ManifestError, match="no compiled network"):
        api.load(tmp_path / "nothing")
    with pytest.raises(CosparseError, match="mode must be"):
        api.compile(model, board="sim", calibration=cal, mode="sparse")
    acc = api.compile(model, board="sim", calibration=cal)
    with pytest.raises(CosparseError, match="needs a real board"):
        acc.build()
    with pytest.raises(CosparseError, match="load must be"):
        acc.run(np.zeros((1, 16), np.float32), "socket://127.0.0.1:1", load="sometimes")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("mine")
    with pytest.raises(CosparseError, match="is not a cosparse build"):
        acc.save(tmp_path / "other")
    assert (tmp_path / "other" / "file.txt").read_text() == "mine"


def test_boards_lists_the_catalog():
    boards = api.boards()
    assert {"sim", "icebreaker", "ulx3s-85f"} <= set(boards)
    assert boards["ulx3s-85f"].dsps == 156
