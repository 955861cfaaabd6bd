"""The host runtime end to end: ``cosparse run`` against the simulated board top.

The compiled folder's :class:`LinkTop` (UART, host link, loadable core) runs
in Verilator behind a TCP serial port (``cosparse serve``); ``cosparse run``
opens it with pyserial exactly as it opens a board's port, finds the weights
not loaded (the SPRAM-style memory starts empty), loads the bundle, runs the
inputs and writes outputs that must equal the golden model's.
"""

import json
import threading
import time

import numpy as np
import pytest

from cosparse.compiler.build import compile_model
from cosparse.compiler.cli import main
from cosparse.boards.serial_bridge import serve

from ..helpers import quantize_qdq, write_tiny


def serve_in_background(out, tmp_path, **options) -> tuple[int, threading.Thread, dict]:
    """``serve(out, **options)`` in a thread; returns its TCP port once it listens, the
    thread and the dict that gets its result (``"serve"``)."""
    port_file = tmp_path / "port"
    result = {}

    def session():
        result["serve"] = serve(out, port_file=port_file, build_root=tmp_path / "sim",
                                progress=lambda s: None, **options)

    th = threading.Thread(target=session, daemon=True)
    th.start()
    deadline = time.monotonic() + 600
    while not port_file.exists():
        assert th.is_alive() and time.monotonic() < deadline, "the simulated board did not start"
        time.sleep(0.5)
    return int(port_file.read_text()), th, result


@pytest.mark.parametrize("quantized", [False, True])
def test_run_over_simulated_serial_equals_golden(tmp_path, quantized):
    """A float model calibrated here, and one ONNX Runtime quantized with its defaults
    (uint8 activations with zero points: int9 values, the input sent as value - lo)."""
    model, cal, x = write_tiny(tmp_path)
    out = tmp_path / "out"
    if quantized:
        model = quantize_qdq(model, tmp_path / "u8.onnx", np.load(cal), symmetric=False)
    compile_model(model, board="icebreaker", outdir=out,
                  calibration=None if quantized else np.load(cal),
                  spram_bits=64, progress=lambda s: None)
    if quantized:  # the input is int9: the host sends value - lo, lo the range's low end
        spec = json.loads((out / "manifest.json").read_text())["input"]
        assert spec["dtype"] == "int9"
        assert json.loads((out / "link.json").read_text())["in_offset"] == spec["range"][0]
    link = json.loads((out / "link.json").read_text())
    assert any(not t["has_init"] for t in link["targets"])

    # two clients, one after the other: the board keeps its weights
    port, th, result = serve_in_background(out, tmp_path, clients=2)
    y, g = tmp_path / "y.npy", tmp_path / "g.npy"
    assert main(["run", str(out), "--port", f"socket://127.0.0.1:{port}", "--input", str(x),
                 "-o", str(y), "--timeout", "120"]) == 0
    y2 = tmp_path / "y2.npy"  # a second client: served, and the weights are still there
    assert main(["run", str(out), "--port", f"socket://127.0.0.1:{port}", "--input", str(x),
                 "-o", str(y2), "--timeout", "120"]) == 0
    th.join(timeout=300)
    assert main(["golden", str(out), "--input", str(x), "-o", str(g)]) == 0
    np.testing.assert_array_equal(np.load(y), np.load(g))
    np.testing.assert_array_equal(np.load(y2), np.load(g))
    stats = json.loads(y.with_suffix(".json").read_text())
    assert stats["inferences"] == 5 and all(c > 0 for c in stats["latency_cycles"])
    assert stats["loaded_bytes"] > 0
    assert json.loads(y2.with_suffix(".json").read_text())["loaded_bytes"] == 0
    s = result["serve"]
    assert s["clients"] == 2
    assert s["bytes_to_device"] > 0 and s["bytes_from_device"] > 0 and s["cycles"] > 0


def test_run_recovers_from_resets_amid_a_load_and_an_inference(tmp_path):
    """The board's reset button pressed amid the first LOAD frame and amid the second
    inference: `cosparse run` gets no answer (or a damaged-frame code), waits for a
    silent line, sends the request again, and every output is the golden model's."""
    model, cal, x = write_tiny(tmp_path)
    out = tmp_path / "out"
    compile_model(model, board="icebreaker", outdir=out, calibration=np.load(cal),
                  spram_bits=64, progress=lambda s: None)
    port, th, result = serve_in_background(out, tmp_path, clients=1,
                                           resets=("byte:20", "infer:2"))
    y, g = tmp_path / "y.npy", tmp_path / "g.npy"
    assert main(["run", str(out), "--port", f"socket://127.0.0.1:{port}", "--input", str(x),
                 "-o", str(y), "--timeout", "4"]) == 0
    th.join(timeout=300)
    assert main(["golden", str(out), "--input", str(x), "-o", str(g)]) == 0
    np.testing.assert_array_equal(np.load(y), np.load(g))
    stats = json.loads(y.with_suffix(".json").read_text())
    assert stats["inferences"] == 5 and stats["retries"] >= 2
    assert result["serve"]["resets"] == 2
