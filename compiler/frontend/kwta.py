"""k-WTA matching: TopK patterns (threshold or gather/scatter) become one k-WTA node.

:func:`kwta_patterns` finds the patterns on ``x`` or ``x * boost``, where the
TopK may run on a reshaped or transposed view of the key;
:func:`kwta_views` folds a view and its inverse around a k-WTA node into
the node's axes. The patterns are described in ``docs/frontend.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import KWTA_OP, VIEWS, Graph, Node

__all__ = ["kwta_patterns", "kwta_views"]


def _runs(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Align two shapes of one row-major buffer into runs of axes with equal products."""
    runs, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        ia, jb, pa, pb = [], [], 1, 1
        if i < len(a):
            ia.append(i); pa *= a[i]; i += 1  # noqa: E702
        if j < len(b):
            jb.append(j); pb *= b[j]; j += 1  # noqa: E702
        while pa != pb:
            if pa < pb and i < len(a):
                ia.append(i); pa *= a[i]; i += 1  # noqa: E702
            elif pb < pa and j < len(b):
                jb.append(j); pb *= b[j]; j += 1  # noqa: E702
            else:
                return None
        runs.append((ia, jb))
    return runs


def _group_through_view(g: Graph, view: Node, group: list[int]) -> list[int] | None:
    """The axes of a view's input that a group of its output's axes covers, or None."""
    src, dst = g.shape(view.inputs[0]), g.shape(view.outputs[0])
    if src is None or dst is None:
        return None
    if view.op == "Transpose":
        perm = list(view.attrs.get("perm", range(len(src))[::-1]))
        return sorted(perm[a] for a in group)
    runs = _runs(src, dst)
    if runs is None:
        return None
    out = []
    for ia, jb in runs:
        big = [j for j in jb if dst[j] > 1]
        inside = [j for j in big if j in group]
        if big and len(inside) == len(big):
            out += [i for i in ia if src[i] > 1]
        elif inside:
            return None  # the group splits an axis of the view's input
    return sorted(out)


def _is_zero(g: Graph, t: str) -> bool:
    c = g.const(t)
    return c is not None and c.size > 0 and not np.any(c)


def _unwrap(g: Graph, t: str, ops: tuple[str, ...], nodes: list[Node]) -> str:
    while True:
        p = g.producer(t)
        if p is None or p.op not in ops:
            return t
        nodes.append(p)
        t = p.inputs[0]


@dataclass
class _KwtaMatch:
    x: str
    out: str
    key: str
    topk: Node
    k: int
    axis: int  # TopK axis on its input
    nodes: list[Node]  # every node of the pattern (replaced by one KWTA node)
    exact: bool  # gather/scatter: exactly k winners; threshold: ties kept
    boost: np.ndarray | None = None  # the constant b of key = x * b


#: Views a k-WTA may sit between (a view and its inverse fold into its axes).
_RESHAPES = (*VIEWS, "Squeeze", "Unsqueeze")

_COMPARES = {  # op -> (position of the key, True if "compare true" means "winner")
    "GreaterOrEqual": (0, True), "LessOrEqual": (1, True),
    "Less": (0, False), "Greater": (1, False),
}


def _topk_k(g: Graph, topk: Node) -> int | None:
    kk = g.const(topk.inputs[1]) if len(topk.inputs) > 1 else None
    if kk is None:
        kk = topk.attrs.get("k")  # opset 1 attribute
        return None if kk is None else int(kk)
    return int(kk.ravel()[0])


def _topk_axis(g: Graph, topk: Node) -> int:
    rank = len(g.shape(topk.inputs[0]) or (0,))
    return topk.attrs.get("axis", -1) % rank


