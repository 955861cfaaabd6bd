"""Networks built directly in the IR: the gsc-cs benchmark and random test nets.

These skip the ONNX frontend: weights are drawn at random (seeded) with
complementary or random masks, and requantization constants are calibrated
on random inputs so that activations use the int8 range the way a trained
network's do. They serve the benchmark, the demo and the tests.
"""

from __future__ import annotations

import numpy as np

from cosparse.sim.golden import run_layer

from .formats import insert_adapters
from .ir import (Flatten, GlobalKWTA, Layer, LocalKWTA, MaxPool, Network, OverlayConv,
                 OverlayLinear, Requant, TensorSpec)
from .packer import pack
from .quantize import requant_for_range

__all__ = ["complementary_weights", "random_sparse_weights", "gsc_cs", "calibrate_requant",
           "random_network"]


def _nonzero_int8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    mag = rng.integers(1, 128, size=shape)
    sign = rng.choice(np.array([-1, 1]), size=shape)
    return (mag * sign).astype(np.int8)


def complementary_weights(kernels: int, fan_in: int, per_overlay: int,
                          rng: np.random.Generator) -> np.ndarray:
    """Random int8 weights whose masks are complementary in groups of ``per_overlay``.

    Each group of ``per_overlay`` consecutive kernels splits the fan-in
    (randomly permuted) into ``per_overlay`` near-equal disjoint parts, so the
    group fills one overlay exactly. Kernel order is then shuffled, so the
    packer has to find the groups.
    """
    w = np.zeros((kernels, fan_in), dtype=np.int8)
    for g0 in range(0, kernels, per_overlay):
        perm = rng.permutation(fan_in)
        parts = np.array_split(perm, per_overlay)
        for j, kern in enumerate(range(g0, min(g0 + per_overlay, kernels))):
            w[kern, parts[j]] = _nonzero_int8(rng, (parts[j].size,))
    return w[rng.permutation(kernels)]


def random_sparse_weights(kernels: int, fan_in: int, density: float,
                          rng: np.random.Generator) -> np.ndarray:
    """Random int8 weights with an independent random mask per kernel.

    Every kernel gets ``round(density * fan_in)`` (at least one) non-zeros,
    as magnitude pruning per kernel produces.
    """
    nnz = max(1, round(density * fan_in))
    w = np.zeros((kernels, fan_in), dtype=np.int8)
    for kern in range(kernels):
        rows = rng.choice(fan_in, size=nnz, replace=False)
        w[kern, rows] = _nonzero_int8(rng, (nnz,))
    return w


def calibrate_requant(acc: np.ndarray, *, relu: bool, headroom: float = 1.0) -> Requant:
    """Per-channel requant that maps the 99.9th percentile of |acc| to 127 / headroom.

    ``acc`` is ``[samples, M]`` accumulators (bias included).
    """
    hi = np.percentile(np.abs(acc), 99.9, axis=0)
    hi = np.maximum(hi, 1.0)
    return requant_for_range(127.0 / (hi * headroom), relu=relu)


