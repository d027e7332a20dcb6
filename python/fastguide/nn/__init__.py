"""Layers and models: guided-diffusion's ADM UNet, super-resolution UNet and noisy classifier,
on fastguide's fused ops."""
from .norm import GroupNormAct
from .embedding import timestep_embedding
from .blocks import ResBlock, Upsample, Downsample
from .attention import AttentionBlock, AttentionPool2d, qkv_attention
from .unet import UNet, SuperResUNet
from .classifier import EncoderUNet
from . import presets
from .infer import infer_config
from .checkpoint import load_checkpoint, save_model

__all__ = ["GroupNormAct", "timestep_embedding", "ResBlock", "Upsample", "Downsample",
           "AttentionBlock", "AttentionPool2d", "qkv_attention", "UNet", "SuperResUNet",
           "EncoderUNet", "presets", "infer_config", "load_checkpoint", "save_model"]