def _threshold_source(g: Graph, thr: str, nodes: list[Node]) -> tuple[Node, int] | None:
    """The TopK whose values give ``thr``, and which of its values (0-based)."""
    t = _unwrap(g, thr, ("Reshape", "Unsqueeze", "Squeeze", "Expand", "Identity", "Flatten"), nodes)
    p = g.producer(t)
    if p is not None and p.op == "TopK" and p.outputs[0] == t and _topk_k(g, p) == 1:
        # k = 1: the values are the threshold themselves (torch.export drops the slice)
        nodes.append(p)
        return p, 0
    if p is None or p.op not in ("Slice", "Gather", "ReduceMin"):
        return None
    topk = g.producer(p.inputs[0])
    if topk is None or topk.op != "TopK" or topk.outputs[0] != p.inputs[0]:
        return None
    kk = _topk_k(g, topk)
    vshape = g.shape(p.inputs[0])
    if kk is None or vshape is None:
        return None
    axis = _topk_axis(g, topk)
    if p.op == "ReduceMin":
        axes = p.attrs.get("axes")
        if axes is None and len(p.inputs) > 1 and p.inputs[1]:
            axes = g.const(p.inputs[1])
        if axes is None or [int(a) % len(vshape) for a in np.ravel(axes)] != [axis]:
            return None
        j = kk - 1
    else:
        if not topk.attrs.get("sorted", 1):
            return None  # unsorted values: which one is the k-th is unknown
        if p.op == "Gather":
            idx = g.const(p.inputs[1])
            if idx is None or idx.size != 1 or p.attrs.get("axis", 0) % len(vshape) != axis:
                return None
            j = int(idx.ravel()[0]) % kk
        else:
            j = _slice_index(g, p, vshape, axis)
            if j is None:
                return None
    nodes += [p, topk]
    return topk, j


def _slice_index(g: Graph, p: Node, shape: tuple[int, ...], axis: int) -> int | None:
    """The one index a Slice keeps along ``axis`` (others kept whole), or None."""
    if len(p.inputs) >= 3:
        starts, ends = g.const(p.inputs[1]), g.const(p.inputs[2])
        axes = g.const(p.inputs[3]) if len(p.inputs) > 3 and p.inputs[3] else None
        steps = g.const(p.inputs[4]) if len(p.inputs) > 4 and p.inputs[4] else None
        if starts is None or ends is None or (len(p.inputs) > 3 and p.inputs[3] and axes is None):
            return None
    else:  # opset < 10 attributes
        starts, ends, axes, steps = (p.attrs.get(a) for a in ("starts", "ends", "axes", None))
    starts, ends = np.ravel(starts), np.ravel(ends)
    axes = np.arange(len(starts)) if axes is None else np.ravel(axes)
    steps = np.ones(len(starts), np.int64) if steps is None else np.ravel(steps)
    j = None
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % len(shape)
        kept = range(*slice(int(max(min(s, 2**62), -2**62)), int(max(min(e, 2**62), -2**62)),
                            int(st)).indices(shape[a]))
        if a == axis:
            if len(kept) != 1:
                return None
            j = kept[0]
        elif len(kept) != shape[a]:
            return None
    return j


def _exclusive(g: Graph, nodes: list[Node], out: str) -> bool:
    """Whether every tensor the pattern makes, except ``out``, is read only inside it."""
    inside = set(map(id, nodes))
    for n in nodes:
        for t in n.outputs:
            if t == out or not t:
                continue
            if t == g.output or any(id(c) not in inside for c in g.consumers(t)):
                return False
    return True


def _key_source(g: Graph, key: str, x: str,
                nodes: list[Node]) -> tuple[str, np.ndarray | None] | None:
    """``key`` is ``x`` or ``x * b`` with constant ``b``: return (x, b). ``key`` and ``x``
    may also be the same reshape of ``x0 * b`` and ``x0`` (torch.export's form): ``b``
    then comes back broadcast and reshaped as ``x``."""
    if key == x:
        return x, None
    p = g.producer(key)
    if p is not None and p.op == "Mul":
        for a, c in (p.inputs, p.inputs[::-1]):
            b = g.const(c)
            if b is not None and a == x:
                nodes.append(p)
                return a, b
    q = g.producer(x)
    if p is not None and q is not None and p.op == q.op and p.op in ("Reshape", "Flatten") \
            and p.attrs == q.attrs and p.inputs[1:] == q.inputs[1:]:
        inner: list[Node] = []
        got = _key_source(g, p.inputs[0], q.inputs[0], inner)
        before, after = g.shape(p.inputs[0]), g.shape(key)
        if got is not None and got[1] is not None and before is not None and after is not None:
            try:
                b = np.broadcast_to(got[1], before).reshape(after)
            except ValueError:
                return None
            nodes += [p, *inner]
            return x, b
    return None


