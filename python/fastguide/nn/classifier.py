"""The noisy-image classifier of classifier guidance: guided-diffusion's EncoderUNetModel, i.e. the
UNet encoder and middle block followed by a pooling head. Called as classifier(x, timesteps).

Heads (`pool`), with guided-diffusion's keys:
    adaptive    GroupNorm, SiLU, global mean, 1x1 conv (out.0, out.3)
    attention   GroupNorm, SiLU, AttentionPool2d (out.0, out.2); the released classifiers
    spatial     mean of every block's output, concatenated -> Linear, ReLU, Linear (out.0, out.2)
    spatial_v2  same features -> Linear, GroupNorm, SiLU, Linear (out.0, out.1, out.3)
"""
import torch
from torch import nn

from .attention import AttentionPool2d
from .base import ModelBase
from .blocks import conv_nd, zero_module
from .norm import GroupNormAct
from .unet import build_encoder, build_middle, make_config

__all__ = ["EncoderUNet", "POOLS"]

POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


class SpatialMean(nn.Module):
    """Mean over all spatial axes, keeping them (AdaptiveAvgPool to 1x1, for any dims)."""

    def forward(self, x):
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


class EncoderUNet(ModelBase):
    """guided-diffusion's EncoderUNetModel (same arguments, same keys); dtype and backend as in
    UNet. num_heads_upsample is accepted for compatibility and unused."""

    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks,
                 attention_resolutions, dropout=0.0, channel_mult=(1, 2, 4, 8), conv_resample=True,
                 dims=2, use_checkpoint=False, use_fp16=False, num_heads=1, num_head_channels=-1,
                 num_heads_upsample=-1, use_scale_shift_norm=False, resblock_updown=False,
                 use_new_attention_order=False, pool="adaptive", *, dtype=None, backend="fused"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        cfg = make_config("classifier", dict(locals()), dtype, backend)
        self.config = cfg
        self.in_channels, self.out_channels, self.pool = in_channels, out_channels, pool

        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        self.input_blocks, chans, ch, ds = build_encoder(cfg, in_channels)
        self.middle_block = build_middle(cfg, ch)
        feature_size = sum(chans) + ch  # what the spatial pools concatenate
        self.out = self._head(pool, ch, ds, feature_size)
        self.convert_trunk(cfg["dtype"])

    def _head(self, pool, ch, ds, feature_size):
        cfg, out_ch, backend = self.config, self.out_channels, self.config["backend"]
        if pool == "adaptive":
            return nn.Sequential(GroupNormAct(ch, backend=backend), nn.Identity(), SpatialMean(),
                                 zero_module(conv_nd(cfg["dims"], ch, out_ch, 1)), nn.Flatten())
        if cfg["dims"] != 2:
            raise ValueError(f"pool={pool!r} needs dims=2, got dims={cfg['dims']}")
        if pool == "attention":
            if cfg["num_head_channels"] == -1:
                raise ValueError("pool='attention' needs num_head_channels (it sets the heads)")
            if cfg["image_size"] is None:
                raise ValueError("pool='attention' needs image_size (the positional embedding "
                                 "has one entry per position)")
            return nn.Sequential(GroupNormAct(ch, backend=backend), nn.Identity(),
                                 AttentionPool2d(cfg["image_size"] // ds, ch,
                                                 cfg["num_head_channels"], out_ch, backend=backend))
        if pool == "spatial":
            return nn.Sequential(nn.Linear(feature_size, 2048), nn.ReLU(),
                                 nn.Linear(2048, out_ch))
        return nn.Sequential(nn.Linear(feature_size, 2048), GroupNormAct(2048, backend=backend),
                             nn.Identity(), nn.Linear(2048, out_ch))

    def forward(self, x, timesteps):
        self._check_x(x)
        emb = self._embed_time(timesteps, x)
        spatial = self.pool.startswith("spatial")
        head_dtype = next(self.out.parameters()).dtype
        features = []
        h = x.to(self.dtype)
        for block in self.input_blocks:
            h = block(h, emb)
            if spatial:
                features.append(h.to(head_dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            features.append(h.to(head_dtype).mean(dim=(2, 3)))
            h = torch.cat(features, dim=-1)
        return self.out(h.to(head_dtype)).to(x.dtype)
