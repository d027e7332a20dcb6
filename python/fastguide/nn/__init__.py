"""Layers and models."""
from .norm import GroupNormAct

__all__ = ["GroupNormAct"]
