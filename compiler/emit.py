"""Memory images of a core: what its memories hold, as files for the tools and the loader.

:func:`write_images` writes one ``.hex`` file per memory (for ``$readmemh``,
icebram and ecpbram), the binary bundle of :mod:`cosparse.compiler.images`
for the run-time loader, and ``index.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from amaranth.hdl import Const, Fragment, Shape
from amaranth.lib import data
from amaranth.lib.memory import Memory

from .images import MemoryImage, pack_bundle

__all__ = ["core_memories", "memory_images", "write_images"]


def core_memories(core) -> list[tuple[str, Memory]]:
    """Every memory of the elaborated ``core`` as ``(path, memory)``, in design order.

    ``path`` names the memory by the submodules that hold it, below the core
    (``s3_overlayengine.weights``).
    """
    found: list[tuple[str, Memory]] = []

    def walk(frag: Fragment, path: str) -> None:
        mems = [o for o in (frag.origins or ()) if isinstance(o, Memory)]
        if mems:
            found.append((path, mems[0]))
            return
        for sub, name, *_ in frag.subfragments:
            walk(sub, f"{path}.{name}" if path else str(name))

    walk(Fragment.get(core, None), "")
    return found


def memory_images(core) -> list[MemoryImage]:
    """Images of every memory of ``core`` with non-zero initial contents, in design order."""
    out: list[MemoryImage] = []
    for path, mem in core_memories(core):
        width = Shape.cast(mem.shape).width
        mask = (1 << width) - 1
        words = tuple(int(v) & mask for v in _raw(mem.data))
        if any(words):
            out.append(MemoryImage(path, width, words))
    # Memories that start empty in hardware (iCE40 SPRAM): their contents come from the loader.
    for port in getattr(core, "load_ports", []):
        if not port.has_init:
            out.append(MemoryImage(port.name, port.width, tuple(port.image)))
    return out


def _raw(mem_data) -> list[int]:
    """Initial words of a MemoryData as integers (layout or signed shapes included)."""
    vals = []
    for v in mem_data.init:
        if isinstance(v, int):
            vals.append(v)
        elif isinstance(v, data.Const):
            vals.append(v.as_bits())
        else:
            vals.append(Const.cast(v).value)
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