def _match_threshold(g: Graph, node: Node) -> _KwtaMatch | None:
    """TopK, the k-th value as threshold, a compare, and a mask applied to x."""
    nodes = [node]
    if node.op == "Where":
        cond, a, b = node.inputs
        if _is_zero(g, b) and not _is_zero(g, a):
            x, keep = a, True
        elif _is_zero(g, a) and not _is_zero(g, b):
            x, keep = b, False
        else:
            return None
    elif node.op == "Mul":
        for x, cond in (node.inputs, node.inputs[::-1]):
            root = g.producer(_unwrap(g, cond, ("Cast", "Not"), []))
            if g.const(cond) is None and root is not None and root.op in _COMPARES:
                break
        else:
            return None
        keep = True
    else:
        return None
    while (p := g.producer(cond)) is not None and p.op in ("Cast", "Not"):
        keep ^= p.op == "Not"
        nodes.append(p)
        cond = p.inputs[0]
    cmp = g.producer(cond)
    if cmp is None or cmp.op not in _COMPARES:
        return None
    nodes.append(cmp)
    key_pos, winners = _COMPARES[cmp.op]
    if keep != winners:
        return None
    key, thr = cmp.inputs[key_pos], cmp.inputs[1 - key_pos]
    found = _threshold_source(g, thr, nodes)
    if found is None:
        return None
    topk, j = found
    axis = _topk_axis(g, topk)
    t = topk.inputs[0]
    while t != key:  # the TopK may see a reshaped / transposed view of the key
        p = g.producer(t)
        if p is None or p.op not in VIEWS or len(nodes) > 40:
            return None
        nodes.append(p)
        t = p.inputs[0]
    src = _key_source(g, key, x, nodes)
    if src is None:
        return None
    m = _KwtaMatch(x=x, out=node.outputs[0], key=key, topk=topk, k=j + 1, axis=axis,
                   nodes=nodes, exact=False, boost=src[1])
    return m if _exclusive(g, nodes, m.out) else None


def _match_scatter(g: Graph, node: Node) -> _KwtaMatch | None:
    """ScatterElements of the TopK winners into zeros (values, or a mask times x)."""
    nodes = [node]
    mask_x = None
    if node.op == "Mul":
        for x, m in (node.inputs, node.inputs[::-1]):
            p = g.producer(_unwrap(g, m, ("Cast",), []))
            if p is not None and p.op == "ScatterElements" and g.const(x) is None:
                mask_x = x
                m = _unwrap(g, m, ("Cast",), nodes)
                node = p
                nodes.append(p)
                break
        else:
            return None
    elif node.op != "ScatterElements":
        return None
    data, idx, upd = node.inputs[:3]
    if node.attrs.get("reduction", b"none") not in (b"none", "none") or not _is_zero(g, data):
        return None
    topk = g.producer(idx)
    if topk is None or topk.op != "TopK" or topk.outputs[1] != idx:
        return None
    rank = len(g.shape(data) or ())
    axis = _topk_axis(g, topk)
    if node.attrs.get("axis", 0) % max(rank, 1) != axis:
        return None
    if mask_x is None:
        gat = g.producer(upd)
        if gat is None or gat.op != "GatherElements" or gat.inputs[1] != idx or \
                gat.attrs.get("axis", 0) % rank != axis:
            return None
        x = gat.inputs[0]
        nodes.append(gat)
    else:
        ones = g.const(upd)
        if ones is None or not np.all(ones == 1):
            return None
        x = mask_x
    nodes.append(topk)
    src = _key_source(g, topk.inputs[0], x, nodes)
    k = _topk_k(g, topk)
    if src is None or k is None or g.shape(x) != g.shape(data):
        return None
    m = _KwtaMatch(x=x, out=nodes[0].outputs[0], key=topk.inputs[0], topk=topk, k=k, axis=axis,
                   nodes=nodes, exact=True, boost=src[1])
    return m if _exclusive(g, nodes, m.out) else None


def _group_on_x(g: Graph, m: _KwtaMatch) -> list[int] | None:
    """The axes of x the TopK selects over (mapped back through views of the key)."""
    group = [m.axis]
    t = m.topk.inputs[0]
    while t != m.key:
        view = g.producer(t)
        group = _group_through_view(g, view, group)
        if group is None:
            return None
        t = view.inputs[0]
    return group


