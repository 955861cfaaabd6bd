"""Stream formats: the IR-to-IR pass that puts zero-skip and densify adapters where a
build mode needs them.

A build mode says what the overlay layers process: every input (``dense``),
the non-zero weights of every input (``sparse-weights``), or the non-zero
weights of the active inputs only (``sparse-sparse``). An overlay layer then
takes a sparse stream (sparse-sparse) or a dense one (the others); a k-WTA
makes a sparse stream, an overlay layer a dense one, and pooling and flatten
keep theirs.
"""

from __future__ import annotations

from . import ir

__all__ = ["insert_adapters", "MODES", "DENSIFY_AT"]

#: The build modes.
MODES = ("sparse-sparse", "sparse-weights", "dense")

#: Where a sparse stream becomes dense for a layer that needs it: right after the
#: k-WTA that makes it (pooling and flatten then work on dense maps), or right
#: before the consumer (they work on the sparse stream).
DENSIFY_AT = ("kwta", "consumer")


def insert_adapters(layers: list[ir.Layer], mode: str, *,
                    densify_at: str = "kwta") -> list[ir.Layer]:
    """``layers`` with the ``ZeroSkip``/``Densify`` adapters ``mode`` needs.

    Parameters
    ----------
    layers : list of ir.Layer
        A chain without adapters, starting on a dense input.
    mode : str
        One of :data:`MODES`. ``sparse-sparse``: a zero-skip before an
        overlay layer fed by a dense stream. The others: a densify between a
        k-WTA and the overlay layer it feeds.
    densify_at : str
        One of :data:`DENSIFY_AT`. With ``consumer``, a k-WTA fed by a sparse
        stream is densified before it too.

    Returns
    -------
    list of ir.Layer
        The same layer objects, adapters between them, named after the layer
        they serve (``<layer>.zero_skip``, ``<layer>.densify``).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if densify_at not in DENSIFY_AT:
        raise ValueError(f"densify_at must be one of {', '.join(DENSIFY_AT)}, got {densify_at!r}")
    sparse_sparse = mode == "sparse-sparse"
    out: list[ir.Layer] = []
    fmt = "dense"
    for i, layer in enumerate(layers):
        overlay = isinstance(layer, ir.OverlayLayer)
        if overlay and sparse_sparse and fmt == "dense":
            out.append(ir.ZeroSkip(f"{layer.name}.zero_skip"))
            fmt = "sparse"
        elif densify_at == "consumer" and fmt == "sparse" and (
                (overlay and not sparse_sparse) or isinstance(layer, ir.KWTALayer)):
            out.append(ir.Densify(f"{layer.name}.densify"))
            fmt = "dense"
        out.append(layer)
        fmt = layer.output_format(fmt)
        if densify_at == "kwta" and not sparse_sparse and isinstance(layer, ir.KWTALayer):
            nxt = next((x for x in layers[i + 1:] if not isinstance(x, (ir.MaxPool, ir.Flatten))),
                       None)
            if isinstance(nxt, ir.OverlayLayer):
                out.append(ir.Densify(f"{layer.name}.densify"))
                fmt = "dense"
    return out
