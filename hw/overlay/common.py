"""Small helpers of the overlay engine's components."""

from __future__ import annotations

from amaranth.hdl import Module, Signal, Value, signed, unsigned
from amaranth.lib import data

from ..util import mux_tree

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
    """``rows[index]`` (:func:`~cosparse.hw.util.mux_tree`)."""
    return mux_tree(rows, index)