def gsc_cs(*, seed: int = 0, mode: str = "sparse-sparse", reduced: bool = False,
           calibration_inputs: int = 64) -> Network:
    """The gsc-cs benchmark network (docs/benchmark.md), with random weights.

    conv1 64x1x5x5 (K=2), maxpool 2, local k-WTA 8/64; conv2 64x64x5x5
    (K=8), maxpool 2, local k-WTA 8/64; flatten 1600; fc1 1500 (K=25),
    global k-WTA 150/1500; fc2 12 (dense, K=1), int32 logits.

    Parameters
    ----------
    seed : int
        Weights, masks and calibration inputs are drawn from this seed.
    mode : {"sparse-sparse", "sparse-weights", "dense"}
        ``dense`` keeps every weight (K=1, masks full) and processes every
        input; ``sparse-weights`` packs the sparse weights but feeds the
        engines dense streams; ``sparse-sparse`` skips inactive inputs.
    reduced : bool
        A smaller network of the same shape (20x20 input, 16 channels,
        fc1 96) for quick tests.
    calibration_inputs : int
        Random inputs used to set the requantization constants.
    """
    if mode not in ("sparse-sparse", "sparse-weights", "dense"):
        raise ValueError(f"mode must be sparse-sparse, sparse-weights or dense, got {mode!r}")
    rng = np.random.default_rng(seed)
    size, ch, fc, k_local, k_global = (20, 16, 96, 4, 12) if reduced else (32, 64, 1500, 8, 150)
    feat = ((size - 4) // 2 - 4) // 2
    k_fc1 = 8 if reduced else 25
    specs = [  # name, kernels, fan_in, K
        ("conv1", ch, 25, 2), ("conv2", ch, 25 * ch, 8),
        ("fc1", fc, feat * feat * ch, k_fc1), ("fc2", 12, fc, 1)]
    weights = {}
    for name, m, fan_in, k in specs:
        if mode == "dense":
            weights[name] = _nonzero_int8(rng, (m, fan_in))
        else:
            weights[name] = complementary_weights(m, fan_in, k, rng)
    kfor = {name: (1 if mode == "dense" else k) for name, _, _, k in specs}
    layers: list[Layer] = []
    x = rng.integers(-128, 128, size=(calibration_inputs, size, size, 1)).astype(np.int8)
    net_input = TensorSpec((size, size, 1), "int8", 1 / 64)

    def add_overlay(layer: Layer, w: np.ndarray, relu: bool, requant: bool = True) -> None:
        nonlocal x
        layer.overlays = pack(w, kfor[layer.name])
        layer.bias = np.zeros(w.shape[0], dtype=np.int32)
        layer.acc_scale = tuple([1.0] * w.shape[0])
        acc = run_layer(layer, x)
        if requant:
            layer.requant = calibrate_requant(acc.reshape(-1, w.shape[0]), relu=relu)
            x = run_layer(layer, x)
        layers.append(layer)

    def add(layer: Layer) -> None:
        nonlocal x
        x = run_layer(layer, x)
        layers.append(layer)

    # No ReLU: k-WTA alone sparsifies, negative values may win (as in nupic's nets).
    add_overlay(OverlayConv("conv1", kernel=(5, 5)), weights["conv1"], relu=False)
    add(MaxPool("pool1"))
    add(LocalKWTA("kwta1", k=k_local))
    add_overlay(OverlayConv("conv2", kernel=(5, 5)), weights["conv2"], relu=False)
    add(MaxPool("pool2"))
    add(LocalKWTA("kwta2", k=k_local))
    add(Flatten("flatten"))
    add_overlay(OverlayLinear("fc1"), weights["fc1"], relu=False)
    add(GlobalKWTA("kwta3", k=k_global))
    add_overlay(OverlayLinear("fc2"), weights["fc2"], relu=False, requant=False)
    layers = insert_adapters(layers, mode, densify_at="consumer")
    net = Network("gsc-cs-reduced" if reduced else "gsc-cs", net_input, layers,
                  meta={"mode": mode, "seed": seed, "generator": "cosparse.compiler.zoo.gsc_cs"})
    net.specs()
    return net


def random_network(input_shape: tuple[int, ...], spec: list[tuple], *, seed: int = 0,
                   mode: str = "sparse-sparse", name: str = "random",
                   calibration_inputs: int = 32) -> Network:
    """A random network of any chain of layers, calibrated like :func:`gsc_cs`.

    Parameters
    ----------
    input_shape : tuple
        ``(H, W, C)`` or ``(N,)``.
    spec : list of tuple
        Layers in order: ``("conv", M, (kh, kw), K[, stride, padding])``,
        ``("linear", M, K)``, ``("logits", M, K)`` (no requant: int32 out,
        must be last), ``("pool", (kh, kw))``, ``("local", k[, boost])``,
        ``("global", k[, boost])``, ``("flatten",)``, and ``("relu",)``
        right after an overlay layer to fuse a ReLU. ``boost`` is a max boost
        (integers drawn from 1 to it) or None. ``K`` may be None (the
        packer chooses; weights then have random masks at density 1/4).
    mode : {"sparse-sparse", "sparse-weights", "dense"}
        As :func:`gsc_cs`: adapters are inserted so that overlay layers see
        sparse streams (sparse-sparse) or dense ones (the others); dense
        also keeps every weight (K = 1, full masks).
    """
    if mode not in ("sparse-sparse", "sparse-weights", "dense"):
        raise ValueError(f"mode must be sparse-sparse, sparse-weights or dense, got {mode!r}")
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=(calibration_inputs, *input_shape)).astype(np.int8)
    layers: list[Layer] = []
    pending: list = []  # overlay layer waiting for a possible ("relu",)

    def finish_overlay(relu: bool) -> None:
        nonlocal x
        layer, requant = pending.pop()
        acc = run_layer(layer, x)
        if requant:
            layer.requant = calibrate_requant(acc.reshape(-1, layer.overlays.num_kernels),
                                              relu=relu)
            x = run_layer(layer, x)
        else:
            x = acc
        layers.append(layer)

    def add(layer: Layer) -> None:
        nonlocal x
        x = run_layer(layer, x)
        layers.append(layer)

    for n, item in enumerate(spec):
        kind = item[0]
        if kind != "relu" and pending:
            finish_overlay(False)
        if kind in ("conv", "linear", "logits"):
            m, k = item[1], item[-1] if kind != "conv" else item[3]
            if kind == "conv":
                kernel = item[2]
                stride = item[4] if len(item) > 4 else (1, 1)
                padding = item[5] if len(item) > 5 else (0, 0, 0, 0)
                layer: Layer = OverlayConv(f"conv{n}", kernel=kernel, stride=stride,
                                           padding=padding)
                fan_in = kernel[0] * kernel[1] * x.shape[-1]
            else:
                layer = OverlayLinear(f"fc{n}")
                fan_in = x.shape[-1]
            if mode == "dense":
                w, k = _nonzero_int8(rng, (m, fan_in)), 1
            elif k is None:
                w = random_sparse_weights(m, fan_in, 0.25, rng)
            else:
                w = complementary_weights(m, fan_in, k, rng)
            layer.overlays = pack(w, k)
            layer.bias = rng.integers(-2000, 2000, m).astype(np.int32)
            layer.acc_scale = tuple([1.0] * m)
            pending.append((layer, kind != "logits"))
        elif kind == "relu":
            finish_overlay(True)
        elif kind == "pool":
            add(MaxPool(f"pool{n}", kernel=item[1], stride=item[1]))
        elif kind in ("local", "global"):
            c = x.shape[-1]
            top = item[2] if len(item) > 2 else None
            boost = None if top is None else rng.integers(1, top + 1, c).astype(np.int32)
            cls = LocalKWTA if kind == "local" else GlobalKWTA
            add(cls(f"kwta{n}", k=item[1], boost=boost))
        elif kind == "flatten":
            add(Flatten(f"flatten{n}"))
        else:
            raise ValueError(f"unknown layer kind {kind!r} in spec item {item!r}")
    if pending:
        finish_overlay(False)
    layers = insert_adapters(layers, mode, densify_at="consumer")
    net = Network(name, TensorSpec(tuple(input_shape), "int8", 1 / 64), layers,
                  meta={"mode": mode, "seed": seed, "generator": "cosparse.compiler.zoo.random_network"})
    net.specs()
    return net
