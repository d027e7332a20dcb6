"""The ADM UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis") and its
super-resolution variant, with guided-diffusion's constructor arguments and state-dict keys.

    emb = MLP(timestep_embedding(t)) [+ label_emb(y)]
    encoder: input_blocks (conv, then per level num_res_blocks ResBlocks [+ attention], then a
             downsample except at the last level); middle_block: ResBlock, attention, ResBlock
    decoder: output_blocks, each reading [h, skip] (current features first), upsampling at the
             end of each level but the first
    out: GroupNorm, SiLU, conv3x3
"""
import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionBlock
from .base import ModelBase, dtype_name, resolve_dtype
from .blocks import Downsample, EmbedSequential, ResBlock, Upsample, conv_nd, zero_module
from .norm import GroupNormAct, check_backend

__all__ = ["UNet", "SuperResUNet", "build_encoder", "build_middle"]


def _level_channels(cfg, mult):
    return int(mult * cfg["model_channels"])


def _resblock(cfg, ch, out_ch, up=False, down=False):
    return ResBlock(ch, 4 * cfg["model_channels"], cfg["dropout"], out_channels=out_ch,
                    dims=cfg["dims"], use_checkpoint=cfg["use_checkpoint"],
                    use_scale_shift_norm=cfg["use_scale_shift_norm"], up=up, down=down,
                    backend=cfg["backend"])


def _attention(cfg, ch, num_heads):
    return AttentionBlock(ch, num_heads=num_heads, num_head_channels=cfg["num_head_channels"],
                          use_checkpoint=cfg["use_checkpoint"],
                          use_new_attention_order=cfg["use_new_attention_order"],
                          backend=cfg["backend"])


def build_encoder(cfg, in_channels):
    """-> (input_blocks, channels of each block's output, final channels, final downsample ds)."""
    ch = _level_channels(cfg, cfg["channel_mult"][0])
    blocks = nn.ModuleList([EmbedSequential(conv_nd(cfg["dims"], in_channels, ch, 3, padding=1))])
    chans, ds = [ch], 1
    for level, mult in enumerate(cfg["channel_mult"]):
        for _ in range(cfg["num_res_blocks"]):
            layers = [_resblock(cfg, ch, _level_channels(cfg, mult))]
            ch = _level_channels(cfg, mult)
            if ds in cfg["attention_resolutions"]:
                layers.append(_attention(cfg, ch, cfg["num_heads"]))
            blocks.append(EmbedSequential(*layers))
            chans.append(ch)
        if level != len(cfg["channel_mult"]) - 1:
            down = (_resblock(cfg, ch, ch, down=True) if cfg["resblock_updown"]
                    else Downsample(ch, cfg["conv_resample"], dims=cfg["dims"]))
            blocks.append(EmbedSequential(down))
            chans.append(ch)
            ds *= 2
    return blocks, chans, ch, ds


def build_middle(cfg, ch):
    return EmbedSequential(_resblock(cfg, ch, ch), _attention(cfg, ch, cfg["num_heads"]),
                           _resblock(cfg, ch, ch))


def build_decoder(cfg, chans, ch, ds):
    heads = cfg["num_heads_upsample"] if cfg["num_heads_upsample"] != -1 else cfg["num_heads"]
    chans = list(chans)
    blocks = nn.ModuleList()
    for level, mult in list(enumerate(cfg["channel_mult"]))[::-1]:
        for i in range(cfg["num_res_blocks"] + 1):
            layers = [_resblock(cfg, ch + chans.pop(), _level_channels(cfg, mult))]
            ch = _level_channels(cfg, mult)
            if ds in cfg["attention_resolutions"]:
                layers.append(_attention(cfg, ch, heads))
            if level and i == cfg["num_res_blocks"]:
                layers.append(_resblock(cfg, ch, ch, up=True) if cfg["resblock_updown"]
                              else Upsample(ch, cfg["conv_resample"], dims=cfg["dims"]))
                ds //= 2
            blocks.append(EmbedSequential(*layers))
    return blocks, ch


def make_config(kind, local_args, dtype, backend):
    """The constructor's arguments as a plain dict (tuples for sequences) + kind."""
    cfg = {k: v for k, v in local_args.items() if k not in ("self", "__class__", "dtype",
                                                           "backend", "use_fp16")}
    cfg["attention_resolutions"] = tuple(cfg["attention_resolutions"])
    cfg["channel_mult"] = tuple(cfg["channel_mult"])
    cfg["image_size"] = None if cfg["image_size"] is None else int(cfg["image_size"])
    dtype = resolve_dtype(dtype, local_args.get("use_fp16", False))
    return {"kind": kind, **cfg, "dtype": dtype_name(dtype), "backend": check_backend(backend)}


