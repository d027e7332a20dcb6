"""Brownian-tree noise for the SDE samplers, one independent path per image.

DPM-Solver++'s SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde) draw the noise of a step
σ → σ_next as the increment of one Brownian motion W over σ, as k-diffusion does:

    noise_sampler(σ, σ_next) = (W(σ_next) − W(σ)) / √|σ_next − σ|   ~ N(0, I).

Increments over disjoint intervals are independent, and overlapping ones (dpmpp_sde asks for
σ → σ_mid and σ → σ_next) are correlated as a single path requires, so a run with more steps
refines the same path.

W is a "virtual Brownian tree" (Li et al. 2020, "Scalable gradients for SDEs"): nothing is
stored; W at any σ is rebuilt by bisection from the endpoints, each midpoint drawn from the
Brownian bridge between its neighbours,

    W(σ_m) | W(σ_a), W(σ_b) ~ N(W(σ_a) + (σ_m − σ_a)/(σ_b − σ_a)·(W(σ_b) − W(σ_a)),
                                (σ_m − σ_a)(σ_b − σ_m)/(σ_b − σ_a)),

with the normal draw of each node seeded from (image seed, node): one torch.Generator per image,
re-seeded per node, or, for samples of fewer than 512 values, a counter-based hash of (seed, node,
position) computed for the whole batch at once. Either way image k's path depends only on its
seed (and its size): the same images come out whatever the batch. The bisection halves log σ (so
the leaves are as fine at σ = 0.002 as at σ = 80), and at a leaf W(σ) is a last bridge draw
at σ itself. Points in different leaves are exactly jointly Brownian; two queries closer than
the leaf width (tol, in log σ; 10⁻³ by default, far below any practical step) are drawn apart.
torchsde's BrownianTree does the same job for k-diffusion; it is not needed here.
"""
import collections
import math
import struct

import torch

__all__ = ["BrownianTreeNoiseSampler", "seeds_from_randn_like", "brownian_noise_sampler"]

_MASK64 = (1 << 64) - 1
_ROOT, _NODE, _LEAF = 1, 2, 3  # tags that keep the three kinds of draws apart


def _splitmix64(z):
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _mix(*values):
    """A 63-bit seed from a tuple of integers (a hash, so nearby nodes get unrelated streams)."""
    h = 0
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1


