"""Seeds -> images, batch by batch, on one process or on every rank of a torchrun job.

Image k depends only on its seed (StackedRandomGenerator) and its label, never on the batch it
was sampled in or on the rank that sampled it, so the output does not depend on the batch size
or on the number of ranks. One progress bar counts the sampler steps of every batch.
"""
import numpy as np
import torch
from tqdm.auto import tqdm

from ..sampling import rank_batches
from ..train import distributed as dist_util
from ..train.data import float_to_uint8

__all__ = ["labels_for", "generate", "NonFiniteSamples"]


class NonFiniteSamples(ValueError):
    """A sampler diverged (NaN or inf); .seeds names the images."""

    def __init__(self, seeds):
        self.seeds = seeds
        shown = f"{seeds[:10]}{' ...' if len(seeds) > 10 else ''}"
        super().__init__(f"sampling gave NaN or inf for seeds {shown}; try float32 (--dtype "
                         f"float32), a lower guidance scale or more steps")


def labels_for(seeds, num_classes, class_labels=None):
    """Labels in seed order: class_labels cycled, else seed mod num_classes (None for an
    unconditional run)."""
    if num_classes is None:
        if class_labels:
            raise ValueError("class labels were given, but neither the model nor a classifier "
                             "is class-conditional")
        return None
    if class_labels:
        bad = [c for c in class_labels if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"class labels {bad[:10]} are outside 0..{num_classes - 1}")
        return [class_labels[i % len(class_labels)] for i in range(len(seeds))]
    return [s % num_classes for s in seeds]


def _sample_batch(sampler, upsampler, seeds, labels, device, on_step):
    x = sampler(seeds, labels, device, on_step=on_step)
    if upsampler is not None:
        # ADM-U: the super-res model conditioned on the guided low-resolution samples; its
        # noise comes from the same seeds, offset so that it differs from the base's.
        x = upsampler([s + (1 << 31) for s in seeds], labels, device, on_step=on_step, low_res=x)
    finite = torch.isfinite(x).flatten(1).all(dim=1).cpu()
    if not bool(finite.all()):  # uint8 conversion would hide a diverged sample
        raise NonFiniteSamples([s for s, ok in zip(seeds, finite.tolist()) if not ok])
    return float_to_uint8(x.cpu()).numpy()


def generate(sampler, seeds, labels, batch_size=64, device="cpu", upsampler=None,
             progress=False, cache=None, desc="sample"):
    """(uint8 NHWC images, labels) for every seed, in seed order. Under torch.distributed each
    rank samples its share (rank_batches) and rank 0 gets the gathered result; the other ranks
    get (None, None), so no rank but 0 holds the whole set in memory. cache (a BatchCache)
    keeps finished batches on disk and skips those an earlier run finished."""
    positions = torch.arange(len(seeds))
    mine = [b.tolist() for b in rank_batches(positions, batch_size, dist_util.rank(),
                                             dist_util.world_size()) if len(b)]
    per_batch = sampler.num_steps + (upsampler.num_steps if upsampler is not None else 0)
    bar = tqdm(total=len(mine) * per_batch, desc=desc, unit="step", dynamic_ncols=True,
               disable=not (progress and dist_util.is_main()))
    parts, reused = [], 0
    with bar:
        for idx in mine:
            batch_seeds = [seeds[i] for i in idx]
            batch_labels = None if labels is None else [labels[i] for i in idx]
            done = cache.load(batch_seeds, batch_labels) if cache is not None else None
            if done is None:
                done = _sample_batch(sampler, upsampler, batch_seeds, batch_labels, device,
                                     lambda: bar.update(1))
                if cache is not None:
                    cache.save(batch_seeds, batch_labels, done)
            else:
                reused += 1
                bar.update(per_batch)
                bar.set_postfix(reused_batches=reused)
            parts.append((idx, done))
    if torch.distributed.is_initialized():
        gathered = [None] * dist_util.world_size() if dist_util.is_main() else None
        torch.distributed.gather_object(parts, gathered, dst=0)
        if not dist_util.is_main():
            return None, None
        parts = [p for rank_parts in gathered for p in rank_parts]
    order = np.concatenate([np.asarray(i) for i, _ in parts])
    images = np.concatenate([a for _, a in parts])[np.argsort(order)]
    return images, None if labels is None else np.asarray(labels, dtype=np.int64)
