"""k-WTA recognised by meaning: random equivalent spellings built with onnx.helper.

A generator composes, at random, the choices a user's k-WTA can make: over
a vector or a map, local (the channels at each position) or global; a
boost per unit or per channel broadcast in any shape, on either side of the
Mul; the TopK on the map itself or on a view of it (transposes, reshapes,
flattens, unsqueezes); the threshold form (the k-th value by Slice, Gather
or ReduceMin; GreaterOrEqual, LessOrEqual, or Not of Less; the mask applied
on the view or taken back to the map; a Mul by the cast mask, Where, or a
masked fill) or the index form (GatherElements + ScatterElements, or x times
a scattered mask). Each model is imported, must contain exactly one k-WTA of
the right kind and k, and on inputs without ties the golden model's k-WTA
output must equal ONNX Runtime's.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

ort = pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cosparse.compiler import ir  # noqa: E402
from cosparse.compiler.frontend import import_onnx, to_ir_input  # noqa: E402
from cosparse.sim import golden  # noqa: E402


class Builder:
    """Nodes and constants of one model, with fresh tensor names."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], {}, 0

    def t(self, prefix="t"):
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, v, dtype=None):
        name = self.t("c")
        self.inits[name] = np.asarray(v, dtype=dtype)
        return name

    def op(self, op, inputs, n_out=1, **attrs):
        outs = [self.t() for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, **attrs))
        return outs if n_out > 1 else outs[0]


def apply_view(b: Builder, t: str, steps: list[tuple]) -> str:
    for kind, arg in steps:
        if kind == "transpose":
            t = b.op("Transpose", [t], perm=list(arg))
        elif kind == "reshape":
            t = b.op("Reshape", [t, b.const(list(arg), np.int64)])
        elif kind == "flatten":
            t = b.op("Flatten", [t], axis=1)
        elif kind == "unsqueeze":
            t = b.op("Unsqueeze", [t, b.const([arg], np.int64)])
    return t


def undo_view(b: Builder, t: str, steps: list[tuple], shapes: list[tuple]) -> str:
    """The inverse of ``steps``; ``shapes[i]`` is the shape before step ``i``."""
    for (kind, arg), before in reversed(list(zip(steps, shapes))):
        if kind == "transpose":
            t = b.op("Transpose", [t], perm=[int(i) for i in np.argsort(arg)])
        else:
            t = b.op("Reshape", [t, b.const(list(before), np.int64)])
    return t


def view_shapes(shape: tuple, steps: list[tuple]) -> list[tuple]:
    shapes = [shape]
    for kind, arg in steps:
        s = shapes[-1]
        if kind == "transpose":
            s = tuple(s[i] for i in arg)
        elif kind == "reshape":
            s = tuple(int(v) for v in np.empty(s).reshape(arg).shape)
        elif kind == "flatten":
            s = (s[0], int(np.prod(s[1:])))
        elif kind == "unsqueeze":
            s = s[:arg] + (1,) + s[arg:]
        shapes.append(s)
    return shapes


