"""ADMPipeline: guided-diffusion checkpoints to guided images, in a few lines of Python.

    pipe = fastguide.ADMPipeline.from_checkpoint("256x256_diffusion.pt",
                                                 classifier="256x256_classifier.pt",
                                                 device="cuda", dtype="float16")
    out = pipe(seeds=range(16), class_labels=[207], classifier_scale=1.0, sampler="ddpm",
               steps=250)
    out.images        # uint8 [16, 256, 256, 3]; out.labels; out.pil() for PIL images

    pipe = fastguide.ADMPipeline.from_checkpoint("digits_unet")     # a shipped model
    out = pipe(seeds=range(100), cfg_scale=2.0, sampler="dpmpp_2m", steps=20)

The same images come out whatever the batch size (each image's noise comes from its seed), and
under torchrun each rank samples its share of the seeds (rank 0 gets them all). Every option of
GuidedSampler (samplers, schedules, guidance kinds) is a keyword argument of the call; the
upsampler stage takes its own (upsample_sampler, upsample_steps, upsample_options).
`fastguide sample` is a thin layer over this class.
"""
import dataclasses

import torch

from .batches import generate, labels_for
from .guided import GuidedSampler
from .models import load_model
from .settings import resolve_diffusion

__all__ = ["ADMPipeline", "PipelineOutput"]


def _trained_on_clean_images(info):
    """True when a classifier's training record says it never saw noised inputs."""
    if not info:
        return False
    if "noised" in info:
        return info["noised"] is False
    return "--no-noised" in str(info.get("command", "")).split()


@dataclasses.dataclass
class PipelineOutput:
    images: object          # uint8 NHWC numpy array, or a float tensor in [-1, 1] ("pt")
    labels: object          # int64 numpy array in seed order, or None (unconditional)
    seeds: list
    notes: list             # what the run assumed or ignored, for the user

    def pil(self):
        from PIL import Image
        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in self.images]


class ADMPipeline:
    """A base model (and optionally a classifier, a weak model for autoguidance and an
    upsampler), each with its diffusion process resolved (fastguide.pipeline.settings)."""

    def __init__(self, model, diffusion, classifier=None, weak_model=None, upsampler=None,
                 upsampler_diffusion=None, notes=()):
        self.model, self.diffusion = model, diffusion
        self.classifier, self.weak_model = classifier, weak_model
        self.upsampler, self.upsampler_diffusion = upsampler, upsampler_diffusion
        if upsampler is not None and upsampler_diffusion is None:
            raise ValueError("an upsampler needs its own diffusion settings")
        self.notes = list(notes)

    @classmethod
    def from_checkpoint(cls, model, classifier=None, weak_model=None, upsampler=None, *,
                        device="cpu", dtype=None, noise_schedule=None, diffusion_steps=None,
                        upsample_noise_schedule=None, upsample_diffusion_steps=None,
                        image_size=None, upsample_image_size=None, allow_other_size=False,
                        model_options=None, classifier_options=None, upsample_options=None):
        """Load every model (a checkpoint path, a shipped name or a preset) and resolve each
        stage's process. *_options: loader overrides for files that do not record them
        (num_heads, num_head_channels, ...)."""
        notes = []
        load = dict(device=device, dtype=dtype)
        base = load_model(model, "model", image_size=image_size,
                          allow_other_size=allow_other_size, **load, **(model_options or {}))
        settings = resolve_diffusion(base.model, base.info, f"--model {base.origin}",
                                     noise_schedule, diffusion_steps)
        notes += settings.notes
        notes += [f"--model {base.origin} is a preset with random weights (for timing only)"
                  ] if base.random_weights else []
        clf = weak = sr = sr_settings = None
        if classifier is not None:
            clf = load_model(classifier, "classifier", image_size=image_size,
                             allow_other_size=allow_other_size, **load,
                             **(classifier_options or {}))
            if _trained_on_clean_images(clf.info):
                notes.append(f"--classifier {clf.origin} was trained on clean images (see its "
                             "training record); classifier guidance needs a classifier trained "
                             "on noised images, and this one's gradients at high noise are "
                             "meaningless")
        if weak_model is not None:
            weak = load_model(weak_model, "weak model", image_size=image_size,
                              allow_other_size=allow_other_size, **load,
                              **(model_options or {}))
            weak_settings = resolve_diffusion(weak.model, weak.info, f"--weak-model {weak.origin}",
                                              noise_schedule, diffusion_steps)
            if weak_settings.as_dict() != settings.as_dict() and weak.info is not None:
                raise ValueError(f"--weak-model {weak.origin} was trained on another process "
                                 f"({weak_settings.as_dict()}) than the model "
                                 f"({settings.as_dict()})")
        if upsampler is not None:
            sr = load_model(upsampler, "upsampler", image_size=upsample_image_size, **load,
                            **(upsample_options or {}))
            sr_settings = resolve_diffusion(sr.model, sr.info, f"--upsampler {sr.origin}",
                                            upsample_noise_schedule, upsample_diffusion_steps,
                                            flag_prefix="--upsample-")
            notes += sr_settings.notes
        return cls(base.model, settings, clf and clf.model, weak and weak.model, sr and sr.model,
                   sr_settings, notes)

    # ---- devices -------------------------------------------------------------------------------

    def to(self, device):
        for m in (self.model, self.classifier, self.weak_model, self.upsampler):
            if m is not None:
                m.to(device)
        return self

    @property
    def device(self):
        return next(self.model.parameters()).device

    # ---- sampling ------------------------------------------------------------------------------

    def samplers(self, sampler="ddim", steps=50, upsample_sampler="ddim", upsample_steps=50,
                 upsample_options=None, **options):
        """(base GuidedSampler, upsampler GuidedSampler or None) for these options."""
        base = GuidedSampler(self.model, self.diffusion, sampler, steps,
                             classifier=self.classifier, weak_model=self.weak_model, **options)
        up = None
        if self.upsampler is not None:
            up = GuidedSampler(self.upsampler, self.upsampler_diffusion, upsample_sampler,
                               upsample_steps, **(upsample_options or {}))
        return base, up

    def __call__(self, seeds=None, class_labels=None, *, num_images=None, batch_size=64,
                 progress=True, output_type="np", cache=None, **options):
        """Sample one image per seed (default: seeds 0..num_images−1). class_labels are cycled
        over the seeds; without them seed s gets label s mod num_classes. output_type "np"
        (uint8 NHWC) or "pil". Other keyword arguments: see GuidedSampler and samplers()."""
        if seeds is None:
            seeds = range(num_images if num_images is not None else 1)
        seeds = [int(s) for s in seeds]
        if not seeds or min(seeds) < 0:
            raise ValueError(f"seeds must be non-empty and non-negative, got {seeds[:5]}")
        if output_type not in ("np", "pil"):
            raise ValueError(f"output_type must be 'np' or 'pil', got {output_type!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        base, up = self.samplers(**options)
        notes = self.notes + base.notes + (up.notes if up is not None else [])
        labels = labels_for(seeds, base.num_classes, list(class_labels) if class_labels
                            is not None else None)
        if base.unconditional and base.classifier is None:
            labels = None  # the images depend on no label
        with torch.no_grad():
            images, labels = generate(base, seeds, labels, batch_size, self.device, up,
                                      progress=progress, cache=cache)
        out = PipelineOutput(images, labels, seeds, notes)
        if output_type == "pil" and images is not None:
            out.images = out.pil()
        return out
