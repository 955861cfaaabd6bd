"""k-WTA by meaning: a TopK's surroundings recognised by what they compute, not how.

The spelling matchers of :mod:`.kwta` know the usual forms. Any other
spelling of a k-WTA (views on the key, the threshold, the mask or the
output in other places, a mask computed on a view and reshaped back, Mul,
Where or masked-fill outputs, a boost broadcast any way) is found here:

1. **The regions.** From each remaining ``TopK``, the key is followed back
   through views and multiplications by constants to a tensor ``x``; a
   region is a set of nodes that computes a tensor ``out`` of ``x``'s shape
   from ``x`` alone (and constants), contains the TopK, and whose other
   tensors are read only inside it. They are tried smallest first.
2. **The key.** The region's key (the TopK's input) is evaluated with
   ``onnx.reference`` on ``x`` = ones and ``x`` = 1, 2, 3, ...: that gives
   the position of ``x`` each key element reads and its boost; a third,
   random ``x`` checks that the key is exactly that (a view of ``x``
   times a positive constant).
3. **The groups.** The TopK's axis on the key, mapped back through those
   positions, gives the groups of ``x`` the selection runs over; they must
   be blocks of whole axes of ``x`` (the channels at each position, or the
   whole map or vector).
4. **The meaning.** On random inputs without ties the region must keep
   exactly the ``k`` largest keys of every group and zero the rest, for
   one ``k``. Its tie rule is the threshold rule unless it keeps exactly
   ``k`` of equal keys (tested on equal keys when the boost allows it, else
   read from the region's operators: a scatter keeps exactly ``k``).

Only then does the region become one k-WTA node, as the spelling matchers
make it.
"""

from __future__ import annotations

import numpy as np

from .graph import DEFAULT_DOMAINS, KWTA_OP, VIEWS, Graph, Node, onnx_module

__all__ = ["kwta_by_meaning"]

#: Operators a key may pass through on its way from x to the TopK.
_KEY_OPS = (*VIEWS, "Squeeze", "Unsqueeze", "Identity", "Mul", "Div", "Expand")
#: Operators that keep exactly k winners (the index forms).
_INDEX_OPS = ("ScatterElements", "ScatterND", "GatherElements", "GatherND")
#: Random inputs the meaning is checked on.
_TRIALS = 6
_MAX_REGION = 80


def _key_chain(g: Graph, topk: Node) -> list[str]:
    """The tensors from the TopK's input back through views and constant scalings."""
    chain, t = [], topk.inputs[0]
    while True:
        chain.append(t)
        p = g.producer(t)
        if p is None or p.op not in _KEY_OPS or p.domain not in DEFAULT_DOMAINS:
            return chain
        data = [i for i in p.inputs if i and g.const(i) is None]
        if len(data) != 1 or (p.op == "Div" and data[0] != p.inputs[0]):
            return chain
        t = data[0]


def _regions(g: Graph, x: str, topk: Node):
    """The closed regions from ``x`` through ``topk`` to a tensor of x's shape, smallest
    first (a mask of x's shape closes one too: the meaning decides)."""
    order = {id(n): i for i, n in enumerate(g.nodes)}
    reach, frontier = set(), [x]
    while frontier:
        t = frontier.pop()
        for c in g.consumers(t):
            if id(c) not in reach and c.domain in DEFAULT_DOMAINS:
                reach.add(id(c))
                frontier.extend(o for o in c.outputs if o)
    if id(topk) not in reach:
        return
    shape = g.shape(x)
    after = [n for n in g.nodes if id(n) in reach and order[id(n)] > order[id(topk)]]
    for n in after:
        out = n.outputs[0]
        if g.shape(out) != shape:
            continue
        region, stack, ok = {}, [out], True
        while stack and ok:
            t = stack.pop()
            p = g.producer(t)
            if t == x or g.const(t) is not None:
                continue
            if p is None or id(p) not in reach or len(region) > _MAX_REGION:
                ok = False
                break
            if id(p) not in region:
                region[id(p)] = p
                stack.extend(i for i in p.inputs if i)
        if not ok or id(topk) not in region:
            continue
        nodes = sorted(region.values(), key=lambda m: order[id(m)])
        inside = set(region)
        closed = all(t == out or not t or (t != g.output and all(
            id(c) in inside for c in g.consumers(t))) for m in nodes for t in m.outputs)
        if closed:
            yield nodes, out


def _gather_elements_op():
    """GatherElements for ``onnx.reference`` by ``np.take_along_axis`` (its own runs out of
    ``np.choose``'s 32 choices on longer axes)."""
    from onnx.reference.op_run import OpRun

    class GatherElements(OpRun):
        op_domain = ""

        def _run(self, data, indices, axis=None):
            return (np.take_along_axis(data, indices.astype(np.int64) % data.shape[axis or 0],
                                       axis=axis or 0),)
    return GatherElements


def _evaluator(g: Graph, nodes: list[Node], x: str, outs: list[str]):
    """``f(x) -> [outs]`` by ``onnx.reference`` over the region, at the model's opsets."""
    onnx = onnx_module()
    h = onnx.helper
    from onnx.reference import ReferenceEvaluator
    consts = {i for n in nodes for i in n.inputs if i and g.const(i) is not None}
    graph = h.make_graph(
        [h.make_node(n.op, n.inputs, n.outputs, domain=n.domain or None, **n.attrs)
         for n in nodes], "region",
        [h.make_tensor_value_info(x, onnx.TensorProto.FLOAT, g.shape(x))],
        [h.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outs],
        initializer=[onnx.numpy_helper.from_array(np.asarray(g.consts[c]), c) for c in consts])
    model = h.make_model(graph, opset_imports=[h.make_opsetid(d, v) for d, v in g.opsets.items()
                                               if d in DEFAULT_DOMAINS])
    model.ir_version = g.ir_version
    ev = ReferenceEvaluator(model, new_ops=[_gather_elements_op()])
    return lambda v: [np.asarray(a) for a in ev.run(outs, {x: v.astype(np.float32)})]


