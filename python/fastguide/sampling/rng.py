"""Per-image random numbers, as in EDM's generate.py: image k has its own torch.Generator seeded
with seeds[k], and every draw is stacked from one draw per generator. An image then depends only
on its seed, not on the batch it was sampled in, nor on how seeds were split across ranks.
"""
import torch

__all__ = ["StackedRandomGenerator", "rank_batches"]


class StackedRandomGenerator:
    def __init__(self, seeds, device="cpu"):
        self.device = torch.device(device)
        self.seeds = [int(s) for s in torch.as_tensor(seeds).reshape(-1).tolist()]
        self.generators = [torch.Generator(self.device).manual_seed(s % (1 << 32))
                           for s in self.seeds]

    def __len__(self):
        return len(self.generators)

    def _check(self, size):
        if size[0] != len(self.generators):
            raise ValueError(f"batch of {size[0]} but {len(self.generators)} per-image generators")

    def randn(self, size, dtype=torch.float32, device=None):
        size = tuple(size)
        self._check(size)
        device = self.device if device is None else torch.device(device)
        draws = [torch.randn(size[1:], generator=g, dtype=dtype, device=self.device)
                 for g in self.generators]
        return torch.stack(draws).to(device)

    def randn_like(self, x):
        return self.randn(x.shape, dtype=x.dtype, device=x.device)

    def randint(self, low, high, size, device=None):
        size = tuple(size)
        self._check(size)
        device = self.device if device is None else torch.device(device)
        draws = [torch.randint(low, high, size[1:], generator=g, device=self.device)
                 for g in self.generators]
        return torch.stack(draws).to(device)


def rank_batches(seeds, max_batch_size, rank=0, world_size=1):
    """This rank's batches of seeds: the seeds are cut into a multiple of world_size nearly equal
    batches of at most max_batch_size, dealt round-robin to the ranks (EDM's scheme)."""
    seeds = torch.as_tensor(seeds).reshape(-1)
    if max_batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad max_batch_size={max_batch_size}, rank={rank}, "
                         f"world_size={world_size}")
    per_round = max_batch_size * world_size
    num_batches = max((len(seeds) - 1) // per_round + 1, 1) * world_size
    return list(seeds.tensor_split(num_batches))[rank::world_size]
