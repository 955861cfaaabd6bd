"""k-winners-take-all units: local (per position, over channels) and global (per frame).

Both units take a dense stream (:func:`~cosparse.hw.streams.dense_layout`,
``D`` int8 elements per beat) and emit a sparse stream
(:func:`~cosparse.hw.streams.sparse_layout`, up to ``R`` entries per beat)
holding, per group, the winners in increasing index order, packed the
canonical way (:func:`~cosparse.hw.streams.sparse_beats`). The rules are the
golden model's (:func:`cosparse.sim.golden.kwta_mask`): the selection key is
``x * boost``, exactly ``k`` winners, ties to the lower index, a winner whose
value is 0 is dropped. :class:`LocalKWTA` and :class:`GlobalKWTA` build the
design that fits their parameters; the design notes are in ``docs/kwta.md``.
"""

from .common import MAX_BOOST, key_bits
from .global_ import GlobalKWTA, HistogramGlobalKWTA, SerialGlobalKWTA
from .local import InsertionLocalKWTA, LocalKWTA, MergeLocalKWTA

__all__ = ["LocalKWTA", "MergeLocalKWTA", "InsertionLocalKWTA",
           "GlobalKWTA", "HistogramGlobalKWTA", "SerialGlobalKWTA", "MAX_BOOST", "key_bits"]
