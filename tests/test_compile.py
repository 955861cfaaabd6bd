"""``cosparse compile / sim / golden / boards`` on the bundled digits network and on bad input."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cosparse.compiler import ir
from cosparse.compiler.folding import Folding

from .helpers import run_cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    out = tmp / "build"
    r = run_cli("compile", EXAMPLES / "digits_cs.onnx", "--board", "sim", "-o", out,
            "--calibration", EXAMPLES / "digits_calib.npy")
    assert r.returncode == 0, r.stderr
    test = np.load(EXAMPLES / "digits_test.npz")
    np.save(tmp / "x.npy", test["x"])
    np.save(tmp / "x8.npy", test["x"][:8])
    return tmp, out, test


def test_compile_writes_manifest_rtl_and_report(digits):
    _, out, _ = digits
    net = ir.load(out)
    assert net.meta["board"] == "sim" and "folding" in net.meta
    assert (out / "rtl" / "cosparse_core.v").read_text().count("module cosparse_core") == 1
    report = (out / "report.md").read_text()
    assert "Predicted interval" in report and "fc1" in report
    index = json.loads((out / "images" / "index.json").read_text())
    # a weight memory per layer on an overlay engine; the first conv's weights are logic
    folding = Folding.from_dict(net.meta["folding"])
    assert folding.logic_layers == [net.layers[1].name]
    assert "| logic | - |" in report
    assert sum("overlayengine.weights" in m["name"] for m in index) == 2
    assert (out / "images" / "bundle.bin").stat().st_size > 0
    assert not list(out.parent.glob(".build.tmp-*"))


def test_golden_accuracy_within_a_point_of_float(digits):
    tmp, out, test = digits
    r = run_cli("golden", out, "--input", tmp / "x.npy", "-o", tmp / "y.npy")
    assert r.returncode == 0, r.stderr
    y = np.load(tmp / "y.npy")
    assert y.shape == (360, 10) and y.dtype == np.float32
    acc = (y.argmax(axis=1) == test["y"]).mean()
    float_acc = json.loads((EXAMPLES / "digits_cs.json").read_text())["accuracy"]["torch_test"]
    assert acc >= float_acc - 0.01, (acc, float_acc)


def test_sim_equals_golden_and_the_cycle_model(digits):
    tmp, out, _ = digits
    assert run_cli("golden", out, "--input", tmp / "x8.npy", "-o", tmp / "g.npy").returncode == 0
    r = run_cli("sim", out, "--input", tmp / "x8.npy", "-o", tmp / "s.npy")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(tmp / "s.npy"), np.load(tmp / "g.npy"))
    stats = json.loads((tmp / "s.json").read_text())
    assert stats["latency_cycles"] > stats["interval_cycles"] > 0
    assert abs(stats["interval_cycles"] - stats["predicted_interval_cycles"]) \
        <= 0.01 * stats["predicted_interval_cycles"]
    assert (out / "sim_build").is_dir()  # the Verilator model is kept with the build


def test_boards_lists_the_targets():
    r = run_cli("boards")
    assert r.returncode == 0
    for name in ("icebreaker", "ulx3s-85f", "orangecrab-25f", "arty-a7-100", "sim"):
        assert name in r.stdout


def _model_with_unsupported_op(path):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Sigmoid", ["input"], ["y"], name="act")], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("case, message", [
    ("unsupported", "Sigmoid"),
    ("truncated", "digits_cs.onnx"),
    ("board", "unknown board"),
    ("calibration", "calibration"),
    ("too large", "does not fit icebreaker"),
])
def test_compile_errors_are_one_paragraph_and_leave_nothing(tmp_path, case, message):
    model, board, extra = EXAMPLES / "digits_cs.onnx", "sim", ["--calibration",
                                                               EXAMPLES / "digits_calib.npy"]
    if case == "unsupported":
        model = tmp_path / "m.onnx"
        _model_with_unsupported_op(model)
    elif case == "truncated":
        model = tmp_path / "digits_cs.onnx"
        model.write_bytes((EXAMPLES / "digits_cs.onnx").read_bytes()[:5000])
    elif case == "board":
        board = "nosuchboard"
    elif case == "too large":  # every weight kept: 270 kbit against 120
        board, extra = "icebreaker", extra + ["--mode", "dense"]
    elif case == "calibration":
        np.save(tmp_path / "c.npy", np.zeros((4, 8, 8), np.float32))
        extra = ["--calibration", tmp_path / "c.npy"]
    out = tmp_path / "out"
    r = run_cli("compile", model, "--board", board, "-o", out, *extra)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_compile_refuses_to_overwrite_a_foreign_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    r = run_cli("compile", EXAMPLES / "digits_cs.onnx", "--board", "sim", "-o", out,
            "--calibration", EXAMPLES / "digits_calib.npy")
    assert r.returncode == 2 and "not a cosparse build" in r.stderr
    assert (out / "precious.txt").read_text() == "keep me"


def test_sim_rejects_a_wrong_input_shape(digits):
    tmp, out, _ = digits
    np.save(tmp / "bad.npy", np.zeros((2, 1, 9, 9), np.float32))
    r = run_cli("sim", out, "--input", tmp / "bad.npy", "-o", tmp / "bad_y.npy")
    assert r.returncode == 2 and "has shape (2, 1, 9, 9)" in r.stderr
    assert not (tmp / "bad_y.npy").exists()


def test_sim_waves_writes_a_trace_into_the_build(digits):
    tmp, out, _ = digits
    np.save(tmp / "x2.npy", np.load(tmp / "x8.npy")[:2])
    r = run_cli("sim", out, "--input", tmp / "x2.npy", "-o", tmp / "w.npy", "--waves")
    assert r.returncode == 0, r.stderr
    traces = [p for ext in ("fst", "vcd") for p in (out / "sim_build").glob(f"*-waves/*.{ext}")]
    assert traces and traces[0].stat().st_size > 1000
    assert str(traces[0]) in r.stdout


def test_config_overrides_a_layers_fold(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"folding": {"net.fc1": {"entries": 2, "lanes_per_beat": 16}}}))
    out = tmp_path / "out"
    r = run_cli("compile", EXAMPLES / "digits_cs.onnx", "--board", "sim", "-o", out,
            "--calibration", EXAMPLES / "digits_calib.npy", "--config", cfg)
    assert r.returncode == 0, r.stderr
    fold = ir.load(out).meta["folding"]["layers"]["net.fc1"]
    assert (fold["entries"], fold["lanes_per_beat"]) == (2, 16)
    cfg.write_text(json.dumps({"folding": {"nope": {"entries": 2}}}))
    r = run_cli("compile", EXAMPLES / "digits_cs.onnx", "--board", "sim", "-o", tmp_path / "o2",
            "--calibration", EXAMPLES / "digits_calib.npy", "--config", cfg)
    assert r.returncode == 2 and "unknown layers ['nope']" in r.stderr
    assert not (tmp_path / "o2").exists()


def _edit_manifest(folder: Path) -> None:
    doc = json.loads((folder / "manifest.json").read_text())
    doc["meta"]["input_scale"] *= 2  # a plausible edit: every input would quantize wrong
    (folder / "manifest.json").write_text(json.dumps(doc, indent=1))


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def _edit_first_image(folder: Path) -> None:
    hexfile = sorted((folder / "images").glob("*.hex"))[0]
    lines = hexfile.read_text().splitlines()
    lines[0] = ("1" if lines[0][0] != "1" else "2") + lines[0][1:]
    hexfile.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit, message", [
    (_edit_manifest, "manifest.json was edited after compiling"),
    (lambda f: _flip_a_byte(f / "tensors.npz"), "tensors.npz was edited after compiling"),
    (_edit_first_image, ".hex was edited after compiling"),
    (lambda f: (f / "images" / "bundle.bin").unlink(), "bundle.bin is missing"),
    (lambda f: (f / "images" / "extra.hex").write_text("00\n"), "extra.hex was added"),
])
def test_an_edited_compiled_folder_is_refused(digits, tmp_path, edit, message):
    import shutil

    tmp, out, _ = digits
    folder = tmp_path / "copy"
    shutil.copytree(out, folder)
    r = run_cli("golden", folder, "--input", tmp / "x8.npy", "-o", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr  # the copy as compiled runs
    (tmp_path / "y.npy").unlink()
    edit(folder)
    for cmd in (["golden"], ["sim"]):
        r = run_cli(*cmd, folder, "--input", tmp / "x8.npy", "-o", tmp_path / "y.npy")
        assert r.returncode == 2 and message in r.stderr and "compile the model again" in \
            r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "y.npy").exists()
