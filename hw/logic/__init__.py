"""Fixed weights as logic: shift-and-add plans (:mod:`.graph`) and the engine that runs them."""

from .engine import LogicEngine
from .graph import AdderGraph

__all__ = ["LogicEngine", "AdderGraph"]
