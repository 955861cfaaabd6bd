"""Small helpers of the overlay engine's components."""

from __future__ import annotations

from amaranth.hdl import Array, Module, Signal, Value, signed, unsigned
from amaranth.lib import data

__all__ = ["register", "select", "slot_layout", "word_layout"]


def slot_layout(id_bits: int, weight_bits: int = 8) -> data.StructLayout:
    """One slot of an overlay word: the weight (signed ``weight_bits``) and the id of the
    kernel it belongs to."""
    return data.StructLayout({"weight": signed(weight_bits), "kernel_id": unsigned(id_bits)})


def word_layout(lanes: int, id_bits: int, weight_bits: int = 8) -> data.ArrayLayout:
    """A weight-memory word: ``lanes`` slots, slot 0 in the low bits."""
    return data.ArrayLayout(slot_layout(id_bits, weight_bits), lanes)


def register(m: Module, name: str, value: Value, *, reset_less: bool = False) -> Signal:
    """``value``, registered every cycle."""
    value = Value.cast(value)
    reg = Signal(value.shape(), name=name, reset_less=reset_less)
    m.d.sync += reg.eq(value)
    return reg


def select(rows: list[Signal], index: Value) -> Value:
    """``rows[index]`` (a mux; no array proxy for a single row)."""
    return rows[0] if len(rows) == 1 else Array(rows)[index]
