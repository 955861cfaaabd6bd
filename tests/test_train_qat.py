"""cosparse.train.quantize: quantization-aware training in the compiler's integer semantics.

The PyTorch model's outputs must be the golden model's, bit for bit, on the
compiled QDQ export: random networks (property-based), both exporters.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch", reason="cosparse.train needs torch (the test extra has it)")
from torch import nn  # noqa: E402

from cosparse.compiler import api  # noqa: E402
from cosparse.train import (CSConv2d, CSLinear, KWinners, KWinners2d, QuantizeError,  # noqa: E402
                            export_onnx, quantize)


class Chain(nn.Module):
    def __init__(self, *mods: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*mods)

    def forward(self, x):
        return self.body(x)


def _divisor(rng, n: int, fan_in: int) -> int:
    """Kernels per overlay: a divisor of the kernel count, at most 8 and the fan-in."""
    return int(rng.choice([d for d in range(1, min(n, 8, fan_in) + 1) if n % d == 0]))


def _randomise(module: nn.Module, rng: np.random.Generator) -> None:
    """Statistics and boosts as training leaves them: BatchNorm running mean and var
    (affine scales of both signs), k-WTA boosts from random duty cycles."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.3, m.num_features)))
                m.running_var.copy_(torch.from_numpy(rng.uniform(0.3, 2.0, m.num_features)))
                if m.affine:
                    m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, m.num_features)))
                    m.bias.copy_(torch.from_numpy(rng.normal(0, 0.2, m.num_features)))
            if isinstance(m, (KWinners, KWinners2d)) and rng.random() < 0.7:
                duty = torch.from_numpy(rng.uniform(0, 0.5, m.units)).float()
                m.duty_cycle.copy_(duty)
                m.boost_strength = float(rng.uniform(0.5, 3))
                m.refresh_boost(float(rng.uniform(0.05, 0.3)))


def random_network(rng: np.random.Generator) -> tuple[nn.Module, tuple[int, ...]]:
    """A random chain the compiler takes: conv blocks (dense or complementary-sparse,
    BatchNorm, ReLU, max pool, local or global k-WTA), a flatten, linear blocks
    (BatchNorm, ReLU or k-WTA) and a linear classifier."""
    mods: list[nn.Module] = []
    tie = lambda: str(rng.choice(["index", "threshold"]))  # noqa: E731
    if rng.random() < 0.7:
        c, size = int(rng.integers(1, 4)), int(rng.integers(6, 11))
        shape: tuple[int, ...] = (c, size, size)
        for _ in range(int(rng.integers(1, 3))):
            out = int(rng.choice([4, 6, 8, 12, 16]))
            pad = 1 if size < 3 else int(rng.integers(0, 2))  # the map keeps a pixel
            if rng.random() < 0.6:
                mods.append(CSConv2d(c, out, 3, _divisor(rng, out, 9 * c), padding=pad,
                                     bias=bool(rng.random() < 0.5)))
            else:
                mods.append(nn.Conv2d(c, out, 3, padding=pad, bias=bool(rng.random() < 0.5)))
            size = size + 2 * pad - 2
            if rng.random() < 0.6:
                mods.append(nn.BatchNorm2d(out, affine=bool(rng.random() < 0.5)))
            act = rng.choice(["relu", "local", "global", "none"])
            if act == "relu":
                mods.append(nn.ReLU())
            if size >= 4 and rng.random() < 0.5:
                mods.append(nn.MaxPool2d(2))
                size //= 2
            if act == "local":
                mods.append(KWinners2d(out, int(rng.integers(1, out)), local=True,
                                       tie_rule=tie()))
            elif act == "global":
                mods.append(KWinners2d(out, int(rng.integers(1, out * size * size // 2 + 1)),
                                       local=False, tie_rule=tie()))
            c = out
        mods.append(nn.Flatten())
        n = c * size * size
    else:
        n = int(rng.integers(8, 40))
        shape = (n,)
    for _ in range(int(rng.integers(0, 3))):
        out = int(rng.choice([8, 12, 16, 24, 32]))
        if rng.random() < 0.6:
            mods.append(CSLinear(n, out, _divisor(rng, out, n)))
        else:
            mods.append(nn.Linear(n, out))
        if rng.random() < 0.5:
            mods.append(nn.BatchNorm1d(out))
        act = rng.choice(["relu", "kwta", "none"])
        if act == "relu":
            mods.append(nn.ReLU())
        elif act == "kwta":
            mods.append(KWinners(out, int(rng.integers(1, out)), tie_rule=tie()))
        n = out
    mods.append(nn.Linear(n, int(rng.integers(2, 11))))
    net = Chain(*mods)
    _randomise(net, rng)
    return net.eval(), shape


def test_random_networks_are_well_formed():
    """The generator's networks build and run for every seed drawn here (a map that
    shrinks to nothing or an overlay wider than its fan-in would fail the property test
    for the generator's sake, not the quantizer's)."""
    for seed in range(300):
        net, shape = random_network(np.random.default_rng(seed))
        with torch.no_grad():
            y = net(torch.zeros(2, *shape))
        assert y.shape[0] == 2 and 2 <= y.shape[1] <= 10, seed


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["legacy", "dynamo"]))
def test_quantized_model_equals_the_golden_model_of_its_export(tmp_path_factory, seed, exporter):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed % 2**31)
    net, shape = random_network(rng)
    cal = rng.normal(size=(64, *shape)).astype(np.float32)
    x = rng.normal(size=(48, *shape)).astype(np.float32)
    q = quantize(net, cal).eval()
    with torch.no_grad():
        y = q(torch.from_numpy(x)).numpy()
    path = tmp_path_factory.mktemp("qat") / "q.onnx"
    export_onnx(q, torch.from_numpy(x[:2]), path, exporter=exporter)
    acc = api.compile(str(path), board="sim")
    assert acc.network.meta["quantization"] == "qdq"  # the compiler took the model's scales
    gold = acc.golden(x)
    assert gold.dtype == y.dtype and gold.shape == y.shape
    np.testing.assert_array_equal(gold, y)


