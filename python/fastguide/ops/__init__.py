"""The Python face of every fastguide op: checked wrappers, and the pure-PyTorch references
that the tests use as oracles."""
from .adagn import group_norm_act, group_norm_act_eager, group_norm_act_reference
from .attention import attention, attention_reference
from . import sampler
from .sampler import ddim_step, ddpm_step, euler_step, heun_step

__all__ = ["group_norm_act", "group_norm_act_eager", "group_norm_act_reference", "attention", "attention_reference", "sampler", "ddpm_step", "ddim_step",
           "euler_step", "heun_step"]
