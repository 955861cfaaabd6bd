"""Small helpers of the overlay engine's components."""

from __future__ import annotations

from amaranth.hdl import Array, Module, Signal, Value

__all__ = ["register", "select"]


def register(m: Module, name: str, value: Value, *, reset_less: bool = False) -> Signal:
    """``value``, registered every cycle."""
    value = Value.cast(value)
    reg = Signal(value.shape(), name=name, reset_less=reset_less)
    m.d.sync += reg.eq(value)
    return reg


def select(rows: list[Signal], index: Value) -> Value:
    """``rows[index]`` (a mux; no array proxy for a single row)."""
    return rows[0] if len(rows) == 1 else Array(rows)[index]
