"""The ONNX frontend: float and QDQ ONNX models to the quantized, packed IR.

:func:`import_onnx` reads a model exported by PyTorch (either exporter) or
quantized by ONNX Runtime (QDQ format) and runs these passes in order:
:mod:`.load` (read the model, external data only from its own folder, the
ONNX checker), :mod:`.check` (every node's operator and attributes; also
usable alone as :func:`check_supported`), :mod:`.constants` (constant
folding, shape inference, stripping the QDQ pairs), :mod:`.rewrite` (to a
fixed point: canonical layers, k-WTA matching in :mod:`.kwta`, affine and
ReLU fusion), :mod:`.lower` (the straight chain to IR steps in the IR's
layout), :mod:`.calibrate` (activation scales), :mod:`.assemble`
(quantization, packing, adapters). :mod:`.graph` holds the working graph
they share, :mod:`.layout` the conversions between the model's layout and
the IR's (:func:`to_ir_input`, :func:`from_ir_output`).

The design, the recognised k-WTA patterns, tie and boost semantics and the
limits are described in ``docs/frontend.md``.
"""

from .check import SUPPORTED_OPS, check_supported
from .graph import FrontendError
from .importer import MODES, import_onnx
from .layout import from_ir_output, to_ir_input

__all__ = ["FrontendError", "import_onnx", "check_supported", "SUPPORTED_OPS", "MODES",
           "to_ir_input", "from_ir_output"]
