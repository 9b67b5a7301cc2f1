"""Forward distillation (stfpm, dcam): a student backbone reproduces the frozen teacher's feature pyramid."""
from ..registry import register_method
from .config import DCAM, STFPM

register_method(STFPM)
register_method(DCAM)

__all__ = ["DCAM", "STFPM"]
