"""Shared test helpers: small random networks built directly in the IR."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, settings

from cosparse.compiler import ir
from cosparse.compiler.packer import pack

settings.register_profile("default", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, max_examples=40, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")


def overlay_layer(cls, name: str, w: np.ndarray, k: int | None, rng: np.random.Generator,
                  *, requant: bool = True, relu: bool = False, **kw) -> ir.Layer:
    """An overlay layer over int8 weights ``w`` with random bias and requant constants."""
    m = w.shape[0]
    rq = None
    if requant:
        rq = ir.Requant(rng.integers(1, 1 << 16, m).astype(np.int32),
                        rng.integers(8, 24, m).astype(np.int32), relu)
    return cls(name, overlays=pack(w, k), bias=rng.integers(-5000, 5000, m).astype(np.int32),
               requant=rq, acc_scale=tuple([0.01] * m), **kw)
