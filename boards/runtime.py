"""Host runtime: drive a board (or its Verilator model) over the UART host link.

The protocol is :mod:`cosparse.hw.protocol`'s; the layout of the frames (input
beats, output beats, load targets) comes from ``link.json`` in the compiled
folder, written by ``cosparse compile``. A port is anything pyserial's
``serial_for_url`` opens: ``/dev/ttyUSB1`` for a board, ``socket://host:port``
for the simulated board top of ``cosparse.boards.serial_bridge``.

Typical use::

    dev = Device.open(outdir, "/dev/ttyUSB1")
    dev.ensure_loaded()          # load the weight bundle if the design needs it
    y, latency = dev.infer_frames(x_int8)
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cosparse.compiler.errors import CosparseError
from cosparse.compiler.images import read_bundle
from cosparse.hw.protocol import (CRC_FORMAT, ERRORS, HEADER_FORMAT, INFER_TRAILER_FORMAT,
                                  MAX_LOAD_BYTES, Code, SEAL_FORMAT, STATUS_BYTES, SYNC_RESPONSE,
                                  Command, Status, crc16, load_payload, request_frame)

__all__ = ["HostLinkError", "DeviceError", "Status", "LinkLayout", "Device", "request_frame",
           "crc16"]


class HostLinkError(CosparseError):
    """The link failed: no answer, a malformed or corrupted response."""


class DeviceError(CosparseError):
    """The device answered a request with an error code."""

    def __init__(self, code: int, what: str):
        self.code = code
        super().__init__(f"the device refused {what}: error {code} "
                         f"({ERRORS.get(code, 'unknown error code')})")


@dataclass(frozen=True)
class LinkLayout:
    """What the host needs to know of a compiled design (``link.json``)."""

    design_id: int
    baud: int
    in_width: int
    in_groups: int
    in_group_size: int
    out_width: int
    out_bits: int
    out_groups: int
    out_group_size: int
    targets: tuple[dict, ...]  # name, width, depth, has_init
    input_shape: tuple[int, ...]  # IR input shape
    output_shape: tuple[int, ...]
    #: The bytes sent are ``value - in_offset`` (int9 inputs: 0..255); 0: int8 bytes.
    in_offset: int = 0

    @property
    def in_bytes(self) -> int:
        return self.in_groups * -(-self.in_group_size // self.in_width) * self.in_width

    @property
    def out_beats(self) -> int:
        return self.out_groups * -(-self.out_group_size // self.out_width)

    @property
    def out_bytes(self) -> int:
        return self.out_beats * self.out_width * self.out_bits // 8

    @property
    def needs_load(self) -> bool:
        return any(not t["has_init"] for t in self.targets)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "LinkLayout":
        names = {f for f in cls.__dataclass_fields__}
        d = {k: v for k, v in d.items() if k in names}  # the rest is for the build
        d["targets"] = tuple(d["targets"])
        d["input_shape"], d["output_shape"] = tuple(d["input_shape"]), tuple(d["output_shape"])
        return cls(**d)

    @classmethod
    def read(cls, outdir: str | Path) -> "LinkLayout":
        path = Path(outdir) / "link.json"
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise CosparseError(f"{outdir} has no link.json: compile the model with "
                                "`cosparse compile` first") from None
        except (ValueError, KeyError, TypeError) as e:
            raise CosparseError(f"{path} is not a valid host-link description ({e})") from None

    def encode_input(self, frame: np.ndarray) -> bytes:
        """One int8 frame (IR layout) to the INFER payload: input beats, padding lanes zero."""
        g, w = self.in_group_size, self.in_width
        per = -(-g // w) * w
        x = np.zeros((self.in_groups, per), np.uint8)
        # one byte a value: int8 in two's complement, an int9 input as value - in_offset
        x[:, :g] = (np.asarray(frame, np.int64).reshape(self.in_groups, g) - self.in_offset) % 256
        return x.tobytes()

    def decode_output(self, payload: bytes) -> np.ndarray:
        """The output part of an INFER response to one frame (IR layout, int8 or int32)."""
        dt = {32: np.dtype("<i4"), 16: np.dtype("<i2")}.get(self.out_bits, np.dtype(np.int8))
        y = np.frombuffer(payload[:self.out_bytes], dt)
        per = -(-self.out_group_size // self.out_width) * self.out_width
        y = y.reshape(self.out_groups, per)[:, :self.out_group_size]
        return y.reshape(self.output_shape).astype(
            {32: np.int32, 16: np.int16}.get(self.out_bits, np.int8))


class Device:
    """One device (board or simulation) behind a serial port.

    Parameters
    ----------
    port
        An open pyserial port (``read``, ``write``; its timeout bounds each read).
    layout : LinkLayout
    timeout : float
        Seconds to wait for a whole response.
    retries : int
        Times a request is sent again after no answer, a corrupted one, or the device's
        report of a damaged frame (CRC, length, truncated): every request is idempotent,
        so a retry after line noise or a reset of the board is safe.
    quiet : float
        Seconds of silence on the line before a retry: longer than the device's
        truncation timeout (50 ms on a board), so a frame it was receiving has ended.
    progress : callable, optional
        Told of each retry.

    Attributes
    ----------
    retried : int
        Requests sent again so far.
    """

    #: Device answers that mean the request was damaged on the way, not refused.
    DAMAGED = (Code.CRC, Code.LENGTH, Code.TRUNCATED)

    def __init__(self, port, layout: LinkLayout, *, timeout: float = 5.0, retries: int = 2,
                 quiet: float = 0.25, progress: Callable[[str], None] | None = None):
        if retries < 0:
            raise CosparseError(f"retries must be 0 or more, got {retries}")
        self.port, self.layout, self.timeout = port, layout, timeout
        self.retries, self.quiet, self.progress = retries, quiet, progress
        self.retried = 0

    @classmethod
    def open(cls, outdir: str | Path, url: str, *, baud: int | None = None,
             timeout: float = 5.0, **options) -> "Device":
        """Open ``url`` with pyserial at the design's baud rate (``options``: ``retries``,
        ``quiet``, ``progress``)."""
        import serial  # only a host that opens a port needs pyserial

        layout = LinkLayout.read(outdir)
        try:
            port = serial.serial_for_url(url, baudrate=baud or layout.baud, timeout=0.05)
        except (serial.SerialException, ValueError, OSError) as e:
            raise HostLinkError(f"cannot open serial port {url!r}: {e}") from None
        try:
            return cls(port, layout, timeout=timeout, **options)
        except Exception:
            port.close()
            raise

    def close(self) -> None:
        self.port.close()

    # ------------------------------------------------------------------ frames
    def _read_exact(self, n: int, deadline: float, what: str) -> bytes:
        buf = b""
        while len(buf) < n:
            if time.monotonic() > deadline:
                raise HostLinkError(f"no complete answer to {what} within {self.timeout:g} s "
                                    f"(got {len(buf)} of {n} bytes); is the board programmed "
                                    "with this design and the port right?")
            buf += self.port.read(n - len(buf))
        return buf

    def resync(self) -> None:
        """Wait until the line has been silent for ``quiet`` seconds (at most ``timeout``),
        dropping what arrives: a stale or half-sent response, the answer to a frame the
        device saw start amid noise."""
        deadline = time.monotonic() + self.timeout
        last = time.monotonic()
        while time.monotonic() - last < self.quiet and time.monotonic() < deadline:
            if self.port.read(4096):
                last = time.monotonic()

    def request(self, cmd: str, payload: bytes = b"") -> bytes:
        """Send one request, return the response payload; :class:`DeviceError` on a refusal.

        A request that gets no answer, a corrupted one or a 'damaged frame' code is sent
        again, after :meth:`resync`, up to ``retries`` times."""
        attempt = 0
        while True:
            try:
                return self._exchange(cmd, payload)
            except (HostLinkError, DeviceError) as e:
                if (isinstance(e, DeviceError) and e.code not in self.DAMAGED) \
                        or attempt == self.retries:
                    raise
                attempt += 1
                self.retried += 1
                if self.progress:
                    reason = str(e).split(";")[0]
                    self.progress(f"{reason}; sending {cmd} again "
                                  f"(retry {attempt} of {self.retries})")
                self.resync()

    def _exchange(self, cmd: str, payload: bytes) -> bytes:
        self.port.write(request_frame(Command[cmd], payload))
        deadline = time.monotonic() + self.timeout
        while True:  # skip anything before the response's sync byte
            b = self._read_exact(1, deadline, cmd)
            if b[0] == SYNC_RESPONSE:
                break
        head = self._read_exact(3, deadline, cmd)
        code, n = struct.unpack(HEADER_FORMAT, head)
        rest = self._read_exact(n + 2, deadline, cmd)
        body = head + rest[:n]
        (crc,) = struct.unpack(CRC_FORMAT, rest[n:])
        if crc16(body) != crc:
            raise HostLinkError(f"the answer to {cmd} is corrupted (CRC {crc16(body):04x}, "
                                f"received {crc:04x})")
        if code != 0:
            raise DeviceError(code, cmd)
        return rest[:n]

    # ------------------------------------------------------------------ commands
    def status(self) -> Status:
        payload = self.request("STATUS")
        if len(payload) != STATUS_BYTES:
            raise HostLinkError(f"STATUS answer has {len(payload)} bytes, expected {STATUS_BYTES}")
        return Status.unpack(payload)

    def check_design(self) -> Status:
        """STATUS, and refuse a device that runs another design."""
        st = self.status()
        if st.design_id != self.layout.design_id:
            raise HostLinkError(f"the device runs design {st.design_id:08x}, this folder is "
                                f"{self.layout.design_id:08x}: program the board with this "
                                "folder's bitstream")
        return st

    def load(self, target: int, address: int, words: list[int] | tuple[int, ...]) -> None:
        """Write ``words`` into load target ``target`` from ``address``, in frames."""
        t = self.layout.targets[target]
        wb = -(-t["width"] // 8)
        per = max(1, MAX_LOAD_BYTES // wb)
        for k in range(0, len(words), per):
            self.request("LOAD", load_payload(target, address + k, words[k:k + per], wb))

    def seal(self, weights_id: int) -> None:
        self.request("SEAL", struct.pack(SEAL_FORMAT, weights_id))

    def load_bundle(self, bundle: bytes, progress: Callable[[str], None] | None = None) -> int:
        """Load every target's image from a weight bundle, then seal; returns bytes sent."""
        images = {img.name: img for img in read_bundle(bundle, "weight bundle")}
        sent = 0
        for i, t in enumerate(self.layout.targets):
            img = images.get(t["name"])
            if img is None or img.width != t["width"] or img.depth != t["depth"]:
                raise CosparseError(f"the weight bundle has no image of {t['name']!r} "
                                    f"({t['width']} x {t['depth']}): it belongs to another design")
            if progress:
                progress(f"load {t['name']} ({img.depth} x {img.width} bits)")
            self.load(i, 0, img.words)
            sent += img.depth * -(-img.width // 8)
        self.seal(struct.unpack("<I", bundle[-4:])[0])
        return sent

    def infer(self, frame: np.ndarray) -> tuple[np.ndarray, int, int]:
        """One inference: (output frame, latency cycles, feed cycles)."""
        payload = self.request("INFER", self.layout.encode_input(frame))
        if len(payload) != self.layout.out_bytes + 8:
            raise HostLinkError(f"INFER answer has {len(payload)} bytes, expected "
                                f"{self.layout.out_bytes + 8}")
        latency, feed = struct.unpack(INFER_TRAILER_FORMAT, payload[-8:])
        return self.layout.decode_output(payload), latency, feed
