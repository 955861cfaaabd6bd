"""Memory images: the initial contents of every memory of a generated core.

The network core's memories are found by elaborating it and walking the
design: every memory with initial contents (overlay weights and kernel ids,
requantization constants, boost tables) gets one image; memories that start
at zero and only hold run-time state (accumulators, FIFOs, histograms, frame
stores) get none.

Two forms are written into ``images/``:

* ``<path>.hex``: one word per line, hexadecimal, most significant digit
  first, as ``$readmemh`` and ``icebram``/``ecpbram`` read them;
* ``bundle.bin``: all images in one file for a run-time loader (iCE40 SPRAM
  has no initial contents), little-endian::

      magic "CSPB" | u16 version | u16 count
      count x ( u16 name length | name (UTF-8) | u16 width | u32 depth |
                depth x ceil(width / 8) bytes per word )
      u32 CRC-32 (zlib) of everything before it

and ``index.json`` (name, width, depth, file of each image).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import CosparseError

__all__ = ["MemoryImage", "memory_images", "write_images", "read_bundle", "BundleError",
           "MAGIC", "VERSION"]

MAGIC = b"CSPB"
VERSION = 1


class BundleError(CosparseError):
    """A weight bundle that is truncated, corrupted or of another format."""


@dataclass(frozen=True)
class MemoryImage:
    name: str  # hierarchical path of the memory in the core
    width: int
    words: tuple[int, ...]  # unsigned, one per address

    @property
    def depth(self) -> int:
        return len(self.words)


def memory_images(core) -> list[MemoryImage]:
    """Images of every memory of ``core`` with non-zero initial contents, in design order."""
    # Imported here: reading a bundle (the host runtime) needs no Amaranth.
    from amaranth.hdl import Fragment, Shape
    from amaranth.hdl._mem import MemoryInstance

    out: list[MemoryImage] = []

    def walk(frag, path: str) -> None:
        if isinstance(frag, MemoryInstance):
            data = frag._data
            width = Shape.cast(data.shape).width
            mask = (1 << width) - 1
            words = tuple(int(v) & mask for v in _raw(data))
            if any(words):
                out.append(MemoryImage(path, width, words))
        for sub, name, _ in frag.subfragments:
            walk(sub, f"{path}.{name}" if path else str(name))

    walk(Fragment.get(core, None), "")
    # Memories that start empty in hardware (iCE40 SPRAM): their contents come from the loader.
    for port in getattr(core, "load_ports", []):
        if not port.has_init:
            out.append(MemoryImage(port.name, port.width, tuple(port.image)))
    return out


def _raw(data) -> list[int]:
    """Initial words of a MemoryData as integers (struct or signed shapes included)."""
    from amaranth.hdl import Const
    vals = []
    for v in data.init:
        vals.append(Const.cast(v).value if not isinstance(v, int) else v)
    return vals


def write_images(core, folder: str | Path) -> list[MemoryImage]:
    """Write ``.hex`` files, ``bundle.bin`` and ``index.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = memory_images(core)
    index = []
    for img in images:
        digits = max(1, -(-img.width // 4))
        name = img.name.replace("/", ".")
        (folder / f"{name}.hex").write_text("".join(f"{w:0{digits}x}\n" for w in img.words))
        index.append({"name": img.name, "width": img.width, "depth": img.depth,
                      "file": f"{name}.hex"})
    (folder / "bundle.bin").write_bytes(pack_bundle(images))
    (folder / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return images


def pack_bundle(images: list[MemoryImage]) -> bytes:
    """The binary bundle of ``images`` (format in the module doc)."""
    parts = [MAGIC, struct.pack("<HH", VERSION, len(images))]
    for img in images:
        name = img.name.encode()
        nbytes = -(-img.width // 8)
        parts.append(struct.pack("<H", len(name)) + name + struct.pack("<HI", img.width, img.depth))
        parts.append(b"".join(w.to_bytes(nbytes, "little") for w in img.words))
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def read_bundle(data: bytes, what: str = "bundle") -> list[MemoryImage]:
    """Parse and check a bundle; :class:`BundleError` names what is wrong."""
    if len(data) < 12 or data[:4] != MAGIC:
        raise BundleError(f"{what} is not a cosparse weight bundle (no {MAGIC!r} header)")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        raise BundleError(f"{what} is corrupted or truncated: CRC-32 {zlib.crc32(body):08x}, "
                          f"stored {crc:08x}")
    version, count = struct.unpack_from("<HH", body, 4)
    if version != VERSION:
        raise BundleError(f"{what} has format version {version}; this cosparse reads {VERSION}")
    pos, images = 8, []
    try:
        for _ in range(count):
            (n,) = struct.unpack_from("<H", body, pos)
            name = body[pos + 2:pos + 2 + n].decode()
            pos += 2 + n
            width, depth = struct.unpack_from("<HI", body, pos)
            pos += 6
            nbytes = -(-width // 8)
            raw = body[pos:pos + depth * nbytes]
            if len(raw) != depth * nbytes:
                raise BundleError(f"{what}: image {name!r} is cut short")
            pos += depth * nbytes
            words = tuple(int.from_bytes(raw[i:i + nbytes], "little")
                          for i in range(0, len(raw), nbytes))
            images.append(MemoryImage(name, width, words))
    except struct.error:
        raise BundleError(f"{what} ends inside its image table") from None
    if pos != len(body):
        raise BundleError(f"{what} has {len(body) - pos} bytes after its last image")
    return images
