"""Training dual-sparse networks in PyTorch for the compiler (``pip install cosparse[train]``).

- :class:`CSLinear`, :class:`CSConv2d`: complementary-sparse layers (:mod:`.layers`);
- :class:`KWinners`, :class:`KWinners2d`: k-WTA with boosting (:mod:`.kwinners`);
- :func:`sparsify`: a trained dense model made complementary-sparse (:mod:`.convert`);
- :func:`from_nupic`: nupic.torch's k-WTA modules made exportable (:mod:`.nupic`);
- :func:`quantize`: quantization-aware training in the compiler's integer
  semantics (:mod:`.qat`);
- :func:`export_onnx`: either torch exporter, in the forms the compiler reads.

``docs/training.md`` describes them.
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the machine
    raise ImportError("cosparse.train needs PyTorch: pip install 'cosparse[train]' "
                      f"(torch 2.13.0, CPU) ({exc})") from exc

from .convert import sparsify
from .export import export_onnx
from .kwinners import TIE_RULES, KWinners, KWinners2d
from .layers import ComplementarySparse, CSConv2d, CSLinear
from .nupic import from_nupic
from .qat import QuantizedNet, QuantizeError, quantize
from .masks import is_complementary, magnitude_assignment, random_assignment

__all__ = ["CSLinear", "CSConv2d", "ComplementarySparse", "KWinners", "KWinners2d", "TIE_RULES",
           "export_onnx", "sparsify", "from_nupic", "quantize", "QuantizedNet", "QuantizeError", "is_complementary", "magnitude_assignment", "random_assignment"]
