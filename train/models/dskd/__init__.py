"""Dual-student knowledge distillation (dskd): a local and a global reverse student, contextual affinity."""
from ..registry import register_method
from .config import SPEC, DSKDOptions

register_method(SPEC)

__all__ = ["DSKDOptions", "SPEC"]