def _groups(pos: np.ndarray, key_shape: tuple[int, ...], axis: int) -> np.ndarray:
    """The x positions of each group: rows of the TopK's axis, other coordinates fixed."""
    return np.moveaxis(pos.reshape(key_shape), axis, -1).reshape(-1, key_shape[axis])


def _group_axes(groups: np.ndarray, shape: tuple[int, ...]) -> list[int] | None:
    """The axes of x whose every combination one group covers (others fixed), or None."""
    coords = np.stack(np.unravel_index(groups, shape), axis=-1)  # groups, size, rank
    varying = sorted({a for a in range(len(shape))
                      if np.any(coords[:, :, a] != coords[:, :1, a])})
    if 0 in varying or int(np.prod([shape[a] for a in varying])) != groups.shape[1]:
        return None
    return varying


def _meaning(g: Graph, topk: Node, x: str, nodes: list[Node], out: str) -> dict | None:
    """The k-WTA a region computes (k, axes, boost over x, tie rule), or None."""
    shape = g.shape(x)
    key_shape = g.shape(topk.inputs[0])
    if shape is None or key_shape is None or shape[0] != 1 or \
            int(np.prod(key_shape)) != int(np.prod(shape)):
        return None
    try:
        run = _evaluator(g, nodes, x, [topk.inputs[0], out])
        n = int(np.prod(shape))
        b = run(np.ones(shape))[0].astype(np.float64).ravel()
        a = run(np.arange(1, n + 1, dtype=np.float64).reshape(shape))[0].astype(np.float64)
        if np.any(b <= 0) or not np.all(np.isfinite(b)):
            return None
        pos = np.rint(a.ravel() / b - 1)
        if np.abs(a.ravel() / b - 1 - pos).max() > 1e-3 or \
                not np.array_equal(np.sort(pos), np.arange(n)):
            return None
        pos = pos.astype(np.int64)
        rng = np.random.default_rng(0)
        boost = np.empty(n)
        boost[pos] = b
        axis = topk.attrs.get("axis", -1) % len(key_shape)
        groups = _groups(pos, key_shape, axis)
        axes = _group_axes(groups, shape)
        if axes is None:
            return None
        k = None
        for _ in range(_TRIALS):
            v = rng.normal(0, 1, shape) + np.sign(rng.normal(0, 1, shape)) * 0.01
            v = v.astype(np.float32).astype(np.float64)
            key, y = run(v)
            if not np.allclose(key.ravel(), (v.ravel()[pos] * b), rtol=1e-5, atol=1e-6):
                return None  # the key is not a boosted view of x
            y = y.astype(np.float64).ravel()
            keep = y != 0
            if not np.array_equal(y[keep], v.ravel()[keep]):
                return None  # winners must keep their values
            keys = (v.ravel() * boost)[groups]
            counts = keep[groups].sum(axis=1)
            if k is None:
                k = int(counts[0])
            if k < 1 or np.any(counts != k):
                return None
            rank = np.argsort(np.argsort(-keys, axis=1, kind="stable"), axis=1)
            if not np.array_equal(keep[groups], rank < k):
                return None
        exact = any(m.op in _INDEX_OPS for m in nodes)
        if np.all(boost[groups] == boost[groups][:, :1]):  # equal keys are possible: test them
            y = run(np.ones(shape) * 0.5)[1].ravel()
            kept = (y != 0)[groups].sum(axis=1)
            if np.all(kept == k):
                exact = True
            elif np.all(kept == groups.shape[1]):
                exact = False
            else:
                return None
    except Exception:  # a region onnx.reference cannot run is not recognised here
        return None
    return dict(k=k, axes=axes, boost=None if np.all(boost == 1) else boost.reshape(shape),
                exact=exact)


def _key_quantizer(g: Graph, chain: list[str], x: str) -> tuple[float | None, tuple | None]:
    """A QDQ model's scale and integer range of the boosted key (the product's quantizer)."""
    for t in chain:
        if t == x:
            break
        p = g.producer(t)
        if p is not None and p.op in ("Mul", "Div") and t in g.act_scale:
            return g.act_scale[t], g.act_range.get(t)
    return None, None


def kwta_by_meaning(g: Graph) -> bool:
    """Replace the first TopK region that computes a k-WTA by one k-WTA node."""
    from .kwta import _boost_over_group
    for topk in [n for n in g.nodes if n.op == "TopK" and n.domain in DEFAULT_DOMAINS]:
        chain = _key_chain(g, topk)
        for x in reversed(chain):
            if g.const(x) is not None:
                continue
            for nodes, out in _regions(g, x, topk):
                m = _meaning(g, topk, x, nodes, out)
                if m is not None:
                    break
            else:
                continue
            where = f"at TopK {topk.name!r}"
            boost = None
            if m["boost"] is not None:
                boost = _boost_over_group(g, where, m["boost"], g.shape(x), m["axes"])
            key_scale, key_range = _key_quantizer(g, chain, x) if boost is not None else (
                None, None)
            kwta = Node(KWTA_OP, topk.name, [x], [out], dict(
                k=m["k"], axes=m["axes"], boost=boost, exact=m["exact"],
                onnx_nodes=[n.name for n in nodes], onnx_in=x, onnx_out=out,
                key_scale=key_scale, key_range=key_range), scope=topk.scope)
            g.replace(nodes, kwta, nodes[-1])
            return True
    return False