class BrownianTreeNoiseSampler:
    """noise_sampler(σ, σ_next) for x's shape, dtype and device, on [sigma_min, sigma_max].

    seeds: one integer per image (x.shape[0] of them); None draws them from torch's global
    generator. tol: the leaf width in log σ (queries closer than this share their last draw).
    """

    def __init__(self, x, sigma_min, sigma_max, seeds=None, tol=1e-3):
        sigma_min, sigma_max = float(sigma_min), float(sigma_max)
        if not (math.isfinite(sigma_min) and math.isfinite(sigma_max)
                and 0 < sigma_min < sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise ValueError(f"tol must be a positive number, got {tol!r}")
        batch = x.shape[0]
        if seeds is None:
            seeds = torch.randint(0, 2 ** 62, (batch,)).tolist()
        if torch.is_tensor(seeds):
            seeds = seeds.reshape(-1).tolist()
        seeds = [int(s) for s in seeds]
        if len(seeds) != batch:
            raise ValueError(f"seeds has {len(seeds)} entries for a batch of {batch}")
        self.seeds = seeds
        self.shape = tuple(x.shape[1:])
        self.device = x.device
        self.dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.out_dtype = x.dtype
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.u_lo, self.u_hi = math.log(sigma_min), math.log(sigma_max)
        self.depth = max(1, math.ceil(math.log2((self.u_hi - self.u_lo) / tol)))
        self.numel = math.prod(self.shape)
        if self.numel < _HASH_BELOW:
            # small samples: one counter-based draw for the whole batch (see _hash_normals)
            words = torch.tensor([[s & _M32, (s >> 32) & _M32] for s in seeds], dtype=torch.int64)
            self.seed_words = words.to(self.device)
            self.counters = _hash32(torch.arange(self.numel, dtype=torch.int64,
                                                 device=self.device))
        else:
            self.generators = [torch.Generator(self.device) for _ in seeds]
        self.w_lo = torch.zeros((batch, *self.shape), dtype=self.dtype, device=self.device)
        self.w_hi = math.sqrt(sigma_max - sigma_min) * self._draw(_ROOT)
        self._nodes = collections.OrderedDict()  # the last few query paths (an LRU)
        self._values = collections.OrderedDict()  # W at the last few queried σ

    def _draw(self, *key):
        if self.numel < _HASH_BELOW:
            return _hash_normals(self.seed_words, self.counters, _mix(*key), self.shape,
                                 self.dtype)
        draws = []
        for seed, g in zip(self.seeds, self.generators):
            g.manual_seed(_mix(seed, *key))
            # float32 draws (4x faster than float64 on CPU); W itself accumulates in self.dtype.
            draws.append(torch.randn(self.shape, generator=g, device=self.device))
        return torch.stack(draws).to(self.dtype)

    def _bridge(self, sa, wa, sb, wb, s, key):
        """W(s) for sa < s < sb given W(sa), W(sb): the Brownian bridge, drawn with key."""
        s = min(max(s, sa), sb)  # exp(log σ) may round just outside the leaf
        mean = wa + (s - sa) / (sb - sa) * (wb - wa)
        return mean + math.sqrt((s - sa) * (sb - s) / (sb - sa)) * self._draw(*key)

    def _node(self, level, index, ua, wa, ub, wb):
        key = (level, index)
        if key in self._nodes:
            self._nodes.move_to_end(key)
            return self._nodes[key]
        um = 0.5 * (ua + ub)
        w = self._bridge(math.exp(ua), wa, math.exp(ub), wb, math.exp(um), (_NODE, *key))
        self._nodes[key] = w
        while len(self._nodes) > 2 * self.depth:
            self._nodes.popitem(last=False)
        return w

    def _value(self, sigma):
        u = math.log(sigma)
        ua, wa, ub, wb, index = self.u_lo, self.w_lo, self.u_hi, self.w_hi, 0
        if u == ua:
            return wa
        if u == ub:
            return wb
        for level in range(self.depth):
            um = 0.5 * (ua + ub)
            wm = self._node(level, index, ua, wa, ub, wb)
            if u == um:
                return wm
            if u < um:
                ub, wb, index = um, wm, 2 * index
            else:
                ua, wa, index = um, wm, 2 * index + 1
        return self._bridge(math.exp(ua), wa, math.exp(ub), wb, sigma, (_LEAF, index,
                                                                         _float_bits(sigma)))

    def W(self, sigma):
        """The Brownian path at σ (W(sigma_min) = 0), shape [B, *x.shape[1:]]."""
        sigma = float(sigma)
        if not math.isfinite(sigma) or not (self.sigma_min * (1 - 1e-9) <= sigma
                                            <= self.sigma_max * (1 + 1e-9)):
            raise ValueError(f"sigma={sigma} is outside the Brownian tree's interval "
                             f"[{self.sigma_min}, {self.sigma_max}]")
        sigma = min(max(sigma, self.sigma_min), self.sigma_max)
        if sigma not in self._values:
            self._values[sigma] = self._value(sigma)
            while len(self._values) > 4:
                self._values.popitem(last=False)
        return self._values[sigma]

    def __call__(self, sigma, sigma_next):
        sigma, sigma_next = float(sigma), float(sigma_next)
        if sigma == sigma_next:
            raise ValueError(f"an increment needs two different noise levels, got {sigma} twice")
        increment = (self.W(sigma_next) - self.W(sigma)) / math.sqrt(abs(sigma_next - sigma))
        return increment.to(self.out_dtype)


_M32 = 0xFFFFFFFF
_HASH_BELOW = 512  # samples with fewer values draw by hashing, larger ones from torch.Generator


def _mul32(x, c):
    # x·c mod 2³² for int64 tensors x in [0, 2³²): 16-bit halves keep every product below 2⁴⁹.
    return (x * (c & 0xFFFF) + ((x * (c >> 16)) & 0xFFFF) * 65536) & _M32


def _hash32(x):
    """Wellons' "lowbias32" integer hash on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _hash_normals(seed_words, counters, node, shape, dtype):
    """N(0, 1) draws for every image at one node, as a function of (image seed, node, position)
    only: a counter-based generator (hash, then the inverse normal CDF of a 53-bit uniform),
    vectorized over the batch. For many small samples (a 2-D toy, a batch of 1000) this replaces
    one torch.Generator call per image and node, which costs ~25 µs each."""
    k1, k2 = node & _M32, (node >> 32) & _M32
    w1 = _hash32(_hash32(seed_words[:, 0] ^ k1) ^ seed_words[:, 1])[:, None]
    w2 = _hash32(_hash32(seed_words[:, 1] ^ k2) ^ seed_words[:, 0])[:, None]
    a = _hash32(_hash32(counters ^ w1) ^ w2)
    b = _hash32(_hash32(counters ^ w2) ^ w1)
    u = ((a * 2097152 + (b >> 11)).to(torch.float64) + 0.5) * 2.0 ** -53
    return torch.special.ndtri(u).reshape(-1, *shape).to(dtype)


def _float_bits(value):
    return int.from_bytes(struct.pack("<d", value), "little")


def seeds_from_randn_like(randn_like, x):
    """One 63-bit seed per image, from two draws of randn_like: with the per-image generators of
    rng.StackedRandomGenerator, image k's seed depends only on its own generator."""
    probe = x.new_empty((x.shape[0], 2), dtype=torch.float64)
    draws = randn_like(probe)
    if not torch.is_tensor(draws) or draws.shape != probe.shape:
        raise ValueError("randn_like must return a tensor shaped like its argument")
    return [_mix(_float_bits(a), _float_bits(b)) for a, b in draws.double().cpu().tolist()]


def brownian_noise_sampler(x, values, noise_sampler, randn_like):
    """The SDE samplers' noise: noise_sampler if given, else a per-image Brownian tree over the
    σ list's positive range, seeded from randn_like (default torch.randn_like)."""
    if noise_sampler is not None and randn_like is not None:
        raise ValueError("give noise_sampler or randn_like, not both")
    if noise_sampler is not None:
        return noise_sampler
    positive = [s for s in values if s > 0]
    if len(positive) < 2:
        return None  # one step straight to σ = 0: no noise is ever added
    seeds = seeds_from_randn_like(randn_like or torch.randn_like, x)
    return BrownianTreeNoiseSampler(x, min(positive), max(positive), seeds=seeds)
