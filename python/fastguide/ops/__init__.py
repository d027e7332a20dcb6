"""The Python face of every fastguide op: checked wrappers, and the pure-PyTorch references
that the tests use as oracles."""
from .adagn import group_norm_act, group_norm_act_reference

__all__ = ["group_norm_act", "group_norm_act_reference"]
