"""The models the benchmarks run: fastguide's presets by name, plus two tiny configs that make
the CPU suite and the tests cheap. Building and example inputs live here too."""
import contextlib

import torch

from ..nn import presets

__all__ = ["TINY", "model_config", "build", "example_inputs", "is_classifier"]

# Small but complete ADM models: AdaGN ResBlocks, up/down ResBlocks, attention at 16x16 and in
# the middle block, class labels; the classifier has the attention-pool head.
TINY = {
    "tiny_unet": dict(kind="unet", image_size=32, in_channels=3, model_channels=64,
                      out_channels=6, num_res_blocks=1, attention_resolutions=(2,),
                      channel_mult=(1, 2), num_classes=10, num_head_channels=32,
                      use_scale_shift_norm=True, resblock_updown=True),
    "tiny_classifier": dict(kind="classifier", image_size=32, in_channels=3, model_channels=32,
                            out_channels=10, num_res_blocks=1, attention_resolutions=(2,),
                            channel_mult=(1, 2), num_head_channels=32, use_scale_shift_norm=True,
                            resblock_updown=True, pool="attention"),
}


def model_config(name):
    """Constructor arguments plus "kind" for a preset (or alias) or a TINY config (a copy)."""
    if name in TINY:
        return dict(TINY[name])
    return presets.config(name)


def is_classifier(name):
    return model_config(name)["kind"] == "classifier"


def build(name, device="cpu", **overrides):
    """The model, constructed directly on `device` (random init; meta works for counting).
    Built on the device rather than moved: a 550M-parameter init is seconds on a CPU."""
    cfg = model_config(name)
    cfg.update(overrides)
    cls = presets.MODEL_CLASSES[cfg.pop("kind")]
    ctx = torch.device(device) if str(device) != "cpu" else contextlib.nullcontext()
    with ctx:
        model = cls(**cfg)
    # The label range check reads y on the host: a sync per call that guided-diffusion does not
    # make, and impossible on meta or inside a CUDA graph.
    model.check_inputs = False
    return model


def example_inputs(name, batch, device="cpu", memory_format=torch.contiguous_format, seed=0):
    """(args, kwargs) for model(*args, **kwargs): fp32 images (the models cast to their trunk
    dtype), integer timesteps and, where the model takes them, labels and a low-res image."""
    cfg = model_config(name)
    device = torch.device(device)
    gen = None if device.type == "meta" else torch.Generator(device=device).manual_seed(seed)
    size = cfg["image_size"]

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=gen)

    x = randn(batch, cfg["in_channels"], size, size).contiguous(memory_format=memory_format)
    t = torch.randint(0, 1000, (batch,), device=device, generator=gen)
    kwargs = {}
    if cfg["kind"] == "superres":
        kwargs["low_res"] = randn(batch, cfg["in_channels"], size // 4, size // 4)
    if cfg["kind"] != "classifier" and cfg.get("num_classes"):
        kwargs["y"] = torch.randint(0, cfg["num_classes"], (batch,), device=device, generator=gen)
    return (x, t), kwargs
