"""Stream payloads shared by every unit, and their Python encoders.

Two kinds of stream connect the units (``amaranth.lib.stream``, payload a
``data.StructLayout``):

Dense stream (:func:`dense_layout`)
    ``width`` consecutive elements of a group per beat (for a feature map in
    HWC order: channels ``b*width .. b*width+width-1`` of one position),
    ``last`` on the final beat of a group (a position, or a whole vector),
    ``end`` on the final beat of a frame (one inference). A group of ``C``
    elements takes ``ceil(C / width)`` beats; padding elements of the last
    beat are zero.
Sparse stream (:func:`sparse_layout`)
    Up to ``R`` active elements per beat as ``(index, value)`` entries, the
    first ``count`` of them valid, in increasing index order; ``last`` and
    ``end`` as above. A group may be empty: one beat with ``count == 0`` and
    ``last`` set (the only beat that may have no entries). Indices are the
    element's position within its group (channel for a map position, element
    for a vector).

:func:`encode` and :func:`decode` turn Python dicts into payload integers and
back, by the layout's own field offsets, for testbenches on both the
Amaranth simulator and Verilator (where a payload is one flat vector).
"""

from __future__ import annotations

from typing import Any

from amaranth.hdl import Shape, ShapeLike, signed, unsigned
from amaranth.lib import data

__all__ = ["dense_layout", "sparse_layout", "entry_layout", "encode", "decode",
           "DenseGroup", "SparseGroup", "dense_beats", "sparse_beats"]


def entry_layout(index_bits: int, value_shape: ShapeLike = signed(8)) -> data.StructLayout:
    """One sparse entry: ``index`` (unsigned) and ``value``."""
    return data.StructLayout({"index": unsigned(max(index_bits, 1)), "value": value_shape})


def dense_layout(width: int, elem_shape: ShapeLike = signed(8)) -> data.StructLayout:
    """A dense beat of ``width`` elements plus ``last`` and ``end`` flags."""
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"dense width must be a positive integer, got {width!r}")
    return data.StructLayout({
        "data": data.ArrayLayout(elem_shape, width),
        "last": unsigned(1),
        "end": unsigned(1),
    })


def sparse_layout(entries: int, index_bits: int,
                  value_shape: ShapeLike = signed(8)) -> data.StructLayout:
    """A sparse beat of up to ``entries`` (index, value) pairs plus count/last/end."""
    if not isinstance(entries, int) or entries < 1:
        raise ValueError(f"sparse entries per beat must be a positive integer, got {entries!r}")
    return data.StructLayout({
        "entries": data.ArrayLayout(entry_layout(index_bits, value_shape), entries),
        "count": unsigned(entries.bit_length()),
        "last": unsigned(1),
        "end": unsigned(1),
    })


def _shape_of(layout: Any) -> Shape:
    return Shape.cast(layout)


def encode(layout: Any, value: Any) -> int:
    """Pack a Python value (dict for structs, list for arrays, int) into an int."""
    if isinstance(layout, data.StructLayout):
        out = 0
        for name, field in layout:
            if name in value:
                out |= encode(field.shape, value[name]) << field.offset
        return out
    if isinstance(layout, data.ArrayLayout):
        out = 0
        step = _shape_of(layout.elem_shape).width
        for i, v in enumerate(value):
            if i >= layout.length:
                raise ValueError(f"{len(value)} elements for an array of {layout.length}")
            out |= encode(layout.elem_shape, v) << (i * step)
        return out
    shape = _shape_of(layout)
    v = int(value)
    lo = -(1 << (shape.width - 1)) if shape.signed else 0
    hi = (1 << (shape.width - (1 if shape.signed else 0))) - 1
    if not lo <= v <= hi:
        raise ValueError(f"{v} does not fit {shape}")
    return v & ((1 << shape.width) - 1)


def decode(layout: Any, raw: int) -> Any:
    """Unpack an int into dicts/lists/ints by the layout (signed fields sign-extended)."""
    if isinstance(layout, data.StructLayout):
        return {name: decode(field.shape, (raw >> field.offset) & ((1 << _shape_of(field.shape).width) - 1))
                for name, field in layout}
    if isinstance(layout, data.ArrayLayout):
        step = _shape_of(layout.elem_shape).width
        return [decode(layout.elem_shape, (raw >> (i * step)) & ((1 << step) - 1))
                for i in range(layout.length)]
    shape = _shape_of(layout)
    raw &= (1 << shape.width) - 1
    if shape.signed and raw >> (shape.width - 1):
        raw -= 1 << shape.width
    return raw


# --------------------------------------------------------------------------
# Frames <-> beats (for testbenches and host-side tools)

DenseGroup = list  # the element values of one group
SparseGroup = list  # the (index, value) pairs of one group


def dense_beats(groups: list[list[int]], width: int) -> list[dict]:
    """Beats of one frame given its groups' element values (``end`` on the last)."""
    beats = []
    for g, values in enumerate(groups):
        n = max(1, -(-len(values) // width))
        for b in range(n):
            chunk = list(values[b * width:(b + 1) * width])
            beats.append({"data": chunk + [0] * (width - len(chunk)), "last": int(b == n - 1),
                          "end": 0})
    beats[-1]["end"] = 1
    return beats


def sparse_beats(groups: list[list[tuple[int, int]]], entries: int) -> list[dict]:
    """Beats of one frame given its groups' (index, value) pairs; empty groups take a beat."""
    beats = []
    for pairs in groups:
        n = max(1, -(-len(pairs) // entries))
        for b in range(n):
            chunk = pairs[b * entries:(b + 1) * entries]
            ent = [{"index": i, "value": v} for i, v in chunk]
            ent += [{"index": 0, "value": 0}] * (entries - len(ent))
            beats.append({"entries": ent, "count": len(chunk), "last": int(b == n - 1), "end": 0})
    beats[-1]["end"] = 1
    return beats
