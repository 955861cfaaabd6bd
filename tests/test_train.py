"""cosparse.train: complementary masks, CS layers, k-WTA with boosting, export to the compiler."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch", reason="cosparse.train needs torch (the test extra has it)")
from torch import nn  # noqa: E402

from cosparse.compiler import api, ir  # noqa: E402
from cosparse.train import (CSConv2d, CSLinear, KWinners, KWinners2d, export_onnx,  # noqa: E402
                            is_complementary, magnitude_assignment, random_assignment,
                            from_nupic, sparsify)
from cosparse.train.masks import assignment_mask  # noqa: E402


# ----------------------------------------------------------------------------- masks

@st.composite
def layer_shapes(draw):
    K = draw(st.integers(1, 8))
    overlays = draw(st.integers(1, 6))
    fan_in = draw(st.integers(K, 40))
    return overlays * K, fan_in, K


@settings(max_examples=60, deadline=None)
@given(layer_shapes(), st.integers(0, 2**32 - 1))
def test_masks_tile_every_overlay_once_with_balanced_shares(shape, seed):
    kernels, fan_in, K = shape
    rng = np.random.default_rng(seed)
    for owner in (random_assignment(kernels, fan_in, K, rng),
                  magnitude_assignment(rng.normal(size=(kernels, fan_in)), K)):
        mask = assignment_mask(owner, K)
        assert mask.shape == (kernels, fan_in)
        assert is_complementary(mask, K)
        per_overlay = mask.reshape(kernels // K, K, fan_in)
        assert np.all(per_overlay.sum(axis=1) == 1)  # each position owned once
        shares = per_overlay.sum(axis=2)
        assert set(np.unique(shares)) <= {fan_in // K, -(-fan_in // K)}
        assert np.all((shares == -(-fan_in // K)).sum(axis=1) == (fan_in % K if fan_in % K else K))


def test_magnitude_assignment_gives_each_position_to_its_largest_weight():
    rng = np.random.default_rng(3)
    K, fan_in = 4, 24
    owner = np.repeat(np.arange(K), fan_in // K)[rng.permutation(fan_in)]
    w = rng.uniform(-0.1, 0.1, size=(K, fan_in))
    w[owner, np.arange(fan_in)] = rng.choice([-1.0, 1.0], fan_in) * rng.uniform(0.5, 1.0, fan_in)
    assert np.array_equal(magnitude_assignment(w, K)[0], owner)
    # Shares capped: every position prefers kernel 0, yet each kernel gets 6.
    w = np.zeros((K, fan_in))
    w[0] = 1.0
    got = magnitude_assignment(w, K)[0]
    assert np.bincount(got, minlength=K).tolist() == [6, 6, 6, 6]
    assert np.all(got[:6] == 0)  # ties to the lower position, kernel 0 first


def test_mask_errors_name_the_problem():
    with pytest.raises(ValueError, match="do not split into overlays of 3"):
        random_assignment(8, 10, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="more than the fan-in"):
        random_assignment(8, 3, 4, np.random.default_rng(0))
    assert not is_complementary(np.ones((4, 6)), 2)


# ----------------------------------------------------------------------------- layers

def test_masks_stay_complementary_and_weights_outside_stay_zero_through_training():
    torch.manual_seed(0)
    net = nn.Sequential(CSConv2d(3, 12, 3, 4, padding=1), nn.ReLU(), nn.Flatten(),
                        CSLinear(12 * 6 * 6, 20, 5), nn.ReLU(), nn.Linear(20, 4))
    conv, fc = net[0], net[3]
    masks = [conv.mask.clone(), fc.mask.clone()]
    assert conv.check_complementary() and fc.check_complementary()
    assert math.isclose(fc.density, 1 / 5, rel_tol=0.05)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = torch.randn(32, 3, 6, 6), torch.randint(0, 4, (32,))
    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        for layer in (conv, fc):  # no gradient reaches a weight outside the mask
            assert torch.all(layer.weight.grad[layer.mask == 0] == 0)
        opt.step()
    for layer, before in zip((conv, fc), masks):
        assert torch.equal(layer.mask, before)
        assert torch.all(layer.masked_weight()[layer.mask == 0] == 0)
        assert layer.check_complementary()
    # Re-chosen by magnitude: still complementary, the weights that left are 0.
    changed = fc.reassign("magnitude")
    assert 0 <= changed <= 1 and fc.check_complementary()
    assert torch.all(fc.weight[fc.mask == 0] == 0)
    fc.reassign("random", generator=torch.Generator().manual_seed(1))
    assert fc.check_complementary()
    with pytest.raises(ValueError, match="'magnitude' or 'random'"):
        fc.reassign("largest")


def test_cs_layers_compute_with_the_masked_weights():
    torch.manual_seed(1)
    fc = CSLinear(10, 6, 3)
    conv = CSConv2d(4, 6, (3, 2), 2, stride=2, bias=False)
    x = torch.randn(5, 10)
    assert torch.allclose(fc(x), x @ (fc.weight * fc.mask).T + fc.bias)
    xi = torch.randn(2, 4, 7, 7)
    assert torch.allclose(conv(xi), nn.functional.conv2d(xi, conv.weight * conv.mask, stride=2))
    with pytest.raises(ValueError, match="do not split into overlays of 4"):
        CSLinear(10, 6, 4)


# ----------------------------------------------------------------------------- k-WTA

def test_kwinners_boost_and_duty_cycles_follow_nupic():
    kw = KWinners(10, 3, boost_strength=1.5, duty_cycle_period=40)
    kw.duty_cycle.copy_(torch.linspace(0, 0.5, 10))
    before = kw.duty_cycle.clone()
    x = torch.rand(8, 10) + 0.1
    out = kw(x)
    boost = torch.exp((3 / 10 - before) * 1.5)
    assert torch.allclose(kw.boost.reshape(-1), boost)
    won = (out != 0)
    assert torch.all(won.sum(dim=1) == 3)
    key = x * boost
    assert torch.all(key[won].reshape(8, 3).min(dim=1).values
                     >= key.masked_fill(won, -1).max(dim=1).values)
    assert torch.equal(out[won], x[won])  # winners keep their own value
    period = min(40, 8)
    expected = (before * (period - 8) + won.sum(dim=0) / 1.0) / period
    assert torch.allclose(kw.duty_cycle, expected)
    kw.eval()  # frozen: no boost or duty update
    duty, boost_now = kw.duty_cycle.clone(), kw.boost.clone()
    kw(torch.rand(8, 10))
    assert torch.equal(kw.duty_cycle, duty) and torch.equal(kw.boost, boost_now)
    kw.train()
    kw.boost_strength_factor = 0.5
    kw.update_boost_strength()
    assert kw.boost_strength == 0.75


def test_kwinners2d_local_global_and_the_threshold_rule():
    torch.manual_seed(2)
    x = torch.rand(3, 8, 4, 5) + 0.01
    local = KWinners2d(8, 2, local=True, boost_strength=0.0)
    out = local(x)
    assert torch.all((out != 0).sum(dim=1) == 2)
    # First update: the period is the 3 samples, so the duty cycles sum to k.
    assert torch.allclose(local.duty_cycle.sum(), torch.tensor(2.0))
    glob = KWinners2d(8, 7, local=False, boost_strength=0.0)
    assert torch.all((glob(x) != 0).reshape(3, -1).sum(dim=1) == 7)
    # Per-channel duty cycles: wins per sample over the H x W chances.
    assert torch.allclose(glob.duty_cycle.sum() * 20, torch.tensor(7.0))
    # Ties at the k-th key: the threshold rule keeps them all, the index rule exactly k.
    t = torch.tensor([[3.0, 1.0, 2.0, 2.0, 2.0, 0.5]])
    assert (KWinners(6, 2, boost_strength=0, tie_rule="threshold")(t) != 0).sum() == 4
    assert (KWinners(6, 2, boost_strength=0, tie_rule="index")(t) != 0).sum() == 2
    with pytest.raises(ValueError, match="tie_rule"):
        KWinners(6, 2, tie_rule="random")
    with pytest.raises(ValueError, match="more than the 4 channels"):
        KWinners2d(4, 5)
    with pytest.raises(ValueError, match=r"takes \[batch, 6\]"):
        KWinners(6, 2)(torch.rand(2, 5))


# ----------------------------------------------------------------------------- export

class _Net(nn.Module):
    def __init__(self, c: int, k_local: int, units: int, K_fc: int, k_global: int, tie: str):
        super().__init__()
        self.conv = CSConv2d(1, c, 3, 2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c, affine=False)
        self.pool = nn.MaxPool2d(2)
        self.kw1 = KWinners2d(c, k_local, tie_rule=tie)
        self.fc1 = CSLinear(c * 16, units, K_fc)
        self.bn2 = nn.BatchNorm1d(units, affine=False)
        self.kw2 = KWinners(units, k_global, tie_rule=tie)
        self.fc2 = nn.Linear(units, 5)

    def forward(self, x):
        x = self.kw1(self.pool(self.bn1(self.conv(x))))
        return self.fc2(self.kw2(self.bn2(self.fc1(x.flatten(1)))))


@pytest.mark.parametrize("exporter,tie", [("legacy", "index"), ("dynamo", "threshold")])
def test_exported_networks_compile_to_overlays_and_kwta(tmp_path, exporter, tie):
    torch.manual_seed(4)
    c, k_local, units, K_fc, k_global = 8, 3, 32, 4, 6
    net = _Net(c, k_local, units, K_fc, k_global, tie)
    x = torch.rand(64, 1, 8, 8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(5):  # move the BatchNorm statistics and duty cycles off their start
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    path = export_onnx(net, x[:1], tmp_path / "net.onnx", exporter=exporter)
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path))
    with torch.no_grad():
        ref = net(x[:16]).numpy()
    np.testing.assert_allclose(sess.run(None, {"input": x[:16].numpy()})[0], ref,
                               rtol=1e-4, atol=1e-5)
    acc = api.compile(str(path), board="sim", calibration=x[:32].numpy())
    layers = acc.network.layers
    overlays = [l for l in layers if isinstance(l, ir.OverlayLayer)]
    assert [l.overlays.kernels_per_overlay for l in overlays[:2]] == [2, K_fc]
    assert [l.overlays.lanes for l in overlays[:2]] == [c // 2, units // K_fc]
    assert all(l.overlays.fill > 0.9 for l in overlays[:2])
    kwtas = [l for l in layers if isinstance(l, (ir.LocalKWTA, ir.GlobalKWTA))]
    assert [type(l).__name__ for l in kwtas] == ["LocalKWTA", "GlobalKWTA"]
    assert [l.k for l in kwtas] == [k_local, k_global]
    bound = [None, None] if tie == "index" else [2 * k_local, 2 * k_global]
    assert [l.max_winners for l in kwtas] == bound
    # The trained boosts reach the compiled k-WTAs (scaled there by each channel's
    # quantization scale, so checked for presence and spread only).
    for layer, module in zip(kwtas, (net.kw1, net.kw2)):
        assert layer.boost is not None and len(layer.boost) == module.units
        assert np.ptp(np.asarray(layer.boost, dtype=float)) > 0


def test_sparsify_keeps_the_largest_weights_and_inserts_kwta(tmp_path):
    torch.manual_seed(5)
    dense = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 16, 24), nn.BatchNorm1d(24),
                          nn.Linear(24, 5))
    dense(torch.rand(16, 1, 8, 8))  # BatchNorm statistics
    w_conv, w_fc = dense[0].weight.detach().clone(), dense[4].weight.detach().clone()
    sparsify(dense, {"0": 4, "4": 6},
             kwta={"2": {"channels": 8, "k": 3}, "5": {"units": 24, "k": 5, "tie_rule": "threshold"}})
    conv, fc = dense[0], dense[4]
    assert isinstance(conv, CSConv2d) and isinstance(fc, CSLinear)
    assert conv.check_complementary() and fc.check_complementary()
    for layer, before in ((conv, w_conv), (fc, w_fc)):
        kept = layer.mask.bool()
        assert torch.equal(layer.weight[kept], before[kept])
        # Each position's owner has the largest |w| where its share allows: more kept
        # magnitude than any other balanced assignment drawn at random.
        rand = torch.from_numpy(assignment_mask(random_assignment(
            before.shape[0], before[0].numel(), layer.kernels_per_overlay,
            np.random.default_rng(0)), layer.kernels_per_overlay)).reshape(before.shape)
        assert (before.abs() * layer.mask).sum() > (before.abs() * rand).sum()
    assert isinstance(dense[2][1], KWinners2d) and isinstance(dense[5][1], KWinners)
    dense.eval()
    x = torch.rand(4, 1, 8, 8)
    assert torch.all((dense[:3](x) != 0).sum(dim=1) <= 3)
    path = export_onnx(dense, x[:1], tmp_path / "s.onnx")
    acc = api.compile(str(path), board="sim", calibration=torch.rand(16, 1, 8, 8).numpy())
    kinds = [type(l).__name__ for l in acc.network.layers]
    assert kinds.count("LocalKWTA") == 1 and kinds.count("GlobalKWTA") == 1
    with pytest.raises(ValueError, match="no module 'nope'"):
        sparsify(dense, {"nope": 2})
    with pytest.raises(ValueError, match="is a BatchNorm2d"):
        sparsify(dense, {"1": 2})
    with pytest.raises(ValueError, match="do not split into overlays of 7"):
        sparsify(dense, {"6": 7})


@pytest.mark.parametrize("example", ["digits", "digits-sparsify"])
def test_trained_examples_write_onnx_and_figures(tmp_path, example, capsys):
    pytest.importorskip("sklearn", reason="the digits examples read scikit-learn's digits")
    from cosparse.train import examples
    assert examples.main([example, "-o", str(tmp_path), "--epochs", "2"]) == 0
    name = example.replace("-", "_")
    figures = json.loads((tmp_path / f"{name}.json").read_text())
    assert (tmp_path / figures["onnx"]).is_file()
    assert set(figures["accuracy"]) == {"dense_float", "dual_sparse_float", "golden_int8"}
    assert all(0.1 < a <= 1 for a in figures["accuracy"].values())  # above chance after 2 epochs
    assert figures["weight_density"] == {"conv1": 1 / examples.CONV_K, "fc1": 1 / examples.FC1_K,
                                         "fc2": 1.0}
    dens = figures["activation_density"]
    assert set(dens) == {"act1", "act2"}
    assert 0 < dens["act1"] <= examples.LOCAL_K / examples.CHANNELS + 1e-9
    assert 0 < dens["act2"] <= examples.GLOBAL_K / examples.UNITS + 1e-9
    assert figures["fill"]["conv1"] > 0.95 and figures["fill"]["fc1"] > 0.95  # int8 rounds a few to 0
    assert figures["cycles_per_inference_ulx3s_85f"] > 0 and figures["test_images"] == 360
    captured = capsys.readouterr()
    assert f"{name}: dense" in captured.out
    assert "] 2/2 loss" in captured.err  # the progress bar's last step


# ----------------------------------------------------------------------------- nupic

class _NupicKWinnersBase(nn.Module):
    """nupic.torch's k-WTA as its source defines it (kthvalue threshold; eval uses
    k_inference and the boost from the duty cycles), for the converter's tests."""

    def _kwinners(self, x, duty, k, dim_units):
        boosted = x.detach() * torch.exp((k / dim_units - duty) * self.boost_strength)
        if self.break_ties:
            mask = torch.ones_like(boosted, dtype=torch.bool)
            mask.scatter_(1, boosted.topk(k, dim=1).indices, False)
        else:
            thr = boosted.kthvalue(boosted.shape[1] - k + 1, dim=1, keepdim=True)[0]
            mask = boosted < thr
        if self.relu:
            mask = mask | (x <= 0)
        return x.masked_fill(mask, 0)


