"""Infer a guided-diffusion model's full config from its state dict's keys and shapes alone.

What the shapes determine: the model kind, in/out channels (so learn_sigma), model_channels,
channel_mult, the attention levels, the class count, use_scale_shift_norm, resblock_updown /
conv_resample and dims; for the classifier also the pool and (attention pool) image_size.
num_res_blocks follows from where the down/up-sampling blocks sit: every candidate is built on
the meta device and only the one whose keys and shapes all match is kept.

What they cannot determine: the attention heads and qkv order (they permute channels without
changing shapes), the UNet's image_size and dropout. These come from keyword overrides, else from
the released model with the same architecture (a preset), else from guided-diffusion's defaults,
with a warning, because wrong heads give wrong outputs silently.
"""
import math
import warnings

import torch

from .presets import MODEL_CLASSES, PRESETS

__all__ = ["infer_config", "build_model", "expected_shapes", "compare_shapes", "strip_prefix",
           "released_architecture", "CheckpointError", "CheckpointMismatchError"]

# Fields that no shape reveals, and guided-diffusion's defaults for them.
_HEAD_FIELDS = ("num_heads", "num_head_channels", "num_heads_upsample", "use_new_attention_order")
_UNSHAPED = _HEAD_FIELDS + ("image_size", "dropout")
_DEFAULTS = {  # model_and_diffusion_defaults() / create_classifier()
    "unet": dict(num_heads=4, num_head_channels=-1, num_heads_upsample=-1,
                 use_new_attention_order=False),
    "classifier": dict(num_heads=1, num_head_channels=64, num_heads_upsample=-1,
                       use_new_attention_order=False),
}
_DEFAULTS["superres"] = _DEFAULTS["unet"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or is not a guided-diffusion / fastguide model."""


class CheckpointMismatchError(CheckpointError):
    """The state dict does not fit the (inferred or given) config."""

    def __init__(self, missing, unexpected, mismatched, config):
        self.missing, self.unexpected, self.mismatched, self.config = (
            missing, unexpected, mismatched, config)

        def lines(items, limit=20):
            shown = [f"    {x}" for x in items[:limit]]
            more = [f"    ... and {len(items) - limit} more"] if len(items) > limit else []
            return "\n".join(shown + more) or "    (none)"

        shapes = [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched]
        super().__init__(
            "the state dict does not match the model config.\n"
            f"  missing keys ({len(missing)}):\n{lines(missing)}\n"
            f"  unexpected keys ({len(unexpected)}):\n{lines(unexpected)}\n"
            f"  wrongly shaped keys ({len(mismatched)}):\n{lines(shapes)}\n"
            f"  config: {config}")


# ---- building and comparing ------------------------------------------------------------------

def build_model(cfg, **kwargs):
    """The model class for cfg["kind"], built from the rest of cfg (+ kwargs)."""
    cfg = dict(cfg, **kwargs)
    return MODEL_CLASSES[cfg.pop("kind")](**cfg)


def expected_shapes(cfg):
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def compare_shapes(expected, actual, cfg):
    """{key: shape} dicts -> (missing, unexpected, [(key, actual shape, expected shape)]).
    A label_emb without the null row is fine for a null_class model (it adds the row on load)."""
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    mismatched = []
    for k in expected:
        if k in actual and tuple(actual[k]) != expected[k]:
            no_null_row = (k == "label_emb.weight" and cfg.get("null_class")
                           and tuple(actual[k]) == (expected[k][0] - 1, expected[k][1]))
            if not no_null_row:
                mismatched.append((k, tuple(actual[k]), expected[k]))
    return missing, unexpected, mismatched


def strip_prefix(state_dict):
    """Drop the `module.` prefix that DistributedDataParallel adds."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


# ---- reading the state dict ------------------------------------------------------------------

def _layers(shapes, name, i):
    """The layers of block name.i, as ("res", in_ch, out_ch) / ("attn",) / ("down",) / ("up",)."""
    prefix = f"{name}.{i}."
    idx = sorted({int(k[len(prefix):].split(".")[0]) for k in shapes if k.startswith(prefix)})
    out = []
    for j in idx:
        p = f"{prefix}{j}."
        if p + "in_layers.0.weight" in shapes:
            out.append(("res", shapes[p + "in_layers.0.weight"][0],
                        shapes[p + "in_layers.2.weight"][0]))
        elif p + "qkv.weight" in shapes:
            out.append(("attn",))
        elif p + "op.weight" in shapes:
            out.append(("down",))
        elif p + "conv.weight" in shapes:
            out.append(("up",))
        else:
            out.append(("?",))
    return out


def _count(shapes, name):
    idx = [int(k.split(".")[1]) for k in shapes if k.startswith(name + ".")]
    return max(idx) + 1 if idx else 0


def _mult(channels, model_channels):
    m = channels / model_channels
    return int(m) if m == int(m) else m


def _classifier_head(shapes, levels):
    """-> (pool, out_channels, image_size or None)."""
    if "out.2.positional_embedding" in shapes:
        tokens = shapes["out.2.positional_embedding"][1] - 1
        side = math.isqrt(tokens)
        return "attention", shapes["out.2.c_proj.weight"][0], side * 2 ** (levels - 1)
    if "out.1.weight" in shapes and "out.3.weight" in shapes:
        return "spatial_v2", shapes["out.3.weight"][0], None
    if "out.3.weight" in shapes:
        return "adaptive", shapes["out.3.weight"][0], None
    if "out.2.weight" in shapes and len(shapes.get("out.0.weight", ())) == 2:
        return "spatial", shapes["out.2.weight"][0], None
    raise CheckpointError("unrecognised classifier head: expected out.2.positional_embedding "
                          "(attention pool), out.3.weight (adaptive / spatial_v2) or "
                          "out.0.weight + out.2.weight (spatial)")


def _candidate(shapes, kind, period, n_in):
    """The shape-determined config if every level has period = num_res_blocks + 1 input blocks,
    or None when the blocks cannot be read that way."""
    levels = n_in // period
    mc = shapes["time_embed.0.weight"][1]
    mult, attention = [], []
    for level in range(levels):
        layers = _layers(shapes, "input_blocks", level * period + 1)
        if not layers or layers[0][0] != "res":
            return None
        mult.append(_mult(layers[0][2], mc))
        if ("attn",) in layers:
            attention.append(2 ** level)
    down = _layers(shapes, "input_blocks", period) if levels > 1 else [("down",)]
    if down not in ([], [("down",)]) and (not down or down[0][0] != "res"):
        return None
    first = "input_blocks.1.0."
    conv0 = shapes["input_blocks.0.0.weight"]
    cfg = dict(kind=kind, image_size=None, in_channels=conv0[1], model_channels=mc,
               out_channels=None, num_res_blocks=period - 1,
               attention_resolutions=tuple(attention), dropout=0.0, channel_mult=tuple(mult),
               conv_resample=down != [], dims=len(conv0) - 2, use_checkpoint=False,
               num_heads=1, num_head_channels=32, num_heads_upsample=-1,  # shape-neutral
               use_scale_shift_norm=shapes[first + "emb_layers.1.weight"][0] == 2 * mult[0] * mc,
               resblock_updown=bool(down) and down[0][0] == "res",
               use_new_attention_order=False)
    if kind == "classifier":
        cfg["pool"], cfg["out_channels"], cfg["image_size"] = _classifier_head(shapes, levels)
    else:
        cfg["out_channels"] = shapes["out.2.weight"][0]
        cfg["num_classes"] = shapes["label_emb.weight"][0] if "label_emb.weight" in shapes else None
        if kind == "superres":
            cfg["in_channels"] //= 2
    return cfg


def _kind(shapes, image_channels):
    if "output_blocks.0.0.in_layers.0.weight" not in shapes:
        return "classifier"
    in_ch = shapes["input_blocks.0.0.weight"][1]
    return "superres" if in_ch == 2 * image_channels else "unet"


def _check_adm(shapes):
    need = ("time_embed.0.weight", "time_embed.2.weight", "input_blocks.0.0.weight",
            "input_blocks.1.0.in_layers.0.weight", "middle_block.0.in_layers.0.weight")
    absent = [k for k in need if k not in shapes]
    if absent:
        sample = ", ".join(list(shapes)[:5]) or "(empty)"
        raise CheckpointError(
            f"not a guided-diffusion UNet / classifier state dict: missing {absent}; its first "
            f"keys are: {sample}")


def _check_head(shapes, kind):
    """The output head's tensors, which the architecture is read from, must all be there."""
    if kind == "classifier":
        return
    absent = [k for k in ("out.0.weight", "out.0.bias", "out.2.weight", "out.2.bias")
              if k not in shapes]
    if absent:
        raise CheckpointError(f"not a complete guided-diffusion {kind} state dict: missing "
                              f"{absent} (the output head)")


def _structure(shapes, kind, overrides):
    """The unique shape-determined config, trying every num_res_blocks that divides the blocks."""
    n_in = _count(shapes, "input_blocks")
    periods = [p for p in range(2, n_in + 1) if n_in % p == 0]
    if "num_res_blocks" in overrides:
        periods = [overrides["num_res_blocks"] + 1]
    tried, matches = [], []
    for p in periods:
        cfg = _candidate(shapes, kind, p, n_in)
        if cfg is None:
            continue
        cfg.update({k: v for k, v in overrides.items() if k not in _UNSHAPED})
        try:
            report = compare_shapes(expected_shapes(cfg), shapes, cfg)
        except (ValueError, TypeError):  # not even buildable (e.g. channels that 32 won't divide)
            continue
        tried.append((sum(len(r) for r in report), cfg, report))
        if not any(report):
            matches.append(cfg)
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        options = [(m["num_res_blocks"], m["channel_mult"]) for m in matches]
        raise CheckpointError(
            f"the state dict fits several depths (num_res_blocks, channel_mult): {options}; "
            "pass num_res_blocks= to choose")
    if not tried:
        given = (f" with the given num_res_blocks={overrides['num_res_blocks']}"
                 if "num_res_blocks" in overrides else "")
        raise CheckpointError(f"could not read the {n_in} input_blocks as levels of ResBlocks "
                              f"and downsamplers{given}")
    _, cfg, (missing, unexpected, mismatched) = min(tried, key=lambda t: t[0])
    shown = dict(cfg, **_DEFAULTS[kind])  # not the shape-neutral placeholders
    shown.update(overrides)
    raise CheckpointMismatchError(missing, unexpected, mismatched, shown)


def released_architecture(cfg):
    """The first released model (preset name) whose shape-determined fields all equal cfg's,
    or None. Heads, dropout and the runtime switches (dtype, backend) do not count."""
    skip = _HEAD_FIELDS + ("dropout", "null_class", "use_checkpoint", "dtype", "backend")
    if cfg.get("image_size") is None:  # known only for an attention-pool classifier
        skip += ("image_size",)
    for name, preset in PRESETS.items():
        if all(preset.get(k) == v for k, v in cfg.items() if k not in skip):
            return name
    return None


def infer_config(state_dict, image_channels=3, **overrides):
    """state_dict (tensors, or anything with .shape; meta tensors are fine) -> config dict: "kind"
    ("unet" | "superres" | "classifier") plus the model's constructor arguments.

    overrides set any argument directly (num_heads, num_head_channels, use_new_attention_order,
    image_size, num_res_blocks, null_class, ...). image_channels tells a super-res model (2x that
    many inputs) from a UNet. With null_class=True, a K-row label_emb means K classes + null.
    """
    shapes = {k: tuple(v.shape) for k, v in strip_prefix(state_dict).items()}
    _check_adm(shapes)
    kind = overrides.pop("kind", None) or _kind(shapes, image_channels)
    if kind not in MODEL_CLASSES:
        raise ValueError(f"kind must be one of {list(MODEL_CLASSES)}, got {kind!r}")
    _check_head(shapes, kind)
    try:
        cfg = _structure(shapes, kind, overrides)
    except KeyError as e:  # a block whose tensors are only partly there
        raise CheckpointError(f"the state dict lacks {e.args[0]!r}, which a guided-diffusion "
                              f"{kind} checkpoint has; the file is incomplete") from None

    preset = released_architecture(cfg)
    if preset is not None:
        fill = {k: PRESETS[preset][k] for k in _UNSHAPED}
    else:
        fill = dict(_DEFAULTS[kind], dropout=0.0, image_size=cfg["image_size"])
        if not any(k in overrides for k in _HEAD_FIELDS):  # the middle block always attends
            warnings.warn(
                "the attention heads and qkv order cannot be inferred from a state dict (they "
                "change no shape) and this is not a released architecture; assuming "
                f"guided-diffusion's defaults {_DEFAULTS[kind]}. Pass num_heads= or "
                "num_head_channels= (and use_new_attention_order=) to set them.", stacklevel=3)
    cfg.update(fill)
    cfg.update(overrides)
    return cfg
