"""Loading: read an ONNX model safely and turn it into the working graph.

The graph is read without its external data; the data files must lie in the
model's own folder (checked before anything reads them), and
:func:`attach_data` loads them only after the supported-operator check.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np

from .graph import DEFAULT_DOMAINS, FrontendError, Graph, Node, onnx_module, short_error

__all__ = ["load_model", "attach_data", "working_graph"]


def _tensors_with_data(model) -> list:
    """Initializers and the tensors held by Constant nodes' attributes."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                tensors.append(a.t)
            tensors.extend(a.tensors)
    return tensors


def _check_external_data(model, path: Path) -> bool:
    """Refuse external data outside the model's folder; return whether there is any."""
    onnx = onnx_module()
    base = os.path.realpath(path.parent)
    found = False
    for t in _tensors_with_data(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        target = os.path.realpath(os.path.join(base, loc))
        if not loc or os.path.commonpath([base, target]) != base:
            raise FrontendError(
                f"{path}: tensor {t.name!r} keeps its data in {loc!r}, which is outside the "
                f"model's folder {base}; the frontend reads external data only from files in "
                "the model's own folder")
        if not os.path.isfile(target):
            raise FrontendError(f"{path}: tensor {t.name!r} keeps its data in {loc!r}, but "
                                f"{target} does not exist")
    return found


def load_model(path: Path):
    """Read, check and inline an ONNX model's graph; its external data stays on disk.

    Every external data file must lie in the model's own folder (checked
    before anything reads it); :func:`attach_data` loads it later.
    """
    onnx = onnx_module()
    if not path.is_file():
        raise FrontendError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise FrontendError(f"{path}: not a readable ONNX model; the file is malformed or "
                            f"truncated ({short_error(e)})") from None
    external = _check_external_data(model, path)
    if not model.HasField("graph") or not model.graph.node:
        raise FrontendError(f"{path}: not a readable ONNX model; it holds no graph (a malformed "
                            "or truncated file)")
    try:
        # With external data the checker takes the path (it resolves the data files,
        # already known to lie in the model's folder, and allows models over 2 GB).
        onnx.checker.check_model(str(path) if external else model)
    except Exception as e:
        raise FrontendError(f"{path}: the ONNX checker rejects the model "
                            f"({short_error(e)})") from None
    if model.functions:
        from onnx import inliner
        model = inliner.inline_local_functions(model)
    return model


def attach_data(model, path: Path) -> None:
    """Load the external data (already checked to lie in the model's folder)."""
    if not _check_external_data(model, path):
        return
    try:
        onnx_module().load_external_data_for_model(model, str(path.parent))
    except Exception as e:
        raise FrontendError(f"{path}: cannot read the model's external data "
                            f"({short_error(e)})") from None


def _node_scope(node) -> str:
    """Module path of a node: the dynamo exporter's name scopes, or the legacy node name.

    Legacy names look like ``/net/conv1/Conv`` or ``/body/body.4/TopK`` (a
    segment may repeat its parent's path); both become ``net.conv1`` /
    ``body.4``.
    """
    parts: list[str] = []
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                parts = [s for s in ast.literal_eval(p.value)[1:-1] if s]
            except (ValueError, SyntaxError):
                parts = []
            break
    else:
        if node.name.startswith("/"):
            parts = [s for s in node.name.split("/") if s][:-1]
    path = ""
    for seg in parts:
        path = seg if path and seg.startswith(path + ".") else f"{path}.{seg}" if path else seg
    return path


def _const_value(onnx, node, opset: int) -> np.ndarray:
    a = node.attribute[0]
    if a.name == "value":
        return onnx.numpy_helper.to_array(a.t)
    if a.name in ("value_float", "value_floats"):
        return np.array(onnx.helper.get_attribute_value(a), dtype=np.float32)
    if a.name in ("value_int", "value_ints"):
        return np.array(onnx.helper.get_attribute_value(a), dtype=np.int64)
    from onnx.reference import ReferenceEvaluator
    return np.asarray(ReferenceEvaluator(node, opsets={"": opset}).run(None, {})[0])


def working_graph(model, path: Path) -> Graph:
    """The model's working graph: constants by value, one float32 input, one output.

    Raises
    ------
    FrontendError
        The model has more than one input or output, or its input is not
        float32 ``[batch, C, H, W]`` or ``[batch, N]`` with fixed dimensions.
    """
    onnx = onnx_module()
    g = Graph(path)
    g.opsets = {o.domain: o.version for o in model.opset_import}
    g.ir_version = model.ir_version
    opset = g.opsets.get("", g.opsets.get("ai.onnx", 13))
    for t in model.graph.initializer:
        g.consts[t.name] = onnx.numpy_helper.to_array(t)
    inputs = [i for i in model.graph.input if i.name not in g.consts]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise g.fail(f"the model has {len(inputs)} input(s) and {len(model.graph.output)} "
                     "output(s); the frontend takes one input tensor and one output")
    inp = inputs[0]
    tt = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if tt.elem_type != onnx.TensorProto.FLOAT:
        raise g.fail(f"input {inp.name!r} has element type "
                     f"{onnx.TensorProto.DataType.Name(tt.elem_type)}; the frontend takes float32")
    if len(dims) not in (2, 4) or any(d is None or d < 1 for d in dims[1:]) or \
            dims[0] not in (None, 1):
        shown = ["?" if d is None else d for d in dims]
        raise g.fail(f"input {inp.name!r} has shape {shown}; the frontend takes [batch, C, H, W] "
                     "(NCHW) or [batch, N] with every dimension but the batch fixed")
    g.input, g.input_shape = inp.name, (1, *dims[1:])
    g.shapes[g.input] = g.input_shape
    g.output = model.graph.output[0].name
    for i, n in enumerate(model.graph.node):
        if n.op_type == "Constant" and n.domain in DEFAULT_DOMAINS:
            g.consts[n.output[0]] = _const_value(onnx, n, opset)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        g.nodes.append(Node(n.op_type, n.name or f"{n.op_type}_{i}", list(n.input),
                            list(n.output), attrs, n.domain, _node_scope(n)))
    return g