class _NupicKW1d(_NupicKWinnersBase):
    def __init__(self, n, percent_on, k_inference_factor=1.5, boost_strength=1.0,
                 break_ties=False, relu=False):
        super().__init__()
        self.n, self.percent_on, self.k_inference_factor = n, percent_on, k_inference_factor
        self.boost_strength, self.break_ties, self.relu = boost_strength, break_ties, relu
        self.k = int(round(n * percent_on))
        self.k_inference = int(self.k * k_inference_factor)
        self.register_buffer("duty_cycles", torch.zeros(n))

    def forward(self, x):
        return self._kwinners(x, self.duty_cycles, self.k_inference, self.n)


class _NupicKW2d(_NupicKWinnersBase):
    def __init__(self, channels, percent_on, k_inference_factor=1.5, boost_strength=1.0,
                 local=False, break_ties=False, relu=False):
        super().__init__()
        self.channels, self.percent_on, self.k_inference_factor = channels, percent_on, k_inference_factor
        self.boost_strength, self.local, self.break_ties, self.relu = boost_strength, local, break_ties, relu
        self.n = self.k = self.k_inference = 0
        self.register_buffer("duty_cycles", torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        if self.n == 0:
            self.n = int(np.prod(x.shape[1:]))
            units = self.channels if self.local else self.n
            self.k = int(round(units * self.percent_on))
            self.k_inference = int(round(units * self.percent_on * self.k_inference_factor))
        if self.local:
            b, c, h, w = x.shape
            rows = x.permute(0, 2, 3, 1).reshape(-1, c)
            out = self._kwinners(rows, self.duty_cycles.reshape(1, c), self.k_inference, c)
            return out.reshape(b, h, w, c).permute(0, 3, 1, 2)
        flat_duty = self.duty_cycles.expand(1, *x.shape[1:]).reshape(1, -1)
        return self._kwinners(x.reshape(x.shape[0], -1), flat_duty, self.k_inference,
                              self.n).reshape(x.shape)


# The converter knows nupic's modules by their class names.
_NUPIC_KW = type("KWinners", (_NupicKW1d,), {})
_NUPIC_KW2D = type("KWinners2d", (_NupicKW2d,), {})


@pytest.mark.parametrize("break_ties,relu", [(False, False), (True, True)])
def test_from_nupic_computes_the_nupic_modules_inference_and_exports(tmp_path, break_ties, relu):
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), _NUPIC_KW2D(8, 0.25, local=True,
                        break_ties=break_ties, relu=relu),
                        nn.MaxPool2d(2), _NUPIC_KW2D(8, 0.1, local=False, relu=relu),
                        nn.Flatten(), nn.Linear(8 * 16, 32),
                        _NUPIC_KW(32, 0.2, break_ties=break_ties, relu=relu), nn.Linear(32, 4))
    with torch.no_grad():
        for m in net.modules():
            if hasattr(m, "duty_cycles"):
                m.duty_cycles.copy_(torch.rand_like(m.duty_cycles) * 0.3)
    net.eval()
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        ref = net(x)
    from_nupic(net)
    assert not any(type(m) in (_NUPIC_KW, _NUPIC_KW2D) for m in net.modules())
    kws = [m for m in net.modules() if isinstance(m, (KWinners, KWinners2d))]
    assert [m.k for m in kws] == [3, 19, 9]  # inference k: round(8*.25*1.5), round(128*.1*1.5), int(6*1.5)
    assert [m.tie_rule for m in kws] == ["index" if break_ties else "threshold", "threshold",
                                         "index" if break_ties else "threshold"]
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref)
    path = export_onnx(net, x[:1], tmp_path / "converted.onnx")
    acc = api.compile(str(path), board="sim", calibration=x.numpy())
    kinds = [type(l).__name__ for l in acc.network.layers]
    assert kinds.count("LocalKWTA") == 1 and kinds.count("GlobalKWTA") == 2


