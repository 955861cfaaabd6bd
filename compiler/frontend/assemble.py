"""Quantization and packing: lowered steps to a validated IR network.

Names each step after its PyTorch module, quantizes weights (int8 per output
channel), bias (int32) and requantization, packs each layer into overlays,
and inserts the ``ZeroSkip``/``Densify`` adapters of the build mode.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from .. import ir
from ..formats import insert_adapters
from ..packer import PackError, pack
from ..quantize import (bias_offset, fixed_point, quantize_boost, requant_for_range,
                        rescale_for)
from .calibrate import Scales
from .graph import Graph
from .layout import ir_shape
from .lower import Step

__all__ = ["name_steps", "kernels_for", "build_network"]


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name).strip("._") or "layer"


_STEP_WORDS = {"conv": "conv", "linear": "linear", "pool": "pool", "local_kwta": "kwta",
               "global_kwta": "kwta", "flatten": "flatten"}


def _weight_module(name: str) -> str:
    """``fc1.weight`` (or its QDQ forms ``fc1.weight_quantized`` ...) -> ``fc1``."""
    name = re.sub(r"(_DequantizeLinear_Output|_quantized|_dequantized)$", "", name)
    return name[:-len(".weight")] if name.endswith(".weight") else ""


def name_steps(steps: list[Step]) -> None:
    """IR layer names from the PyTorch module paths (weight names, exporter scopes)."""
    scopes = [_weight_module(s.node.attrs.get("weight_name", "")) or s.node.scope
              for s in steps]
    taken: set[str] = set()
    for s, scope in zip(steps, scopes):
        word = _STEP_WORDS[s.kind]
        container = any(o != scope and o.startswith(scope + ".") for o in scopes)
        base = _clean(f"{scope}.{word}" if scope and container else scope or word)
        name, i = base, 2
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        s.name = name


def kernels_for(g: Graph, steps: list[Step], kernels_per_overlay: dict | None,
                mode: str) -> dict[str, int | None]:
    """``K`` per overlay layer (None: the packer chooses) from the user's choices by name."""
    layers = [s for s in steps if s.kind in ("conv", "linear")]
    if mode == "dense":
        if kernels_per_overlay:
            raise g.fail("kernels_per_overlay does not apply to mode 'dense', which keeps every "
                         "weight with one kernel per overlay")
        return {s.name: 1 for s in layers}
    chosen: dict[str, int | None] = {s.name: None for s in layers}
    for key, k in (kernels_per_overlay or {}).items():
        hit = [s for s in layers if key == s.name or key in s.onnx_nodes]
        if not hit:
            raise g.fail(f"kernels_per_overlay names {key!r}, which is not a layer; the "
                         f"layers are {', '.join(s.name for s in layers)}")
        for s in hit:
            chosen[s.name] = k
    return chosen


def _quantize_layer(g: Graph, s: Step, s_in: float, s_out: float | None,
                    out_range: tuple[int, int] | None = None) -> dict:
    """int8 weights, int32 bias, accumulator scales and requantization of one layer."""
    w = s.weight
    if s.w_scale is not None:
        w_scale = s.w_scale
    else:
        peak = np.abs(w).max(axis=1)
        w_scale = np.where(peak > 0, peak / 127, 1.0)
    wq = np.clip(np.rint(w / w_scale[:, None]), -128, 127).astype(np.int8)
    acc_scale = s_in * w_scale
    bq = np.rint(s.bias / acc_scale)
    rq = rs = None
    if s_out is not None:
        lo, hi = out_range or (None, None)
        try:
            # Rounded half to even, as the QuantizeLinear of a quantized model does, with
            # 24-bit multipliers where the model states its scales (16 bits change about
            # 0.02% of its values: products within 2**-16 of a half).
            kw = dict(rounding="half-even", bits=24 if g.act_scale else 16)
            if s.post is None:
                s_first = s_out
                rq = requant_for_range(acc_scale / s_out, relu=s.relu, lo=lo, hi=hi, **kw)
            else:  # rounded to the middle tensor's scale, then again after the affine
                s_first = g.act_scale[s.mid_name]
                mid_lo, mid_hi = g.act_range.get(s.mid_name, (None, None))
                rq = requant_for_range(acc_scale / s_first, relu=False, lo=mid_lo, hi=mid_hi,
                                       **kw)
                a, c = s.post
                rs = rescale_for(a * (s_first / s_out), c / s_out, relu=s.relu, lo=lo, hi=hi)
            if g.act_scale and not s.bias_quantized and np.any(s.bias != 0):
                # A float bias (the model does not quantize it): added at the output's
                # fixed point, where its fraction survives, instead of as int32.
                rq = dataclasses.replace(rq, offset=bias_offset(s.bias, s_first, rq.shift))
                bq = np.zeros_like(bq)
        except ValueError as e:
            raise g.fail(f"layer {s.name!r}: cannot requantize ({e})") from None
    if np.any(np.abs(bq) >= 2**31):
        raise g.fail(f"layer {s.name!r}: bias {float(np.abs(s.bias).max()):.6g} does not fit "
                     f"int32 at the accumulator scale {float(acc_scale.min()):.3g}")
    return dict(weights=wq, bias=bq.astype(np.int32), acc_scale=acc_scale, requant=rq,
                rescale=rs)