def _dynamo_compiled(net: nn.Module, x: np.ndarray, tmp_path):
    """``net`` quantized on ``x``, exported by torch.export and compiled: the accelerator
    and the quantized model's outputs on ``x``."""
    q = quantize(net.eval(), x).eval()
    with torch.no_grad():
        y = q(torch.from_numpy(x)).numpy()
    export_onnx(q, torch.from_numpy(x[:2]), tmp_path / "m.onnx", exporter="dynamo")
    return api.compile(str(tmp_path / "m.onnx"), board="sim"), y


def test_dynamo_global_map_kwta_with_boost_keeps_its_boost(tmp_path):
    """torch.export writes a global k-WTA over a map as TopK on reshape(x * boost) with
    GatherElements on reshape(x): the frontend reads the boost through the reshape."""
    rng = np.random.default_rng(200)
    torch.manual_seed(200)
    net = Chain(CSConv2d(1, 4, 3, 1, padding=1, bias=False), nn.BatchNorm2d(4),
                nn.MaxPool2d(2), KWinners2d(4, 2, local=False), nn.Flatten(),
                CSLinear(64, 24, 2), nn.Linear(24, 6))
    _randomise(net, rng)
    with torch.no_grad():
        net.body[3].boost.copy_(torch.tensor([1.0, 1.7, 0.6, 2.3]).reshape(1, 4, 1, 1))
    x = rng.normal(size=(48, 1, 8, 8)).astype(np.float32)
    acc, y = _dynamo_compiled(net, x, tmp_path)
    names = [layer.name for layer in acc.network.layers]
    assert {"body_0", "body_5", "body_6"} <= set(names)  # the modules' names, not "conv"
    kwta = [layer for layer in acc.network.layers if layer.name == "kwta"][0]
    assert kwta.boost is not None and len(set(kwta.boost.tolist())) == 4
    np.testing.assert_array_equal(acc.golden(x), y)


@pytest.mark.parametrize("local", [False, True])
def test_dynamo_threshold_kwta_with_one_winner(tmp_path, local):
    """k = 1 under the threshold rule: torch.export compares the key with TopK's values
    themselves (no slice of the k-th); found by the property test above."""
    rng = np.random.default_rng(201)
    torch.manual_seed(201)
    net = Chain(CSConv2d(1, 4, 3, 1, padding=1, bias=False), nn.BatchNorm2d(4),
                nn.MaxPool2d(2), KWinners2d(4, 1, local=local, tie_rule="threshold"),
                nn.Flatten(), CSLinear(64, 24, 2), nn.Linear(24, 6))
    _randomise(net, rng)
    x = rng.normal(size=(48, 1, 8, 8)).astype(np.float32)
    acc, y = _dynamo_compiled(net, x, tmp_path)
    kwta = [layer for layer in acc.network.layers if layer.name == "kwta"]
    assert len(kwta) == 1 and kwta[0].k == 1
    np.testing.assert_array_equal(acc.golden(x), y)


