"""Reverse distillation (rd): a student decoder reconstructs the teacher's features from a one-class bottleneck."""
from ..registry import register_method
from .config import SPEC, RDOptions

register_method(SPEC)

__all__ = ["RDOptions", "SPEC"]
