"""An edit as a sampler that fastguide.pipeline.generate can run: seeds -> images, batch by
batch, on one process or every torchrun rank, with the progress bar, the resumable batches and
the NaN check of `fastguide sample`.

Output k is the edit of input image k mod (number of images) with seeds[k], so one image can
be edited with many seeds, or each of N images with its own. Seeds are unique within a run (the
same seed and image would give the same edit twice), which lets a batch find its images from
its seeds whatever batches and ranks generate() cuts.
"""
import torch

from .core import model_kwargs
from .inputs import InputError

__all__ = ["EditJob", "check_seeds", "cycle"]


def check_seeds(seeds, option="seeds"):
    seeds = [int(s) for s in seeds]
    if not seeds or min(seeds) < 0:
        raise InputError(f"{option} must be non-empty and non-negative, got {seeds[:5]}")
    if len(set(seeds)) != len(seeds):
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})[:5]
        raise InputError(f"{option} repeats {repeated}: each output is one seed's edit of one "
                         "image, so a repeated seed would repeat an output")
    return seeds


def cycle(values, count):
    """values cycled to count entries (None stays None)."""
    if values is None:
        return None
    return [values[i % len(values)] for i in range(count)]


class EditJob:
    """edit(gs, x0, seeds, kwargs, on_step=..., **per_image) -> images in [−1, 1], applied to
    the inputs of each batch. per_image: tensors indexed by input image (the mask), passed to
    edit for the batch's images."""

    def __init__(self, gs, images, seeds, edit, num_steps, per_image=None):
        self.gs, self.images, self.edit = gs, images, edit
        self.num_steps = num_steps
        self.per_image = dict(per_image or {})
        self.position = {s: i for i, s in enumerate(seeds)}

    def __call__(self, seeds, labels, device="cpu", on_step=None):
        index = torch.as_tensor([self.position[int(s)] % len(self.images) for s in seeds])
        x0 = self.images[index].to(device)
        extra = {k: v[index % len(v)].to(device) for k, v in self.per_image.items()}
        kwargs = model_kwargs(labels, device)
        return self.edit(self.gs, x0, seeds=list(seeds), kwargs=kwargs, on_step=on_step,
                         **extra)
