"""A network on disk: ``manifest.json`` (everything readable) and ``tensors.npz`` (the overlays).

:func:`save` writes a validated network; :func:`load` reads one back and
rejects a malformed pair with a :class:`~cosparse.compiler.ir.ManifestError`
that names the file, the field and the problem. Both are also reachable as
``ir.save`` and ``ir.load``.

:func:`seal` records in the manifest the SHA-256 of a compiled folder's
files that running it reads (:data:`SEALED`) and of the manifest's own
content; :func:`verify` finds any of them edited, missing or added since.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .ir import (FORMAT_VERSION, ManifestError, _fail, Overlays, Requant, Rescale, TensorSpec, Layer, OverlayLayer, OverlayLinear, OverlayConv, MaxPool, KWTALayer, LocalKWTA, GlobalKWTA, LAYER_KINDS, Network)

__all__ = ["save", "load", "seal", "verify", "SEALED"]

_ARRAY_FIELDS = ("weights", "kernel_ids", "row_start", "kernel_map")


def _vec(v: np.ndarray | None) -> list[int] | None:
    return None if v is None else [int(x) for x in v]


def _requant_dict(rq: Requant) -> dict:
    d = {"multiplier": _vec(rq.multiplier), "shift": _vec(rq.shift), "relu": rq.relu,
         "lo": rq.bounds[0], "hi": rq.bounds[1], "rounding": rq.rounding}
    if rq.offset is not None:
        d["offset"] = _vec(rq.offset)
    return d


def _layer_to_dict(layer: Layer, tensors: dict[str, np.ndarray]) -> dict:
    d: dict[str, Any] = {"kind": layer.kind, "name": layer.name}
    if isinstance(layer, OverlayLayer):
        ov = layer.overlays
        for f in _ARRAY_FIELDS:
            tensors[f"{layer.name}/{f}"] = getattr(ov, f)
        d["overlays"] = {
            "lanes": ov.lanes, "kernels_per_overlay": ov.kernels_per_overlay,
            "num_kernels": ov.num_kernels, "fan_in": ov.fan_in, "words": ov.words,
            "fill": round(ov.fill, 6),
            "arrays": {f: f"{layer.name}/{f}" for f in _ARRAY_FIELDS},
        }
        d["bias"] = _vec(layer.bias)
        d["requant"] = None if layer.requant is None else _requant_dict(layer.requant)
        if layer.rescale is not None:
            rs = layer.rescale
            d["rescale"] = {"multiplier": _vec(rs.multiplier), "shift": _vec(rs.shift),
                            "offset": _vec(rs.offset), "relu": rs.relu, "lo": rs.bounds[0],
                            "hi": rs.bounds[1]}
        d["out_scale"] = layer.out_scale
        d["acc_scale"] = list(layer.acc_scale)
        d["accumulator_bits"] = layer.accumulator_bits()
        d["input_bound"] = layer.input_bound
        if layer.weight_bits != 8:
            d["weight_bits"] = layer.weight_bits
    if isinstance(layer, OverlayConv):
        d.update(kernel=list(layer.kernel), stride=list(layer.stride), padding=list(layer.padding))
    if isinstance(layer, MaxPool):
        d.update(kernel=list(layer.kernel), stride=list(layer.stride))
    if isinstance(layer, KWTALayer):
        d.update(k=layer.k, boost=_vec(layer.boost), tie_rule=layer.tie_rule)
        if isinstance(layer, GlobalKWTA) and layer.tie_order != "stream":
            d["tie_order"] = layer.tie_order
        if layer.max_winners is not None:
            d["max_winners"] = layer.max_winners
        if layer.key_shift is not None:
            d["key_shift"] = layer.key_shift
        if layer.rescale is not None:
            d.update(rescale=list(layer.rescale), out_scale=layer.out_scale,
                     out_range=list(layer.out_range))
        if layer.key_shift is not None:
            d["key_range"] = list(layer.key_range)
    return d


def save(net: Network, outdir: str | Path) -> Path:
    """Write ``manifest.json`` and ``tensors.npz`` into ``outdir``; return the manifest path."""
    specs = net.specs()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    doc = {
        "format_version": FORMAT_VERSION,
        "name": net.name,
        "input": _spec_to_dict(net.input),
        "output": _spec_to_dict(specs[-1]),
        "layers": [_layer_to_dict(layer, tensors) for layer in net.layers],
        "meta": net.meta,
    }
    np.savez(outdir / "tensors.npz", **tensors)
    path = outdir / "manifest.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def _spec_to_dict(s: TensorSpec) -> dict:
    d = {"shape": list(s.shape), "dtype": s.dtype,
         "scale": list(s.scale) if isinstance(s.scale, tuple) else s.scale}
    if s.activation:
        d["range"] = list(s.bounds)
    return d


class _Reader:
    """Typed access to a JSON object that reports the path of a bad field."""

    def __init__(self, obj: Any, where: str):
        if not isinstance(obj, dict):
            _fail(where, f"expected an object, got {type(obj).__name__}")
        self.obj, self.where = obj, where

    def get(self, key: str, types: type | tuple, *, optional: bool = False) -> Any:
        if key not in self.obj:
            if optional:
                return None
            _fail(f"{self.where}.{key}", "missing")
        v = self.obj[key]
        if optional and v is None:
            return None
        if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            _fail(f"{self.where}.{key}", f"expected {_tname(types)}, got {v!r}")
        if not isinstance(v, types):
            _fail(f"{self.where}.{key}", f"expected {_tname(types)}, got {type(v).__name__}")
        return v

    def ints(self, key: str, *, n: int | None = None, optional: bool = False) -> tuple[int, ...] | None:
        v = self.get(key, list, optional=optional)
        if v is None:
            return None
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in v) or (n is not None and len(v) != n):
            _fail(f"{self.where}.{key}", f"expected a list of {n or 'some'} integers")
        return tuple(v)

    def vec(self, key: str, dtype: type, *, optional: bool = False) -> np.ndarray | None:
        v = self.ints(key, optional=optional)
        if v is None:
            return None
        lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
        if v and (min(v) < lo or max(v) > hi):
            _fail(f"{self.where}.{key}", f"values must fit {np.dtype(dtype).name}")
        return np.array(v, dtype=dtype)

    def sub(self, key: str) -> "_Reader":
        return _Reader(self.get(key, dict), f"{self.where}.{key}")


def _tname(types: type | tuple) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join({int: "an integer", float: "a number", str: "a string", list: "a list",
                        dict: "an object", bool: "true/false"}.get(t, t.__name__) for t in ts)


def _spec_from(r: _Reader) -> TensorSpec:
    scale = r.get("scale", (int, float, list))
    if isinstance(scale, list):
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scale):
            _fail(f"{r.where}.scale", "expected numbers")
        scale = tuple(float(s) for s in scale)
    else:
        scale = float(scale)
    rng = r.ints("range", n=2, optional=True)
    spec = TensorSpec(r.ints("shape"), r.get("dtype", str), scale,
                      *(rng if rng is not None else (None, None)))
    spec.check(r.where)
    return spec


def _read_requant(q: _Reader) -> Requant:
    return Requant(q.vec("multiplier", np.int32), q.vec("shift", np.int32), q.get("relu", bool),
                   lo=q.get("lo", int, optional=True), hi=q.get("hi", int, optional=True),
                   rounding=q.get("rounding", str, optional=True) or "half-up",
                   offset=q.vec("offset", np.int64, optional=True))


def _layer_from(r: _Reader, tensors: dict[str, np.ndarray], npz_name: str) -> Layer:
    name = r.get("name", str)
    r.where += f" ({name})"
    kind = r.get("kind", str)
    if kind not in LAYER_KINDS:
        _fail(f"{r.where}.kind", f"unknown layer kind {kind!r}; known: {', '.join(LAYER_KINDS)}")
    if kind in ("overlay_linear", "overlay_conv"):
        o = r.sub("overlays")
        arrays = o.sub("arrays")
        got = {}
        for f in _ARRAY_FIELDS:
            key = arrays.get(f, str)
            if key not in tensors:
                _fail(f"{arrays.where}.{f}", f"array {key!r} not found in {npz_name}")
            got[f] = tensors[key]
        ov = Overlays.__new__(Overlays)  # checked below with the layer's path
        for f, v in got.items():
            object.__setattr__(ov, f, v)
        object.__setattr__(ov, "num_kernels", o.get("num_kernels", int))
        ov.check(o.where)
        rq = rs = None
        if r.get("requant", dict, optional=True) is not None:
            rq = _read_requant(r.sub("requant"))
        if r.get("rescale", dict, optional=True) is not None:
            q = r.sub("rescale")
            rs = Rescale(q.vec("multiplier", np.int32), q.vec("shift", np.int32),
                         q.vec("offset", np.int64), q.get("relu", bool),
                         lo=q.get("lo", int, optional=True), hi=q.get("hi", int, optional=True))
        kw = dict(name=name, overlays=ov, bias=r.vec("bias", np.int32), requant=rq, rescale=rs,
                  out_scale=float(r.get("out_scale", (int, float))),
                  acc_scale=tuple(float(s) for s in r.get("acc_scale", list)),
                  input_bound=r.get("input_bound", int, optional=True) or 128,
                  weight_bits=r.get("weight_bits", int, optional=True) or 8)
        if kind == "overlay_linear":
            return OverlayLinear(**kw)
        return OverlayConv(kernel=r.ints("kernel", n=2), stride=r.ints("stride", n=2),
                           padding=r.ints("padding", n=4), **kw)
    if kind == "max_pool":
        return MaxPool(name, kernel=r.ints("kernel", n=2), stride=r.ints("stride", n=2))
    if kind in ("local_kwta", "global_kwta"):
        tie = r.get("tie_rule", str, optional=True)
        if tie not in (None, "lower-index", "threshold"):
            _fail(f"{r.where}.tie_rule", f"expected 'lower-index' or 'threshold', got {tie!r}")
        bound = r.get("max_winners", int, optional=True)
        if (tie == "threshold") != (bound is not None):
            _fail(f"{r.where}.max_winners", "the 'threshold' tie rule needs max_winners, and "
                                            "only it takes one")
        cls = LocalKWTA if kind == "local_kwta" else GlobalKWTA
        rescale = r.ints("rescale", n=2, optional=True)
        out_scale = r.get("out_scale", (int, float), optional=True)
        ranges = {f: r.ints(f, n=2, optional=True) for f in ("key_range", "out_range")}
        order = r.get("tie_order", str, optional=True)
        if order is not None and kind != "global_kwta":
            _fail(f"{r.where}.tie_order", "only a global k-WTA takes a tie order")
        layer = cls(name, k=r.get("k", int), boost=r.vec("boost", np.int64, optional=True),
                    max_winners=bound, key_shift=r.get("key_shift", int, optional=True),
                    rescale=rescale, out_scale=None if out_scale is None else float(out_scale),
                    **{f: v for f, v in ranges.items() if v is not None})
        if order is not None:
            layer.tie_order = order
        return layer
    return LAYER_KINDS[kind](name)


def load(path: str | Path) -> Network:
    """Read a network from a folder (or its ``manifest.json``) and validate it.

    Raises
    ------
    ManifestError
        The files are missing, unreadable, of another format version, or
        describe an inconsistent network; the message names what and where.
    """
    path = Path(path)
    manifest = path / "manifest.json" if path.is_dir() else path
    npz = manifest.with_name("tensors.npz")
    try:
        doc = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise ManifestError(f"no compiled network at {path}: {manifest} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{manifest}: not readable JSON ({e})") from None
    r = _Reader(doc, manifest.name)
    version = r.get("format_version", int)
    if version != FORMAT_VERSION:
        _fail(f"{manifest.name}.format_version",
              f"this cosparse reads version {FORMAT_VERSION}, the file is version {version}")
    try:
        with np.load(npz, allow_pickle=False) as z:
            tensors = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ManifestError(f"{npz}: no such file (the manifest's arrays live there)") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ManifestError(f"{npz}: not a readable .npz archive ({e})") from None
    layers_raw = r.get("layers", list)
    layers = [_layer_from(_Reader(x, f"{manifest.name}.layers[{i}]"), tensors, npz.name)
              for i, x in enumerate(layers_raw)]
    meta = r.get("meta", dict, optional=True) or {}
    net = Network(r.get("name", str), _spec_from(r.sub("input")), layers, meta)
    try:
        net.specs()
    except ManifestError as e:
        raise ManifestError(f"{manifest.name}: {e}") from None
    return net


#: What :func:`seal` covers in a compiled folder: the arrays, the host link's settings and
#: the memory images with the weight bundle (``images/``, every file in it).
SEALED = ("tensors.npz", "link.json", "images")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sealed_files(folder: Path) -> list[str]:
    out = []
    for name in SEALED:
        p = folder / name
        if p.is_dir():
            out += sorted(str(f.relative_to(folder)) for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            out.append(name)
    return out


def _doc_digest(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "digests"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def seal(folder: str | Path) -> None:
    """Record the SHA-256 of ``folder``'s :data:`SEALED` files, and of the manifest's
    content, in its ``manifest.json`` (``"digests"``)."""
    folder = Path(folder)
    manifest = folder / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc.pop("digests", None)
    doc["digests"] = {"manifest": _doc_digest(doc),
                      "files": {rel: _sha256(folder / rel) for rel in _sealed_files(folder)}}
    manifest.write_text(json.dumps(doc, indent=1) + "\n")


def verify(folder: str | Path) -> None:
    """Check a sealed compiled folder against its digests (an unsealed one passes).

    Raises
    ------
    ManifestError
        The manifest or a sealed file was edited, removed or added after
        compiling; the message names it.
    """
    folder = Path(folder)
    manifest = folder / "manifest.json"
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # load() reports an unreadable manifest
    digests = doc.get("digests") if isinstance(doc, dict) else None
    if digests is None:
        return
    again = "compile the model again (cosparse compile)"
    if not isinstance(digests, dict) or digests.get("manifest") != _doc_digest(doc):
        raise ManifestError(f"{manifest} was edited after compiling (its content no longer "
                            f"matches the digest it records): {again}")
    files = digests.get("files") or {}
    for rel in sorted(set(files) | set(_sealed_files(folder))):
        path = folder / rel
        if rel not in files:
            raise ManifestError(f"{path} was added after compiling (the folder's {rel.split('/')[0]} "
                                f"held only what the compile wrote): remove it, or {again}")
        if not path.is_file():
            raise ManifestError(f"{path} is missing (the compile wrote it): {again}")
        if _sha256(path) != files[rel]:
            raise ManifestError(f"{path} was edited after compiling (its SHA-256 is not the one "
                                f"manifest.json records): restore it, or {again}")