def _boost_over_group(g: Graph, where: str, b: np.ndarray | None, shape: tuple[int, ...],
                      group: list[int]) -> np.ndarray | None:
    """The boost as an array over the group's axes (in x's order), checked positive."""
    if b is None:
        return None
    try:
        ok = np.broadcast_shapes(b.shape, shape) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise g.fail(f"k-WTA {where}: boost of shape {b.shape} does not broadcast to the "
                     f"selected tensor's shape {shape}")
    full = np.broadcast_to(b.astype(np.float64), shape)
    pick = tuple(slice(None) if a in group else 0 for a in range(len(shape)))
    part = full[pick]
    expect = np.broadcast_to(part.reshape([shape[a] if a in group else 1
                                           for a in range(len(shape))]), shape)
    if not np.array_equal(full, expect):
        raise g.fail(f"k-WTA {where}: the boost varies along axes the k-WTA does not select over; "
                     "the IR has one boost per unit (vector) or per channel (map)")
    if not np.all(np.isfinite(part)) or np.any(part <= 0):
        raise g.fail(f"k-WTA {where}: boost factors must be positive, found "
                     f"{float(part.min()):.6g}")
    return part


def _make_kwta(g: Graph, m: _KwtaMatch) -> None:
    where = f"at TopK {m.topk.name!r}"
    group = _group_on_x(g, m)
    shape = g.shape(m.x)
    if group is None or shape is None or not group or 0 in group:
        raise g.fail(f"k-WTA {where}: cannot tell which axes of {m.x!r} it selects over (the "
                     "TopK runs on a view that mixes the batch or splits an axis)")
    boost = _boost_over_group(g, where, m.boost, shape, group)
    # A QDQ model that quantizes the boosted key compares the quantized keys.
    key_scale = g.act_scale.get(m.key) if m.key != m.x else None
    kwta = Node(KWTA_OP, m.topk.name, [m.x], [m.out], dict(
        k=m.k, axes=group, boost=boost, exact=m.exact, onnx_nodes=[n.name for n in m.nodes],
        onnx_in=m.x, onnx_out=m.out, key_scale=key_scale,
        key_range=g.act_range.get(m.key) if key_scale else None), scope=m.topk.scope)
    anchor = max(m.nodes, key=g.nodes.index)
    g.replace(m.nodes, kwta, anchor)


def kwta_patterns(g: Graph) -> bool:
    """Replace the first k-WTA pattern found by a KWTA node."""
    for n in g.nodes:
        m = _match_threshold(g, n) or _match_scatter(g, n)
        if m is not None:
            _make_kwta(g, m)
            return True
    return False


def kwta_views(g: Graph) -> bool:
    """view -> KWTA -> inverse view becomes KWTA on the view's input."""
    for n in g.nodes:
        if n.op != KWTA_OP:
            continue
        pin = g.producer(n.inputs[0])
        readers = g.consumers(n.outputs[0])
        if pin is None or pin.op not in _RESHAPES or g.uses(n.inputs[0]) != 1 or \
                len(readers) != 1 or g.uses(n.outputs[0]) != 1:
            continue
        pout = readers[0]
        src = pin.inputs[0]
        if pout.op not in _RESHAPES or g.shape(pout.outputs[0]) != g.shape(src) or \
                (pin.op == "Transpose") != (pout.op == "Transpose"):
            continue
        if pin.op == "Transpose":
            rank = len(g.shape(src))
            p1 = list(pin.attrs.get("perm", range(rank)[::-1]))
            p2 = list(pout.attrs.get("perm", range(rank)[::-1]))
            if [p1[i] for i in p2] != list(range(rank)):
                continue
        group = _group_through_view(g, pin, n.attrs["axes"])
        if not group or 0 in group:
            continue
        boost = n.attrs["boost"]
        if boost is not None:
            if pin.op == "Transpose":
                src_axes = [p1[a] for a in n.attrs["axes"]]
                boost = np.transpose(boost, np.argsort(src_axes))
            else:
                boost = boost.reshape([g.shape(src)[a] for a in group])
        n.attrs.update(axes=group, boost=boost, onnx_in=src, onnx_out=pout.outputs[0])
        n.attrs["onnx_nodes"] += [pin.name, pout.name]
        n.inputs, n.outputs = [src], [pout.outputs[0]]
        g.remove(pin, pout)
        return True
    return False
