"""Masked reverse distillation (mrkd): RD with a feature-mask module and SCSAtt in the bottleneck."""
from ..registry import register_method
from .config import SPEC, MRKDOptions

register_method(SPEC)

__all__ = ["MRKDOptions", "SPEC"]
