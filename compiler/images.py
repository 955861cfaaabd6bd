"""Memory images: the initial contents of a generated core's memories, and their file formats.

Every memory with initial contents (overlay weights and kernel ids,
requantization constants, boost tables) has one image; memories that start
at zero and only hold run-time state (accumulators, FIFOs, histograms, frame
stores) have none. :mod:`cosparse.compiler.emit` finds them in a core; this
module is the format alone (no Amaranth), for the host runtime too.

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

import struct
import zlib
from dataclasses import dataclass

from .errors import CosparseError

__all__ = ["MemoryImage", "pack_bundle", "read_bundle", "BundleError", "MAGIC", "VERSION"]

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
