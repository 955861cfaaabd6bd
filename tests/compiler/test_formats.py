"""The adapter pass: every overlay layer sees the stream its build mode processes."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cosparse.compiler import ir
from cosparse.compiler.formats import DENSIFY_AT, MODES, insert_adapters

KINDS = {
    "linear": lambda n: ir.OverlayLinear(n),
    "conv": lambda n: ir.OverlayConv(n, kernel=(3, 3)),
    "local": lambda n: ir.LocalKWTA(n, k=2),
    "global": lambda n: ir.GlobalKWTA(n, k=2),
    "pool": lambda n: ir.MaxPool(n),
    "flatten": lambda n: ir.Flatten(n),
}


def formats_into(layers):
    """The stream format entering each layer, from a dense input."""
    fmt, out = "dense", []
    for layer in layers:
        out.append(fmt)
        fmt = layer.output_format(fmt)
    return out


@given(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=12),
       st.sampled_from(MODES), st.sampled_from(DENSIFY_AT))
def test_overlay_layers_see_their_modes_stream(kinds, mode, densify_at):
    layers = [KINDS[k](f"l{i}") for i, k in enumerate(kinds)]
    out = insert_adapters(layers, mode, densify_at=densify_at)
    assert [x for x in out if not isinstance(x, (ir.ZeroSkip, ir.Densify))] == layers
    fmts = formats_into(out)
    want = "sparse" if mode == "sparse-sparse" else "dense"
    for layer, fmt in zip(out, fmts):
        if isinstance(layer, ir.OverlayLayer):
            assert fmt == want, (kinds, mode, densify_at)
        if isinstance(layer, ir.ZeroSkip):
            assert fmt == "dense"  # only where needed: never on a sparse stream
        if isinstance(layer, ir.Densify):
            assert fmt == "sparse"
        if densify_at == "consumer" and isinstance(layer, ir.KWTALayer):
            assert fmt == "dense"
    assert len({x.name for x in out}) == len(out)


def test_densify_placement():
    kw, pool, fc = ir.LocalKWTA("k", k=2), ir.MaxPool("p"), ir.OverlayLinear("fc")
    after_kwta = insert_adapters([kw, pool, fc], "dense")
    assert [x.name for x in after_kwta] == ["k", "k.densify", "p", "fc"]
    before = insert_adapters([kw, pool, fc], "sparse-weights", densify_at="consumer")
    assert [x.name for x in before] == ["k", "p", "fc.densify", "fc"]
    assert [x.name for x in insert_adapters([fc, kw, fc], "sparse-sparse")] == \
        ["fc.zero_skip", "fc", "k", "fc"]


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="'sparse'"):
        insert_adapters([], "sparse")
    with pytest.raises(ValueError, match="'late'"):
        insert_adapters([], "dense", densify_at="late")