def _fold_post(s: Step) -> None:
    """Fold a step's affine after its first rounding into its weights and bias (its
    output is not requantized, so there is no second rounding to keep)."""
    a, c = s.post
    s.weight = s.weight * a[:, None]
    s.bias = s.bias * a + c
    if not np.all(a == 1):
        s.w_scale = None
    s.post = s.mid_name = None


def _overlay_layer(g: Graph, s: Step, s_in: float, s_out: float | None, k: int | None,
                   mode: str, out_range: tuple[int, int] | None = None) -> ir.Layer:
    """Quantize and pack one conv or linear step."""
    if s.post is not None and s_out is None:
        _fold_post(s)
    q = _quantize_layer(g, s, s_in, s_out, out_range)
    try:
        ov = pack(q["weights"], k, dense=mode == "dense")
    except PackError as e:
        raise g.fail(f"layer {s.name!r}: {e}") from None
    # the model's narrow weights (its own scales: the integers are its quantizer's)
    wbits = s.weight_bits if s.w_scale is not None else 8
    common = dict(overlays=ov, bias=q["bias"], requant=q["requant"], rescale=q["rescale"],
                  weight_bits=wbits,
                  out_scale=float(s_out or 1.0),
                  acc_scale=tuple(float(v) for v in q["acc_scale"]))
    if s.kind == "conv":
        return ir.OverlayConv(s.name, kernel=s.kernel, stride=s.stride, padding=s.padding,
                              **common)
    return ir.OverlayLinear(s.name, **common)


