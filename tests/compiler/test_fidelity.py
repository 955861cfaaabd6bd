"""The golden model against ONNX Runtime on quantized (QDQ) models, layer by layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


from cosparse.compiler import ir  # noqa: E402
from cosparse.compiler.fidelity import FidelityError, layer_agreement  # noqa: E402
from cosparse.compiler.frontend import import_onnx  # noqa: E402
from tests.helpers import ONNX_DATA as DATA, digits, quantize_qdq, rescaled_kwta_model  # noqa: E402,E501

ROOT = Path(__file__).resolve().parents[2]

# Every test network, both exporters, ONNX Runtime's QDQ with int8 symmetric activations
# and with its defaults (uint8, zero points): BatchNormalization and bias Add rounded
# twice (legacy exports), k-WTA by threshold and by gather/scatter, local and global
# (an NCHW map's ties), requantized k-WTA outputs.
MODELS = ["cnn_permute", "cnn_local", "cnn_global", "mlp_scatter", "mlp_threshold"]


@pytest.mark.parametrize("symmetric", [True, False], ids=["int8", "uint8"])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("model", MODELS)
def test_every_layer_reproduces_onnxruntime(model, exporter, symmetric, tmp_path):
    cal, x, _ = digits(model)
    path = quantize_qdq(DATA / f"{model}_{exporter}.onnx", tmp_path / "qdq.onnx", cal[:128],
                        symmetric=symmetric)
    net = import_onnx(path)
    kwtas = [layer for layer in net.layers if isinstance(layer, ir.KWTALayer)]
    assert kwtas and all(layer.key_shift is not None for layer in kwtas if layer.boost is not None)
    fid = layer_agreement(path, net, x)
    compared = [a for a in fid.layers if a.equal is not None]
    assert len(compared) >= 3
    # measured on 200 digits: 100.000% at every layer, chained and alone, on all 20
    assert fid.worst_alone() == 1.0, [(a.layer, a.alone) for a in compared]
    assert fid.worst() == 1.0, [(a.layer, a.equal) for a in compared]
    assert fid.top1 == 1.0


def test_threshold_form_keeps_ties_and_quantized_keys(tmp_path):
    """The threshold form gets the threshold tie rule; the QDQ key gets quantized keys."""
    cal, _, _ = digits("cnn_permute")
    path = quantize_qdq(DATA / "cnn_permute_legacy.onnx", tmp_path / "qdq.onnx", cal[:128])
    net = import_onnx(path)
    kw = next(layer for layer in net.layers if isinstance(layer, ir.LocalKWTA))
    assert kw.tie_rule == "threshold" and kw.winners == min(2 * kw.k, kw.boost.size)
    assert kw.key_bits() == 8
    info = net.meta["kwta"][kw.name]
    assert info["key"] == "quantized" and info["max_winners"] == kw.winners
    # the float model (no QDQ): exact keys, the tie rule of its form all the same
    fnet = import_onnx(DATA / "cnn_permute_legacy.onnx", calibration=cal)
    fkw = next(layer for layer in fnet.layers if isinstance(layer, ir.LocalKWTA))
    assert fkw.key_shift is None and fkw.tie_rule == "threshold"


def test_scatter_form_keeps_exactly_k(tmp_path):
    cal, _, _ = digits("mlp_scatter")
    path = quantize_qdq(DATA / "mlp_scatter_dynamo.onnx", tmp_path / "qdq.onnx", cal[:128])
    net = import_onnx(path)
    assert all(layer.tie_rule == "lower-index" for layer in net.layers
               if isinstance(layer, ir.KWTALayer))


def test_float_model_and_bad_inputs_refused(tmp_path):
    cal, x, _ = digits("cnn_permute")
    fnet = import_onnx(DATA / "cnn_permute_legacy.onnx", calibration=cal)
    with pytest.raises(FidelityError, match="not imported from a quantized"):
        layer_agreement(DATA / "cnn_permute_legacy.onnx", fnet, x)
    path = quantize_qdq(DATA / "cnn_permute_legacy.onnx", tmp_path / "qdq.onnx", cal[:128])
    net = import_onnx(path)
    with pytest.raises(FidelityError, match=r"inputs must be float \[N, 1, 8, 8\]"):
        layer_agreement(path, net, x[:, 0])


def test_script_prints_layers_and_fails_below_the_bound(tmp_path):
    cal, x, _ = digits("mlp_scatter")
    path = quantize_qdq(DATA / "mlp_scatter_dynamo.onnx", tmp_path / "qdq.onnx", cal[:128])
    np.save(tmp_path / "x.npy", x[:50])
    script = ROOT / "scripts" / "fidelity.py"
    ok = subprocess.run([sys.executable, str(script), str(path), "--inputs",
                         str(tmp_path / "x.npy"), "--min", "0.99", "--json",
                         str(tmp_path / "f.json")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "overlay_linear" in ok.stdout and "top-1 agreement" in ok.stdout
    assert (tmp_path / "f.json").exists()
    # a bound no layer can meet fails with exit 1; a missing model with exit 2, one line
    bad = subprocess.run([sys.executable, str(script), str(path), "--inputs",
                          str(tmp_path / "x.npy"), "--min", "1.01"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "agrees on" in bad.stderr
    missing = subprocess.run([sys.executable, str(script), str(tmp_path / "none.onnx"),
                              "--inputs", str(tmp_path / "x.npy")], capture_output=True, text=True)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_kwta_output_requantized_to_its_own_scale(tmp_path):
    """The model requantizes the winners (s1 -> s2): the IR's k-WTA rescales them too."""
    rng = np.random.default_rng(8)
    path = tmp_path / "rescale.onnx"
    rescaled_kwta_model(path, rng)
    net = import_onnx(path)
    kw = next(la for la in net.layers if isinstance(la, ir.KWTALayer))
    assert kw.rescale is not None and kw.out_scale == pytest.approx(0.037)
    fid = layer_agreement(path, net, rng.uniform(-1, 1, (300, 12)).astype(np.float32))
    row = next(a for a in fid.layers if a.layer == kw.name)
    assert row.equal is not None and row.equal >= 0.999, fid.layers
    assert fid.worst() >= 0.999 and fid.top1 >= 0.99