def test_from_nupic_refuses_a_global_map_module_that_never_ran():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), _NUPIC_KW2D(4, 0.1, local=False))
    with pytest.raises(ValueError, match="run one batch"):
        from_nupic(net)


# ----------------------------------------------------------------------------- keywords

def test_log_mel_puts_a_tone_in_its_band_and_frames():
    from cosparse.train import keywords
    t = np.arange(keywords.RATE) / keywords.RATE
    tone = np.where(t < 0.5, np.sin(2 * np.pi * 1000 * t), 0.0)
    spec = keywords.log_mel(tone)
    assert spec.shape == (32, 32) and spec.dtype == np.float32
    band = int(spec[:, :10].mean(axis=1).argmax())
    centres = keywords._mel_filters(keywords.RATE, keywords.N_FFT, 32, 60.0, 8000.0).argmax(axis=1)
    freq = centres[band] * keywords.RATE / keywords.N_FFT
    assert 800 < freq < 1250  # the band whose filter peaks nearest 1 kHz
    assert spec[band, :12].min() > spec[band, -10:].max() + 5  # on in the first half only
    with pytest.raises(ValueError, match="22050 samples"):
        keywords.log_mel(np.zeros(100))


@pytest.mark.skipif(not __import__("shutil").which("espeak-ng"),
                    reason="needs espeak-ng (apt-get install espeak-ng; .ci/run installs it)")
