import json

import numpy as np
import pytest

from cosparse.compiler import ir, zoo
from cosparse.compiler.ir import ManifestError
from cosparse.sim import golden


@pytest.fixture(scope="module")
def small_net():
    return zoo.gsc_cs(seed=3, reduced=True)


def test_roundtrip_keeps_every_field(tmp_path, small_net):
    ir.save(small_net, tmp_path)
    back = ir.load(tmp_path)
    assert back.name == small_net.name and back.meta == small_net.meta
    assert [type(l) for l in back.layers] == [type(l) for l in small_net.layers]
    for a, b in zip(small_net.layers, back.layers):
        assert a.name == b.name
        if isinstance(a, (ir.OverlayLinear, ir.OverlayConv)):
            for f in ("weights", "kernel_ids", "row_start", "kernel_map"):
                assert np.array_equal(getattr(a.overlays, f), getattr(b.overlays, f))
            assert np.array_equal(a.bias, b.bias)
            assert (a.requant is None) == (b.requant is None)
            if a.requant is not None:
                assert np.array_equal(a.requant.multiplier, b.requant.multiplier)
                assert np.array_equal(a.requant.shift, b.requant.shift)
        if isinstance(a, ir.LocalKWTA):
            assert a.k == b.k
    x = np.random.default_rng(0).integers(-128, 128, (8, *small_net.input.shape)).astype(np.int8)
    assert np.array_equal(golden.run(small_net, x), golden.run(back, x))
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert doc["format_version"] == ir.FORMAT_VERSION
    assert doc["layers"][1]["overlays"]["fill"] == 1.0


def test_threshold_tie_rule_roundtrips(tmp_path):
    net = zoo.gsc_cs(seed=3, reduced=True)
    kw = next(l for l in net.layers if isinstance(l, ir.LocalKWTA))
    kw.max_winners = min(kw.k * 2, 16)
    ir.save(net, tmp_path)
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert _layer(doc, kw.name)["tie_rule"] == "threshold"
    back = next(l for l in ir.load(tmp_path).layers if l.name == kw.name)
    assert back.max_winners == kw.max_winners and back.winners == kw.max_winners
    assert back.tie_rule == "threshold"
    kw.rescale, kw.out_scale = (40000, 17), 0.25
    ir.save(net, tmp_path)
    back = next(l for l in ir.load(tmp_path).layers if l.name == kw.name)
    assert back.rescale == (40000, 17) and back.out_scale == 0.25


def test_rescale_roundtrips_and_is_checked(tmp_path):
    net = zoo.gsc_cs(seed=3, reduced=True)
    conv = next(l for l in net.layers if isinstance(l, ir.OverlayConv))
    m = conv.overlays.num_kernels
    mult = (np.arange(m, dtype=np.int32) + 1) * np.where(np.arange(m) % 2, -1, 1) << 16
    conv.rescale = ir.Rescale(mult, np.full(m, 24, np.int32),
                              np.arange(m, dtype=np.int64) << 30, True, lo=0, hi=100)
    assert not conv.rescale.monotone and net.specs()[net.layers.index(conv) + 1].bounds == (0, 100)
    ir.save(net, tmp_path)
    back = next(l for l in ir.load(tmp_path).layers if l.name == conv.name)
    for f in ("multiplier", "shift", "offset"):
        assert np.array_equal(getattr(back.rescale, f), getattr(conv.rescale, f))
    assert back.rescale.bounds == (0, 100) and back.rescale.relu
    x = np.random.default_rng(1).integers(-128, 128, (4, *net.input.shape)).astype(np.int8)
    assert np.array_equal(golden.run(net, x), golden.run(ir.load(tmp_path), x))
    for change, match in (
            (lambda r: r.update(offset=[1 << 50] * m), r"conv1\).rescale.offset: values must "
                                                       r"lie in"),
            (lambda r: r.update(multiplier=[0] * m), r"conv1\).rescale.multiplier"),
            (lambda r: r.update(shift=[0] * (m - 1)), r"conv1\).rescale.shift")):
        _edit(tmp_path, net, lambda d: change(_layer(d, conv.name)["rescale"]))
        with pytest.raises(ManifestError, match=match):
            ir.load(tmp_path)


def test_channel_major_tie_order_roundtrips_and_is_checked(tmp_path):
    net = zoo.random_network((6, 6, 3), [("conv", 8, (3, 3), 2), ("relu",), ("global", 5, 3),
                                         ("flatten",), ("linear", 16, 4), ("global", 4)], seed=1)
    maps = [l for l in net.layers if isinstance(l, ir.GlobalKWTA)]
    x = np.random.default_rng(2).integers(-2, 3, (16, *net.input.shape)).astype(np.int8)
    stream = golden.run(net, x)
    maps[0].tie_order = "channel-major"
    chw = golden.run(net, x)
    assert not np.array_equal(stream, chw)  # the order decides ties among small values
    ir.save(net, tmp_path)
    back = ir.load(tmp_path)
    assert [l.tie_order for l in back.layers if isinstance(l, ir.GlobalKWTA)] == [
        "channel-major", "stream"]
    assert np.array_equal(golden.run(back, x), chw)
    maps[1].tie_order = "channel-major"  # over a vector: refused
    with pytest.raises(ManifestError, match="tie_order"):
        net.specs()


