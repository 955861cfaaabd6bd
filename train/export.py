"""ONNX export of a trained model with either torch exporter, for the compiler."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from .qat import QuantizedNet

__all__ = ["export_onnx", "EXPORTERS"]

#: ``"legacy"``: TorchScript (``dynamo=False``); ``"dynamo"``: torch.export (needs onnxscript).
EXPORTERS = ("legacy", "dynamo")


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *,
                exporter: str = "legacy", opset: int = 17) -> Path:
    """Write ``model`` (put in eval mode) as ONNX with a dynamic batch axis; a
    :class:`~cosparse.train.QuantizedNet` as a QDQ model with its scales.

    Parameters
    ----------
    model : torch.nn.Module
        One input, one output.
    example : torch.Tensor
        An input ``[batch, ...]``; the dynamo exporter needs a batch of at
        least 2 to keep the axis dynamic, so one of 1 is repeated.
    path : str or pathlib.Path
        The ``.onnx`` file; its folder must exist.
    exporter : {"legacy", "dynamo"}
        Which torch exporter.
    opset : int
        ONNX opset.

    Returns
    -------
    pathlib.Path
        ``path``: one self-contained file (no external data).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    path = Path(path)
    model.eval()
    form = model.exporting(exporter) if isinstance(model, QuantizedNet) \
        else contextlib.nullcontext()
    with form:
        _export(model, example, path, exporter, opset)
    return path


def _export(model: nn.Module, example: torch.Tensor, path: Path, exporter: str,
            opset: int) -> None:
    if exporter == "legacy":
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          # the weights' QuantizeLinear/DequantizeLinear stay (their scales)
                          do_constant_folding=not isinstance(model, QuantizedNet))
        return
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as exc:
        raise ImportError(f"the dynamo exporter needs onnxscript ({exc}): pip install onnxscript"
                          ) from exc
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset,
                      input_names=["input"], output_names=["output"],
                      dynamic_shapes=({0: batch},), external_data=False, optimize=True)
