"""The entry point: :func:`import_onnx` runs the frontend's passes in order."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import ir
from .assemble import build_network, kernels_for, name_steps
from .calibrate import check_calibration
from .check import check_nodes
from .constants import fold_all, strip_qdq
from .graph import FrontendError
from .layout import layout_meta
from .load import attach_data, load_model, working_graph
from .lower import lower, straight_chain
from .rewrite import rewrite

__all__ = ["MODES", "import_onnx"]

#: Build modes: which streams are sparse and which weights are stored.
MODES = ("sparse-sparse", "sparse-weights", "dense")


def import_onnx(path: str | os.PathLike, *, calibration: np.ndarray | None = None,
                mode: str = "sparse-sparse", kernels_per_overlay: dict[str, int] | None = None,
                name: str | None = None) -> ir.Network:
    """Import an ONNX model (float or QDQ) as a quantized, packed :class:`~.ir.Network`.

    Parameters
    ----------
    path : path-like
        The ``.onnx`` file. External data is read only from files in the
        model's own folder.
    calibration : ndarray of float32, shape (N, *input shape), optional
        Sample inputs (the model's input shape without the batch). Needed for
        a float model: each layer's activation scale is ``max|y| / 127`` of
        its float output over these samples. A QDQ model takes its scales
        from the model; calibration then only fills scales it lacks.
    mode : {"sparse-sparse", "sparse-weights", "dense"}
        ``sparse-sparse``: overlay layers process only non-zero inputs (a
        ``ZeroSkip`` precedes a layer whose input stream is dense, such as
        the network input). ``sparse-weights``: overlay layers process every
        input (a ``Densify`` follows each k-WTA that feeds one). ``dense``:
        as ``sparse-weights``, and every weight, zero or not, is stored
        (one kernel per overlay).
    kernels_per_overlay : dict of str to int, optional
        ``K`` per layer, by IR layer name or ONNX node name; other layers let
        the packer choose.
    name : str, optional
        Network name; the file's stem by default.

    Returns
    -------
    ir.Network
        ``meta`` holds ``source``, ``input_shape``, ``input_layout``
        (``"NCHW"`` or ``"vector"``), ``output_shape``, ``output_layout``,
        ``mode``, ``input_scale``, ``output_scale``, ``quantization``
        (``"qdq"`` or ``"calibration"``), the boost quantization per k-WTA
        and, per IR layer, the ONNX nodes it came from. :func:`to_ir_input`
        and :func:`from_ir_output` convert model-layout arrays.

    Raises
    ------
    FrontendError
        The file is unreadable, uses unsupported operators or attributes,
        points to external data outside its folder, is a float model without
        calibration data, or the calibration data has the wrong shape.
    """
    if mode not in MODES:
        raise FrontendError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    p = Path(path)
    model = load_model(p)
    check_nodes(model, p)  # the fast pass, before reading weights held outside the file
    attach_data(model, p)
    g = working_graph(model, p)
    del model
    fold_all(g)
    strip_qdq(g)
    rewrite(g)
    steps, layout = lower(g, straight_chain(g))
    if not any(s.kind in ("conv", "linear") for s in steps):
        raise g.fail("the model has no Conv, Gemm or MatMul layer")
    name_steps(steps)
    if calibration is not None:
        calibration = check_calibration(g, calibration)
    kfor = kernels_for(g, steps, kernels_per_overlay, mode)
    net = build_network(g, steps, calibration, mode, kfor, name or p.stem)
    net.meta.update(layout_meta(g, layout, net))
    net.meta["source"] = p.name
    return net