def test_specs_chain_shapes(small_net):
    specs = small_net.specs()
    assert specs[0].shape == (20, 20, 1)
    assert specs[-1].shape == (12,) and specs[-1].dtype == "int32"
    assert small_net.formats()[:3] == ["dense", "sparse", "dense"]


def _edit(tmp_path, net, change):
    ir.save(net, tmp_path)
    path = tmp_path / "manifest.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return tmp_path


def _layer(doc, name):
    return next(l for l in doc["layers"] if l["name"] == name)


@pytest.mark.parametrize("change, match", [
    (lambda d: d.update(format_version=99), r"format_version.*version 99"),
    (lambda d: d.pop("layers"), r"layers: missing"),
    (lambda d: d.update(layers="conv"), r"layers: expected a list"),
    (lambda d: d["input"].update(shape=[20, 20]), r"input.shape"),
    (lambda d: d["input"].update(scale=-1.0), r"input.scale"),
    (lambda d: _layer(d, "kwta1").update(k=17), r"kwta1.*k: expected an integer from 1 to 16"),
    (lambda d: _layer(d, "kwta1").update(k=True), r"k: expected an integer"),
    (lambda d: _layer(d, "kwta1").update(tie_rule="random"), r"tie_rule"),
    (lambda d: _layer(d, "kwta1").update(tie_rule="threshold"), r"kwta1.*max_winners"),
    (lambda d: _layer(d, "kwta1").update(max_winners=8), r"max_winners"),
    (lambda d: _layer(d, "kwta1").update(tie_rule="threshold", max_winners=17),
     r"kwta1.*max_winners: expected an integer from k=\d+ to 16"),
    (lambda d: _layer(d, "kwta1").update(boost=[0] * 16), r"boost: values must lie in 1\.\.65535"),
    (lambda d: _layer(d, "conv1").update(kind="conv3d"), r"unknown layer kind 'conv3d'"),
    (lambda d: _layer(d, "conv1").update(bias=[0] * 15), r"conv1.*bias: expected 16 integers"),
    (lambda d: _layer(d, "conv1")["requant"].update(shift=[70] * 16), r"shift: values must lie in 0\.\.62"),
    (lambda d: _layer(d, "conv1")["requant"].update(multiplier=[0] * 16), r"multiplier"),
    (lambda d: _layer(d, "conv1").update(kernel=[3, 3]), r"fan-in 25 does not match the input's 9"),
    (lambda d: _layer(d, "conv1")["overlays"]["arrays"].update(weights="nope"),
     r"array 'nope' not found in tensors.npz"),
    (lambda d: _layer(d, "fc1").update(name="conv1"), r"unique"),
    (lambda d: d["layers"].pop(7), r"fc1.*needs an int8 or int9 vector"),
])
def test_malformed_manifest_rejected_with_field(tmp_path, small_net, change, match):
    with pytest.raises(ManifestError, match=match):
        ir.load(_edit(tmp_path, small_net, change))


def test_missing_and_corrupt_files(tmp_path, small_net):
    with pytest.raises(ManifestError, match="no compiled network"):
        ir.load(tmp_path / "nowhere")
    ir.save(small_net, tmp_path)
    text = (tmp_path / "manifest.json").read_text()
    (tmp_path / "manifest.json").write_text(text[: len(text) // 2])  # truncated
    with pytest.raises(ManifestError, match="not readable JSON"):
        ir.load(tmp_path)
    ir.save(small_net, tmp_path)
    (tmp_path / "tensors.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(ManifestError, match="tensors.npz: not a readable"):
        ir.load(tmp_path)
    (tmp_path / "tensors.npz").unlink()
    with pytest.raises(ManifestError, match="tensors.npz: no such file"):
        ir.load(tmp_path)


def test_inconsistent_overlay_arrays_rejected(tmp_path, small_net):
    ir.save(small_net, tmp_path)
    with np.load(tmp_path / "tensors.npz") as z:
        arrays = dict(z)
    arrays["conv2/kernel_ids"] = arrays["conv2/kernel_ids"] + 8  # ids beyond K
    np.savez(tmp_path / "tensors.npz", **arrays)
    with pytest.raises(ManifestError, match=r"conv2.*kernel id 15 out of range for K=8"):
        ir.load(tmp_path)
    arrays["conv2/kernel_ids"] = arrays["conv2/kernel_ids"] - 8
    arrays["conv2/row_start"] = arrays["conv2/row_start"][::-1].copy()
    np.savez(tmp_path / "tensors.npz", **arrays)
    with pytest.raises(ManifestError, match="row_start"):
        ir.load(tmp_path)


def test_accumulator_width_is_proven(small_net):
    for layer in small_net.layers:
        if isinstance(layer, (ir.OverlayLinear, ir.OverlayConv)):
            bits = layer.accumulator_bits()
            worst = layer.overlays.worst_case_sum() + int(np.abs(layer.bias).max())
            assert worst < 2 ** (bits - 1) and bits <= 32


def test_only_last_layer_may_skip_requant(small_net):
    net = zoo.gsc_cs(seed=3, reduced=True)
    fc1 = next(l for l in net.layers if l.name == "fc1")
    fc1.requant = None
    with pytest.raises(ManifestError, match="int32 output"):
        net.specs()