def _digits_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    return Chain(CSConv2d(1, 8, 3, 2, padding=1, generator=g), nn.BatchNorm2d(8, affine=False),
                 nn.MaxPool2d(2), KWinners2d(8, 3), nn.Flatten(),
                 CSLinear(128, 32, 4, generator=g), nn.BatchNorm1d(32, affine=False),
                 KWinners(32, 6), nn.Linear(32, 10))


def _fit(model: nn.Module, x, y, steps: int = 150) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_quantization_aware_training_keeps_masks_and_learns():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(256, 1, 8, 8)).astype(np.float32))
    teacher = torch.from_numpy(rng.normal(size=(64, 10)).astype(np.float32))
    y = (x.flatten(1) @ teacher).argmax(1)  # a labelling the network can learn
    net = _digits_net(0)
    _randomise(net, rng)
    q = quantize(net.eval(), x)
    masks = {n: layer.mask.clone() for n, layer in q.layers.items()}
    assert set(masks) == {"body.0", "body.5", "body.8"}
    # the float model with the statistics and boosts frozen, as quantize freezes them
    frozen = _fit(net.eval(), x, y)
    losses = _fit(q.train(), x, y)
    # (four seeds measured: 0.47-0.58 of the first loss, 1.03-1.26x the float model's)
    assert losses[-1] < 0.65 * losses[0]
    assert losses[-1] < 1.35 * frozen[-1], (losses[-1], frozen[-1])
    for n, layer in q.layers.items():
        assert torch.equal(layer.mask, masks[n])
        assert torch.all(layer.masked()[layer.mask == 0] == 0)
        assert torch.all(layer.weight.grad[layer.mask == 0] == 0)
    # k-WTA boosts stay frozen; the training forward is the integer one (ties aside)
    q.eval()
    with torch.no_grad():
        y_eval = q(x)
        q.train()
        y_train = q(x)
    same = (y_eval == y_train).all(1).float().mean().item()
    assert same == 1.0, same


def test_training_forward_without_kwta_is_the_eval_forward():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(64, 20)).astype(np.float32))
    net = Chain(CSLinear(20, 16, 4), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))
    _randomise(net, rng)
    q = quantize(net.eval(), x)
    out = q.train()(x)
    out.sum().backward()
    with torch.no_grad():
        assert torch.equal(out.detach(), q.eval()(x))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in q.parameters())


def test_quantize_errors_name_the_module():
    x = torch.zeros(4, 10)
    with pytest.raises(QuantizeError, match=r"module 'body.1' \(Tanh\)"):
        quantize(Chain(nn.Linear(10, 4), nn.Tanh(), nn.Linear(4, 2)), x)
    with pytest.raises(QuantizeError, match=r"'body.2'.*BatchNorm after a ReLU"):
        quantize(Chain(nn.Linear(10, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2)), x)
    with pytest.raises(QuantizeError, match="must follow a conv or linear"):
        quantize(Chain(nn.ReLU(), nn.Linear(10, 2)), x)

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(10, 10)

        def forward(self, x):
            return self.fc(x) + x

    with pytest.raises(QuantizeError, match="chain"):
        quantize(Residual(), x)


def test_bench_runs_a_trained_model_and_reports_its_golden_accuracy(tmp_path):
    """``cosparse bench --model`` on a quantization-aware model: the bench's golden
    accuracy is the PyTorch model's, and Verilator matches the golden model."""
    import json

    from cosparse.compiler.cli import main

    rng = np.random.default_rng(3)
    net = _digits_net(3)
    _randomise(net, rng)
    x = rng.normal(size=(40, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 40)
    q = quantize(net.eval(), x).eval()
    with torch.no_grad():
        accuracy = float(np.mean(q(torch.from_numpy(x)).numpy().argmax(1) == labels))
    export_onnx(q, torch.from_numpy(x[:1]), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    assert main(["bench", "-o", str(tmp_path / "b"), "--model", str(tmp_path / "m.onnx"),
                 "--inputs", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--mode", "sparse-sparse", "--no-pnr", "-n", "3"]) == 0
    res = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert res["weights"] == "trained" and res["quantization"] == "qdq"
    assert res["model_inputs"] == 40 and res["golden_accuracy"] == round(accuracy, 4)
    row = res["modes"][0]
    assert row["bit_exact"] and row["interval_cycles"] > 0
    assert "trained weights from m.onnx" in (tmp_path / "b" / "bench.md").read_text()