class UNet(ModelBase):
    """guided-diffusion's UNetModel. Called as model(x, timesteps, y=None).

    Extra keyword-only arguments: null_class=True adds label row num_classes for the null label
    (classifier-free guidance); dtype (float32 / float16 / bfloat16, or use_fp16=True) is the
    trunk precision; backend="fused" | "reference" picks the kernels. image_size may be None
    (any size divisible by 2^(levels-1)).
    """

    _kind = "unet"  # config["kind"], read by the checkpoint loader

    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks,
                 attention_resolutions, dropout=0.0, channel_mult=(1, 2, 4, 8), conv_resample=True,
                 dims=2, num_classes=None, use_checkpoint=False, use_fp16=False, num_heads=1,
                 num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=False,
                 resblock_updown=False, use_new_attention_order=False, *, null_class=False,
                 dtype=None, backend="fused"):
        super().__init__()
        cfg = make_config(self._kind, dict(locals()), dtype, backend)
        if null_class and num_classes is None:
            raise ValueError("null_class=True needs a class-conditional model (num_classes=K)")
        self.config = cfg
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_classes = num_classes

        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + int(null_class), emb_dim)
            if null_class:  # the null row starts at zero: emb = time embedding alone
                nn.init.zeros_(self.label_emb.weight[num_classes:])

        self.input_blocks, chans, ch, ds = build_encoder(cfg, in_channels)
        self.middle_block = build_middle(cfg, ch)
        self.output_blocks, ch = build_decoder(cfg, chans, ch, ds)
        self.out = nn.Sequential(
            GroupNormAct(ch, backend=backend), nn.Identity(),
            zero_module(conv_nd(dims, _level_channels(cfg, channel_mult[0]), out_channels, 3,
                                padding=1)))
        self.convert_trunk(cfg["dtype"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints without the null row (all of guided-diffusion's) still load strictly:
        the null row is then zero. Runs before the children load."""
        key = prefix + "label_emb.weight"
        w = state_dict.get(key)
        if self.config.get("null_class") and w is not None and w.shape[0] == self.num_classes:
            state_dict[key] = torch.cat([w, w.new_zeros(1, w.shape[1])])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def null_label(self):
        """The label of the null class, for classifier-free guidance (None without one)."""
        return self.num_classes if self.config["null_class"] else None

    @property
    def learn_sigma(self):
        """guided-diffusion's learn_sigma: the output also holds the variance interpolation."""
        return self.out_channels == 2 * self.config["in_channels"]

    def forward(self, x, timesteps, y=None):
        self._check_x(x)
        return self._forward(x, timesteps, y)

    def _forward(self, x, timesteps, y):
        emb = self._embed_time(timesteps, x)
        y = self._check_labels(y, x)
        if y is not None:
            emb = emb + self.label_emb(y).to(emb.dtype)
        h = x.to(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        head_dtype = self.out[2].weight.dtype
        return self.out(h.to(head_dtype)).to(x.dtype)


class SuperResUNet(UNet):
    """guided-diffusion's SuperResModel: a UNet on [x, bilinear(low_res)] (2 * in_channels
    inputs). Called as model(x, timesteps, low_res=..., y=None)."""

    _kind = "superres"

    def __init__(self, image_size, in_channels, *args, **kwargs):
        super().__init__(image_size, in_channels * 2, *args, **kwargs)
        self.config["in_channels"] = in_channels
        self.image_channels = in_channels

    @property
    def learn_sigma(self):
        return self.out_channels == 2 * self.image_channels

    def forward(self, x, timesteps, low_res=None, y=None):
        self._check_x(x, channels=self.image_channels)
        if low_res is None:
            raise ValueError("low_res is required: the super-resolution model is conditioned on "
                             "the low-resolution image")
        if low_res.dim() != x.dim() or low_res.shape[:2] != x.shape[:2]:
            raise ValueError(f"low_res must be [{x.shape[0]}, {self.image_channels}, ...] like x, "
                             f"got {list(low_res.shape)}")
        up = self.upsample_low_res(low_res.to(x.dtype), x.shape[2:])
        return self._forward(torch.cat([x, up], dim=1), timesteps, y)

    @staticmethod
    def upsample_low_res(low_res, size):
        """The bilinear resize the model conditions on (align_corners=False, as in ADM)."""
        return F.interpolate(low_res, size, mode="bilinear", align_corners=False)