def test_keyword_dataset_speaks_every_class():
    from cosparse.compiler.errors import CosparseError
    from cosparse.train import keywords
    x, y = keywords.make_dataset(2, seed=1)
    assert x.shape == (24, 1, 32, 32) and np.isfinite(x).all()
    assert np.bincount(y).tolist() == [2] * 12
    rng = np.random.default_rng(0)  # two clips of one word: voice, speed and noise vary
    assert not np.array_equal(keywords._clip(rng, "yes"), keywords._clip(rng, "yes"))
    with pytest.raises(CosparseError, match="espeak-ng failed on 'yes' with voice 'xx-nope'"):
        keywords.speak("yes", "xx-nope", 150, 50)



@pytest.mark.skipif(not __import__("shutil").which("espeak-ng"),
                    reason="needs espeak-ng (apt-get install espeak-ng; .ci/run installs it)")
def test_gsc_example_trains_the_benchmark_network_on_keywords(tmp_path):
    from cosparse.train import examples
    from cosparse.train.keywords import CLASSES
    assert examples.main(["gsc", "-o", str(tmp_path), "--epochs", "1",
                          "--clips-per-class", "3"]) == 0
    fig = json.loads((tmp_path / "gsc.json").read_text())
    assert fig["classes"] == list(CLASSES) and fig["test_images"] == 8  # 20% of 36 clips
    assert fig["weight_density"] == pytest.approx({"conv1": 0.5, "conv2": 0.125, "fc1": 0.04,
                                                   "fc2": 1.0})
    dens = fig["activation_density"]
    assert dens["act1"] <= 8 / 64 and dens["act2"] <= 8 / 64 and dens["act3"] <= 150 / 1500 + 1e-9
    assert all(f > 0.95 for f in fig["fill"].values()) and len(fig["fill"]) == 4
    assert fig["cycles_per_inference_ulx3s_85f"] > 0
    assert (tmp_path / "keywords_3_0.npz").is_file() and (tmp_path / "gsc.onnx").is_file()