def quantized_key(real: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer boosts and a shift for quantized keys ``round(x * real)``: the boosts
    ``round(real * 2**shift)`` of at most 17 bits, with the largest shift that fits."""
    top = float(real.max())
    shift = int(np.clip(np.floor(np.log2(ir.MAX_KEY_BOOST / top)), 0, ir.MAX_KEY_SHIFT))
    boost = np.clip(np.rint(real * 2.0 ** shift), 1, ir.MAX_KEY_BOOST).astype(np.int64)
    return boost, shift


def _kwta_layer(s: Step, s_in: float) -> tuple[ir.Layer, dict]:
    """The IR k-WTA of a step, and how its boost (or its quantized key) was made."""
    cls = ir.LocalKWTA if s.kind == "local_kwta" else ir.GlobalKWTA
    form = {"k": s.k, "onnx_form": "gather-scatter" if s.exact else "threshold"}
    if s.key_scale is not None and s.boost is not None:
        # keys as the model quantizes them: round(x * s_in * boost / s_key)
        boost, shift = quantized_key(s.boost * (s_in / s.key_scale))
        info = dict(form, key="quantized", key_scale=s.key_scale, shift=shift, exact=False)
        layer = cls(s.name, k=s.k, boost=boost, key_shift=shift)
    else:
        boost, info = (None, {"shift": None, "exact": True}) if s.boost is None \
            else quantize_boost(s.boost)
        layer, info = cls(s.name, k=s.k, boost=boost), dict(info, **form)
    if cls is ir.GlobalKWTA:
        layer.tie_order = info["tie_order"] = s.tie_order
    return layer, info


def _layer_meta(g: Graph, s: Step) -> dict:
    """Where a step came from: its ONNX nodes, tensors and (QDQ) quantized output tensor."""
    meta = {"onnx_nodes": s.onnx_nodes, "onnx_input": s.onnx_in, "onnx_output": s.onnx_out}
    shape = g.shape(s.onnx_out)
    quantized = [g.act_quantized[t] for t in reversed(s.scale_names)
                 if t in g.act_quantized and g.shape(t) == shape]
    if s.out_name in g.act_quantized:  # a k-WTA's output quantized after a flatten
        quantized.insert(0, g.act_quantized[s.out_name])
    if quantized:
        meta["onnx_quantized"] = quantized[0]
    return meta


#: A threshold-form k-WTA keeps every key equal to the k-th; the IR bounds its winners
#: at this many times k (or the group size), which sizes the hardware's winner cells.
THRESHOLD_WINNERS = 2


def _bound_ties(net: ir.Network, threshold: set[str]) -> None:
    """Give each threshold-form k-WTA its winner bound, ``min(n, THRESHOLD_WINNERS * k)``."""
    specs = net.specs()
    for i, layer in enumerate(net.layers):
        if layer.name in threshold:
            shape = specs[i].shape
            n = shape[-1] if isinstance(layer, ir.LocalKWTA) else int(np.prod(shape))
            layer.max_winners = min(n, THRESHOLD_WINNERS * layer.k)


def build_network(g: Graph, steps: list[Step], calibration: np.ndarray | None, mode: str,
                  kfor: dict[str, int | None], name: str) -> ir.Network:
    """Quantize and pack the steps into a validated network with its meta facts."""
    scales = Scales(g, steps, calibration)
    s_in = input_scale = scales.input()
    in_range = rng = scales.input_range() or (-128, 127)  # the values flowing, zero point off
    layers: list[ir.Layer] = []
    kwta: dict[str, dict] = {}
    for i, s in enumerate(steps):
        if s.kind in ("conv", "linear"):
            logits = i == len(steps) - 1 and not s.relu  # int32 accumulators out
            s_out = None if logits else scales.output(i)
            layer = _overlay_layer(g, s, s_in, s_out, kfor[s.name], mode,
                                   None if logits else scales.output_range(i))
            if rng[0] < -128 or rng[1] > 127:  # int9 inputs: accumulators for their bound
                layer.input_bound = max(-rng[0], rng[1])
            layers.append(layer)
            s_in = s_out or s_in
            rng = layer.requant.bounds if layer.requant is not None else rng
        elif s.kind == "pool":
            layers.append(ir.MaxPool(s.name, kernel=s.kernel, stride=s.stride))
        elif s.kind in ("local_kwta", "global_kwta"):
            layer, kwta[s.name] = _kwta_layer(s, s_in)
            if s.key_range is not None and layer.key_shift is not None:
                layer.key_range = s.key_range  # the key's quantizer, its zero point off
            out_range = g.act_range.get(s.out_name or s.onnx_out)
            if s.out_scale is not None and (abs(s.out_scale / s_in - 1) > 1e-6 or (
                    out_range is not None and out_range != tuple(rng))):
                # the model requantizes the winners to a scale (or range) of their own
                mult, shift = fixed_point(np.array([s_in / s.out_scale]), 24)
                layer.rescale, layer.out_scale = (int(mult[0]), int(shift[0])), s.out_scale
                layer.out_range = out_range or (-128, 127)
                kwta[s.name]["rescale"] = [int(mult[0]), int(shift[0])]
                s_in, rng = s.out_scale, layer.out_range
            layers.append(layer)
        else:
            layers.append(ir.Flatten(s.name))
    net = ir.Network(name, ir.activation_spec(ir_shape(g.input_shape), float(input_scale),
                                              *in_range),
                     insert_adapters(layers, mode))
    try:
        _bound_ties(net, {name for name, info in kwta.items() if info["onnx_form"] == "threshold"})
        out = net.specs()[-1]
    except ir.ManifestError as e:
        raise g.fail(f"the imported network is not valid: {e}") from None
    for layer in net.layers:
        if isinstance(layer, ir.KWTALayer):
            kwta[layer.name].update(tie_rule=layer.tie_rule, max_winners=layer.winners)
    net.meta.update(
        mode=mode, input_scale=float(input_scale),
        output_scale=list(out.scale) if isinstance(out.scale, tuple) else out.scale,
        quantization="qdq" if scales.qdq else "calibration", kwta=kwta,
        input_range=list(in_range),
        layers={s.name: _layer_meta(g, s) for s in steps})
    return net
