"""The host runtime's recovery, against a board modelled in Python.

:class:`ModelBoard` answers the host-link protocol as the gateware does (the
seal survives a reset, a reset sets STATUS's 'reset' flag, a damaged frame is
answered with its code) and is told which requests to spoil: a reset while
it handles one (no answer; a LOAD leaves the weights unsealed), line noise
(a CRC answer), a corrupted answer. ``cosparse run`` must answer every input
as the golden model does, or end in one paragraph when it cannot.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from cosparse.boards import runtime
from cosparse.boards.runtime import Device, HostLinkError, LinkLayout
from cosparse.compiler import api
from cosparse.compiler.cli import main
from cosparse.hw.protocol import (HEADER_FORMAT, Code, Command, Status, response_frame)
from cosparse.sim import golden

from ..helpers import compile_tiny


class ModelBoard:
    """A pyserial-like port with a board behind it; ``faults`` maps a request's number
    (from 0) to ``reset``, ``noise`` or ``garble``."""

    def __init__(self, folder, faults: dict[int, str]):
        self.acc = api.load(folder)
        self.layout = LinkLayout.read(folder)
        self.faults = dict(faults)
        self.out = bytearray()
        self.requests = 0
        self.sealed, self.weights_id, self.inferences, self.reset_seen = False, 0, 0, True
        self.log: list[tuple[str, str]] = []

    # pyserial's side
    def write(self, frame: bytes) -> int:
        cmd, n = struct.unpack(HEADER_FORMAT, frame[1:4])
        payload = bytes(frame[4:4 + n])
        k, self.requests = self.requests, self.requests + 1
        fault = self.faults.pop(k, None)
        self.log.append((Command(cmd).name, fault or "ok"))
        if fault == "noise":
            self.out += response_frame(Code.CRC)
        elif fault == "reset":
            if cmd == Command.LOAD:
                self.sealed = False  # words written, the seal cleared: then the reset
            self.inferences, self.reset_seen = 0, True
        else:
            answer = self.answer(cmd, payload)
            if fault == "garble":
                answer = bytearray(answer)
                answer[-1] ^= 0x40
            self.out += answer
        return len(frame)

    def read(self, n: int) -> bytes:
        data, self.out = bytes(self.out[:n]), self.out[n:]
        return data

    def close(self) -> None:
        pass

    def answer(self, cmd: int, payload: bytes) -> bytes:
        lay = self.layout
        if cmd == Command.STATUS:
            st = Status(1, self.sealed, lay.needs_load, 0, lay.design_id, self.weights_id,
                        self.inferences, 0, 0, 0, self.reset_seen)
            self.reset_seen = False
            return response_frame(Code.OK, st.pack())
        if cmd == Command.LOAD:
            self.sealed = False
            return response_frame(Code.OK)
        if cmd == Command.SEAL:
            self.sealed, self.weights_id = True, struct.unpack("<I", payload)[0]
            return response_frame(Code.OK)
        assert cmd == Command.INFER
        if not self.sealed:
            return response_frame(Code.NOT_LOADED)
        g, w = lay.in_group_size, lay.in_width
        assert lay.in_offset == 0  # an int8 input: the bytes are the values
        x = np.frombuffer(payload, np.int8).reshape(lay.in_groups, -(-g // w) * w)[:, :g]
        y = golden.run(self.acc.network, x.reshape(1, *lay.input_shape))[0]
        per = -(-lay.out_group_size // lay.out_width) * lay.out_width
        beats = np.zeros((lay.out_groups, per), np.int64)
        beats[:, :lay.out_group_size] = np.asarray(y).reshape(lay.out_groups, -1)
        dt = {32: "<i4", 16: "<i2"}.get(lay.out_bits, "i1")
        self.inferences += 1
        return response_frame(Code.OK, beats.astype(dt).tobytes() + struct.pack("<II", 100, 11))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    _, _, x, out = compile_tiny(tmp_path_factory.mktemp("faults"), "icebreaker", spram_bits=64)
    return out, x


def _run_with(monkeypatch, folder, faults, *args) -> tuple[int, ModelBoard]:
    out, x = folder
    board = ModelBoard(out, faults)

    def open_(outdir, url, *, baud=None, timeout=5.0, **options):
        return Device(board, LinkLayout.read(outdir), timeout=timeout,
                      **{**options, "quiet": 0.01})

    monkeypatch.setattr(Device, "open", staticmethod(open_))
    y = out.parent / "y.npy"
    y.unlink(missing_ok=True)
    code = main(["run", str(out), "--port", "model://", "--input", str(x), "-o", str(y),
                 "--timeout", "0.3", *args])
    return code, board


def test_resets_noise_and_garbled_answers_are_retried(monkeypatch, folder, capsys):
    out, x = folder
    # 0 STATUS, 1-4 LOADs, 5 SEAL, 6.. INFERs
    faults = {2: "reset", 3: "noise", 6: "garble", 8: "reset", 10: "noise"}
    code, board = _run_with(monkeypatch, folder, faults)
    assert code == 0, capsys.readouterr().err
    y, want = np.load(out.parent / "y.npy"), api.load(out).golden(np.load(x))
    np.testing.assert_array_equal(y, want)
    stats = json.loads((out.parent / "y.json").read_text())
    assert stats["retries"] == 5 and stats["reloads"] == 0
    assert "the device was reset: weights still sealed" in capsys.readouterr().out


def test_weights_lost_to_a_reset_are_loaded_again(monkeypatch, folder):
    """The seal lost after the run's first STATUS (a reset amid another host's LOAD): the
    INFER is refused NOT_LOADED, the run loads the bundle again and goes on; with
    load='never' the refusal is the answer."""
    out, x = folder
    board = ModelBoard(out, {})
    board.sealed = True  # loaded by an earlier run
    monkeypatch.setattr(Device, "open", staticmethod(
        lambda outdir, url, *, baud=None, timeout=5.0, **options:
        Device(board, LinkLayout.read(outdir), timeout=timeout, **options)))
    answer = board.answer

    def lose_seal_after_status(cmd, payload):
        r = answer(cmd, payload)
        if cmd == Command.STATUS:
            board.sealed = False
        return r

    board.answer = lose_seal_after_status
    acc = api.load(out)
    res = acc.run(np.load(x), "model://", timeout=0.3, load="auto")
    np.testing.assert_array_equal(res.outputs, acc.golden(np.load(x)))
    assert res.reloads == 1 and res.loaded_bytes > 0 and res.retries == 0
    with pytest.raises(runtime.DeviceError, match="weights not loaded"):
        acc.run(np.load(x), "model://", timeout=0.3, load="never")


def test_a_board_that_never_answers_ends_in_one_paragraph(monkeypatch, folder, capsys):
    code, board = _run_with(monkeypatch, folder, {k: "reset" for k in range(10)},
                            "--retries", "2")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "no complete answer to STATUS" in err and len(err.strip().splitlines()) == 1
    assert [c for c, _ in board.log] == ["STATUS"] * 3  # sent once and retried twice
    assert not (folder[0].parent / "y.npy").exists()


def test_retries_zero_gives_up_at_once(monkeypatch, folder, capsys):
    code, board = _run_with(monkeypatch, folder, {0: "noise"}, "--retries", "0")
    assert code == 2 and "CRC mismatch" in capsys.readouterr().err
    assert len(board.log) == 1


def test_negative_retries_are_refused(monkeypatch, folder, capsys):
    code, board = _run_with(monkeypatch, folder, {}, "--retries", "-1")
    assert code == 2 and "retries must be 0 or more, got -1" in capsys.readouterr().err
    assert board.log == []  # nothing was sent


def test_refusals_are_not_retried(folder):
    """A refusal that is not a damaged frame (here NOT_LOADED) is the device's answer."""
    out, x = folder
    board = ModelBoard(out, {})
    dev = Device(board, LinkLayout.read(out), timeout=0.3, quiet=0.01)
    with pytest.raises(runtime.DeviceError) as e:
        dev.infer(np.zeros(LinkLayout.read(out).input_shape, np.int8))
    assert e.value.code == Code.NOT_LOADED and dev.retried == 0 and len(board.log) == 1
    with pytest.raises(HostLinkError):
        Device(ModelBoard(out, {0: "garble", 1: "garble"}), LinkLayout.read(out), timeout=0.3,
               retries=1, quiet=0.01).status()


@pytest.mark.parametrize("spec", ["soon", "byte:0", "infer:x", "byte"])
def test_serve_refuses_a_bad_reset_moment(folder, capsys, spec):
    out, _ = folder
    assert main(["serve", str(out), "--reset-at", spec]) == 2
    err = capsys.readouterr().err
    assert "a reset moment is byte:N" in err and repr(spec) in err and "Traceback" not in err
