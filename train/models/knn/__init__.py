"""Memory bank (knn): PatchCore-style nearest-neighbour distance on the frozen teacher; no student."""
from ..registry import register_method
from .config import SPEC, KNNOptions

register_method(SPEC)

__all__ = ["KNNOptions", "SPEC"]