@st.composite
def spellings(draw):
    vector = draw(st.booleans())
    if vector:
        n = draw(st.integers(4, 40))
        shape, local = (1, n), False
        group = n
        views = draw(st.sampled_from([
            ([], 1), ([("unsqueeze", 1)], 2), ([("reshape", (1, n, 1))], 1),
            ([("reshape", (1, 1, n))], -1)]))
    else:
        c, h, w = draw(st.integers(2, 8)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
        shape = (1, c, h, w)
        local = draw(st.booleans())
        group = c if local else c * h * w
        if local:
            views = draw(st.sampled_from([
                ([], 1), ([("transpose", (0, 2, 3, 1))], 3),
                ([("transpose", (0, 2, 3, 1))], -1),
                ([("transpose", (0, 2, 3, 1)), ("reshape", (1, h * w, c))], 2),
                ([("reshape", (1, c, h * w))], 1)]))
        else:
            views = draw(st.sampled_from([
                ([("reshape", (1, -1))], 1), ([("flatten", None)], 1),
                ([("transpose", (0, 2, 3, 1)), ("reshape", (1, -1))], 1),
                ([("reshape", (1, 1, -1))], -1),
                ([("unsqueeze", 1), ("flatten", None)], 1)]))
    k = draw(st.integers(1, max(1, group - 1)))
    channels = shape[1]
    boost = None
    if draw(st.booleans()):
        vals = draw(st.lists(st.sampled_from([0.5, 0.75, 1.0, 1.25, 1.5, 2.0]),
                             min_size=channels, max_size=channels))
        bshape = draw(st.sampled_from([(channels,), (1, channels)] if vector else
                                      [(channels, 1, 1), (1, channels, 1, 1), "full"]))
        boost = (vals, bshape, draw(st.booleans()))  # values, broadcast shape, boost first
    form = draw(st.sampled_from(["threshold", "index"]))
    thr = draw(st.sampled_from(["slice", "gather", "reducemin"]))
    compare = draw(st.sampled_from(["ge", "le", "not_less"]))
    where_mask = draw(st.sampled_from(["view", "map"]))
    output = draw(st.sampled_from(["mul", "where", "masked_fill"]))
    index_out = draw(st.sampled_from(["gather", "mask"]))
    return dict(shape=shape, local=local, views=views, k=k, boost=boost, form=form, thr=thr,
                compare=compare, where_mask=where_mask, output=output, index_out=index_out,
                group=group)


def build_model(s: dict) -> tuple[onnx.ModelProto, str]:
    """The spelling on the model input, then a linear head; returns (model, k-WTA output)."""
    b = Builder()
    shape = s["shape"]
    x = "x"
    key = x
    if s["boost"] is not None:
        vals, bshape, first = s["boost"]
        arr = np.asarray(vals, np.float32)
        if bshape == "full":
            arr = np.broadcast_to(arr.reshape(1, -1, 1, 1), shape).copy()
        else:
            arr = arr.reshape(bshape)
        bc = b.const(arr, np.float32)
        key = b.op("Mul", [bc, x] if first else [x, bc])
    steps, axis = s["views"]
    shapes = view_shapes(shape, steps)
    kv = apply_view(b, key, steps)
    k = s["k"]
    vals, idx = b.op("TopK", [kv, b.const([k], np.int64)], n_out=2, axis=axis)
    ax = axis % len(shapes[-1])
    xv = apply_view(b, x, steps)
    if s["form"] == "threshold":
        if s["thr"] == "slice":
            thr = b.op("Slice", [vals, b.const([k - 1], np.int64), b.const([k], np.int64),
                                 b.const([ax], np.int64)])
        elif s["thr"] == "gather":
            g = b.op("Gather", [vals, b.const(k - 1, np.int64)], axis=ax)
            thr = b.op("Unsqueeze", [g, b.const([ax], np.int64)])
        else:
            thr = b.op("ReduceMin", [vals, b.const([ax], np.int64)], keepdims=1)
        if s["compare"] == "ge":
            mask = b.op("GreaterOrEqual", [kv, thr])
        elif s["compare"] == "le":
            mask = b.op("LessOrEqual", [thr, kv])
        else:
            mask = b.op("Not", [b.op("Less", [kv, thr])])
        zero = b.const(np.zeros((), np.float32))
        if s["where_mask"] == "map":  # the mask back on the map, the output there
            mask = undo_view(b, b.op("Cast", [mask], to=TensorProto.FLOAT), steps, shapes)
            mask = b.op("Cast", [mask], to=TensorProto.BOOL)
            target = x
        else:
            target = xv
        if s["output"] == "mul":
            y = b.op("Mul", [target, b.op("Cast", [mask], to=TensorProto.FLOAT)])
        elif s["output"] == "where":
            y = b.op("Where", [mask, target, zero])
        else:
            y = b.op("Where", [b.op("Not", [mask]), zero, target])
        out = y if s["where_mask"] == "map" else undo_view(b, y, steps, shapes)
    else:
        zeros = b.const(np.zeros(shapes[-1], np.float32))
        if s["index_out"] == "gather":
            yv = b.op("ScatterElements", [zeros, idx, b.op("GatherElements", [xv, idx], axis=ax)],
                      axis=ax)
        else:
            ones_shape = list(shapes[-1])
            ones_shape[ax] = k
            m = b.op("ScatterElements", [zeros, idx, b.const(np.ones(ones_shape, np.float32))],
                     axis=ax)
            yv = b.op("Mul", [xv, m])
        out = undo_view(b, yv, steps, shapes)
    n = int(np.prod(shape[1:]))
    flat = b.op("Flatten", [out], axis=1) if len(shape) == 4 else out
    w = np.random.default_rng(0).uniform(0.2, 1.0, (3, n)).astype(np.float32)
    b.nodes.append(helper.make_node("Gemm", [flat, b.const(w), b.const(np.zeros(3, np.float32))],
                                    ["y"], transB=1))
    graph = helper.make_graph(
        b.nodes, "spelling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(v, k) for k, v in b.inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model, out


def tie_free_inputs(s: dict, rng, count: int) -> np.ndarray:
    """Integers on the int8 grid (127 in every sample), keys distinct within every group."""
    shape = s["shape"]
    n = int(np.prod(shape[1:]))
    boost = np.ones(n)
    if s["boost"] is not None:
        per_c = np.asarray(s["boost"][0], np.float64)
        boost = np.broadcast_to(per_c.reshape((1, -1) + (1,) * (len(shape) - 2)),
                                shape).reshape(-1)
    out = []
    while len(out) < count:
        q = rng.choice(np.arange(-127, 128), n, replace=n > 255)
        q[rng.integers(n)] = 127
        keys = (q * boost).reshape(shape[1:])
        groups = (np.moveaxis(keys, 0, -1).reshape(-1, shape[1]) if s["local"]
                  else keys.reshape(1, -1))
        if all(len(np.unique(g)) == g.size for g in groups):
            out.append(q.reshape(shape[1:]))
    return np.stack(out).astype(np.float32) / 127.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spellings(), st.integers(0, 2**31 - 1))
def test_any_spelling_is_recognised_and_matches_onnxruntime(tmp_path_factory, s, seed):
    model, out = build_model(s)
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("spelling") / "m.onnx"
    onnx.save(model, str(path))
    x = tie_free_inputs(s, np.random.default_rng(seed), 8)
    net = import_onnx(path, calibration=x)
    kwtas = [la for la in net.layers if isinstance(la, ir.KWTALayer)]
    assert len(kwtas) == 1, [la.kind for la in net.layers]
    kw = kwtas[0]
    if len(s["shape"]) == 4 and s["shape"][2] * s["shape"][3] == 1:
        assert isinstance(kw, ir.KWTALayer)  # one position: local and global are one
    else:
        assert isinstance(kw, ir.LocalKWTA if s["local"] else ir.GlobalKWTA)
    assert kw.k == s["k"]
    assert kw.tie_rule == ("lower-index" if s["form"] == "index" else "threshold")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)  # the k-WTA's output as a second output, for ONNX Runtime only
    probe.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT,
                                                            ["N", *s["shape"][1:]]))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # constants only the import reads (a view left unused)
    sess = ort.InferenceSession(probe.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    # one input at a time: a spelling may hold batch-1 shapes, as exports often do
    ref = np.concatenate([sess.run([out], {"x": x[i:i + 1]})[0] for i in range(len(x))]) * 127.0
    trace = golden.run(net, to_ir_input(net, x), trace=True).outputs
    got = trace[net.layers.index(kw)].astype(np.float64)
    if len(s["shape"]) == 4:
        ref = ref.transpose(0, 2, 3, 1)
    assert np.array_equal(got.reshape(ref.shape), np.rint(ref))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spellings(), st.integers(0, 2**31 - 1))
def test_any_spelling_quantized_by_onnxruntime_is_recognised(tmp_path_factory, s, seed):
    """The same spellings with ONNX Runtime's QDQ pairs around every piece."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    model, _ = build_model(s)
    folder = tmp_path_factory.mktemp("qdq")
    src, dst = folder / "m.onnx", folder / "qdq.onnx"
    onnx.save(model, str(src))
    x = tie_free_inputs(s, np.random.default_rng(seed), 16)

    class OneAtATime(CalibrationDataReader):  # a spelling may hold batch-1 shapes
        def __init__(self):
            self.rows = iter(x[i:i + 1] for i in range(len(x)))

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {"x": row}

    quantize_static(str(src), str(dst), OneAtATime(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    net = import_onnx(dst, calibration=x)  # the input's scale, where ONNX Runtime gave none
    kwtas = [la for la in net.layers if isinstance(la, ir.KWTALayer)]
    assert len(kwtas) == 1 and kwtas[0].k == s["k"], [la.kind for la in net.layers]
    assert net.meta["quantization"] == "qdq"
