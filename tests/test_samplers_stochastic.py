"""The stochastic samplers: sample statistics, per-seed (batch-independent) noise, the Brownian
tree's law, no autograd graph, and the errors bad options must raise.

Gaussian data y ~ N(μ, s²) has the exact denoiser D(x, σ) = μ + (x − μ)·s²/(s² + σ²), so every
sampler's output must have mean μ and variance s², within sampling error (4 standard errors)
plus, for the variance, a 1% allowance for the discretization bias at the step counts used
(which are chosen so that bias is about 1% or less: the ancestral and SDE samplers converge to
the data's law only as the steps shrink).
"""
import math

import pytest
import torch

from fastguide.sampling import (SAMPLERS, BrownianTreeNoiseSampler, ClassifierGuidedDenoiser,
                                StackedRandomGenerator, UnknownNameError, classifier_log_prob_grad,
                                sampler_options, schedules)
from fastguide.sampling.noise import seeds_from_randn_like

MU, S = 0.3, 0.5


def gaussian_denoiser(x, sigma, **unused):
    c = sigma.reshape(-1, *([1] * (x.dim() - 1)))
    return MU + (x - MU) * S ** 2 / (S ** 2 + c ** 2)


STOCHASTIC = [
    # name, options, steps: enough for a discretization bias of the variance below 1%
    ("euler_ancestral", {}, 768),
    ("euler_ancestral", {"eta": 0.5}, 384),
    ("dpm_2", {"S_churn": 10.0, "S_min": 0.05, "S_max": 50.0}, 192),
    ("dpm_2_ancestral", {}, 128),
    ("dpmpp_2s_ancestral", {}, 128),
    ("dpmpp_sde", {}, 64),
    ("dpmpp_sde", {"eta": 0.5, "r": 0.3}, 64),
    ("dpmpp_2m_sde", {}, 128),
    ("dpmpp_2m_sde_heun", {}, 192),
    ("dpmpp_3m_sde", {}, 64),
    ("dpmpp_3m_sde", {"eta": 0.5}, 64),
]
BROWNIAN = ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde")


@pytest.fixture
def one_thread():
    """Run on one intra-op thread: on a busy 2-core machine, ops on 10⁵ values split over two
    spinning threads can take 30x longer than on one (measured: 121 s against 4 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name,options,steps", STOCHASTIC,
                         ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items())}"
                              for c in STOCHASTIC])
def test_samples_have_the_data_mean_and_variance(name, options, steps, one_thread):
    # 4 seeds x 10k (Brownian trees) or 25k values each; float32, per-seed generators.
    seeds, width = (4, 10_000) if name in BROWNIAN else (4, 25_000)
    rng = StackedRandomGenerator(range(1000, 1000 + seeds))
    sigmas = schedules.karras(steps)
    x = rng.randn((seeds, width)) * float(sigmas[0])
    out = SAMPLERS[name](gaussian_denoiser, x, sigmas, disable=True, randn_like=rng.randn_like,
                         **options).double()
    n = out.numel()
    mean_error = abs(float(out.mean()) - MU)
    var_error = abs(float(out.var()) / S ** 2 - 1)
    assert mean_error < 4 * S / math.sqrt(n), mean_error
    assert var_error < 4 * math.sqrt(2 / n) + 0.01, var_error


def _run(name, seeds, options, sigmas):
    rng = StackedRandomGenerator(seeds)
    x = rng.randn((len(seeds), 2, 3, 3), dtype=torch.float64) * float(sigmas[0])
    return SAMPLERS[name](gaussian_denoiser, x, sigmas, disable=True, randn_like=rng.randn_like,
                          **options)


@pytest.mark.parametrize("name,options", [(c[0], c[1]) for c in STOCHASTIC]
                         + [("ddpm", {}), ("ddim", {"eta": 0.7}), ("heun", {"S_churn": 10.0}),
                            ("log_snr_ancestral", {"v": 0.3})])
def test_sample_k_is_the_same_alone_or_in_a_batch(name, options):
    seeds = [7, 100, 3, 12, 99]
    sigmas = schedules.karras(6)
    together = _run(name, seeds, options, sigmas)
    alone = torch.cat([_run(name, [s], options, sigmas) for s in seeds])
    assert torch.equal(together, alone)
    # and another seed order: each image follows its seed
    shuffled = _run(name, seeds[::-1], options, sigmas)
    assert torch.equal(shuffled, together.flip(0))
    assert not torch.equal(together[0], together[1])  # the seeds do matter


def test_noise_sampler_replaces_randn_like_and_both_is_an_error():
    sigmas = schedules.karras(4)
    x = torch.zeros(2, 3, dtype=torch.float64)
    calls = []

    def noise_sampler(sigma, sigma_next):
        calls.append((sigma, sigma_next))
        return torch.ones_like(x)
    for name in ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
                 "dpmpp_2m_sde", "dpmpp_3m_sde"):
        calls.clear()
        SAMPLERS[name](gaussian_denoiser, x, sigmas, disable=True, noise_sampler=noise_sampler)
        assert calls and all(a > b > 0 for a, b in calls), (name, calls)
        with pytest.raises(ValueError, match="noise_sampler or randn_like, not both"):
            SAMPLERS[name](gaussian_denoiser, x, sigmas, disable=True,
                           noise_sampler=noise_sampler, randn_like=torch.randn_like)


# ---- the Brownian tree ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 20_000), (10_000, 4)],
                         ids=["per-image generators", "hashed draws for small samples"])
def test_brownian_increments_have_the_law_of_one_brownian_path(shape):
    x = torch.zeros(shape, dtype=torch.float64)
    tree = BrownianTreeNoiseSampler(x, 0.01, 50.0, seeds=list(range(5, 5 + shape[0])))
    a, b, c = 20.0, 3.0, 0.5
    ab, bc, ac = tree(a, b), tree(b, c), tree(a, c)
    for z in (ab, bc, ac, tree(50.0, 0.01)):
        assert abs(float(z.mean())) < 4 / math.sqrt(z.numel())
        assert abs(float(z.var()) - 1) < 4 * math.sqrt(2 / z.numel())
    # Disjoint increments are independent; overlapping ones correlate as √(overlap/length).
    assert abs(float((ab * bc).mean())) < 4 / math.sqrt(ab.numel())
    expected = math.sqrt((a - b) / (a - c))
    assert abs(float((ab * ac).mean()) - expected) < 4 / math.sqrt(ab.numel())
    # One path: W(c) − W(a) = (W(b) − W(a)) + (W(c) − W(b)), to rounding.
    torch.testing.assert_close(ac * math.sqrt(a - c), ab * math.sqrt(a - b) + bc * math.sqrt(b - c))


@pytest.mark.parametrize("size", [4, 600])  # hashed draws / per-image generators
def test_brownian_tree_values_do_not_depend_on_the_order_of_queries(size):
    x = torch.zeros(3, size)
    levels = [80.0, 31.0, 7.5, 2.0, 0.4, 0.05, 0.002]
    forward = BrownianTreeNoiseSampler(x, 0.002, 80.0, seeds=[1, 2, 3])
    backward = BrownianTreeNoiseSampler(x, 0.002, 80.0, seeds=[1, 2, 3])
    w_forward = [forward.W(s) for s in levels]
    w_backward = [backward.W(s) for s in reversed(levels)][::-1]
    for a, b in zip(w_forward, w_backward):
        assert torch.equal(a, b)
    assert torch.equal(w_forward[-1], torch.zeros_like(w_forward[-1]))  # W(σ_min) = 0
    single = BrownianTreeNoiseSampler(x[1:2], 0.002, 80.0, seeds=[2])
    assert torch.equal(single(31.0, 0.4), forward(31.0, 0.4)[1:2])


def test_sde_tree_seeds_come_from_the_per_image_generators():
    x = torch.zeros(3, 2)
    together = seeds_from_randn_like(StackedRandomGenerator([4, 5, 6]).randn_like, x)
    alone = [seeds_from_randn_like(StackedRandomGenerator([s]).randn_like, x[:1])[0]
             for s in (4, 5, 6)]
    assert together == alone and len(set(together)) == 3


def test_brownian_tree_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        BrownianTreeNoiseSampler(x, 1.0, 1.0, seeds=[1, 2])
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        BrownianTreeNoiseSampler(x, float("nan"), 1.0, seeds=[1, 2])
    with pytest.raises(ValueError, match="seeds has 1 entries for a batch of 2"):
        BrownianTreeNoiseSampler(x, 0.1, 1.0, seeds=[1])
    with pytest.raises(ValueError, match="tol must be a positive number"):
        BrownianTreeNoiseSampler(x, 0.1, 1.0, seeds=[1, 2], tol=0)
    tree = BrownianTreeNoiseSampler(x, 0.1, 1.0, seeds=[1, 2])
    with pytest.raises(ValueError, match="outside the Brownian tree's interval"):
        tree(2.0, 0.5)
    with pytest.raises(ValueError, match="two different noise levels"):
        tree(0.5, 0.5)


# ---- no autograd graph (issue 17, item 5) --------------------------------------------------


class ParamDenoiser(torch.nn.Module):
    """The Gaussian denoiser times a learnable scale of 1: its output requires grad."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x, sigma, **unused):
        return self.scale * gaussian_denoiser(x, sigma)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_build_no_autograd_graph(name):
    denoiser = ParamDenoiser()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert denoiser(x, torch.ones(2)).requires_grad  # outside a sampler it would
    out = SAMPLERS[name](denoiser, x * 10, schedules.karras(4, 0.1, 10.0), disable=True)
    assert not out.requires_grad and out.grad_fn is None
    assert denoiser.scale.grad is None


class LinearClassifier(torch.nn.Module):
    def __init__(self, features, classes=3):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(classes, features, generator=gen,
                                                     dtype=torch.float64))

    def forward(self, x, t):
        return x.flatten(1) @ self.weight.T


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m_sde", "unipc", "dpm_solver_fast"])
def test_classifier_guidance_still_differentiates_inside(name):
    """Autograd runs inside the guided denoiser although the loop is under no_grad: the result
    equals guidance with the closed-form gradient of log softmax(Wx)[y] = W_y − Σ_k p_k·W_k."""
    classifier = LinearClassifier(4)
    weight = classifier.weight.detach()

    def autograd_grad(x, sigma, y):
        return classifier_log_prob_grad(classifier, x, sigma, y)

    def exact_grad(x, sigma, y):
        p = torch.softmax(x.flatten(1) @ weight.T, dim=-1)
        return (weight[y] - p @ weight).reshape(x.shape)
    y = torch.tensor([0, 2])
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 10
    sigmas = schedules.karras(5, 0.05, 10.0)
    outs = []
    for grad_fn in (autograd_grad, exact_grad):
        guided = ClassifierGuidedDenoiser(ParamDenoiser(), grad_fn, scale=2.0,
                                          model_uses_labels=False)
        outs.append(SAMPLERS[name](guided, x, sigmas, extra_args={"y": y}, disable=True,
                                   **({"eta": 0.0} if name == "dpmpp_2m_sde" else {})))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    unguided = SAMPLERS[name](ParamDenoiser(), x, sigmas, disable=True,
                              **({"eta": 0.0} if name == "dpmpp_2m_sde" else {}))
    assert not torch.allclose(outs[0], unguided)  # guidance did something
    assert classifier.weight.grad is None and not outs[0].requires_grad


# ---- bad options ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,options,match", [
    ("euler_ancestral", {"eta": -0.1}, "eta must be"),
    ("dpm_2_ancestral", {"eta": float("nan")}, "eta must be"),
    ("dpmpp_2s_ancestral", {"S_noise": -1.0}, "S_noise must be"),
    ("dpmpp_sde", {"r": 0.0}, r"r must be a finite number in \(0, 1\)"),
    ("dpmpp_sde", {"r": 1.0}, "r must be"),
    ("dpmpp_2m_sde", {"solver_type": "euler"},
     r"solver_type must be one of \['midpoint', 'heun'\]"),
    ("dpmpp_3m_sde", {"eta": float("inf")}, "eta must be"),
    ("dpm_2", {"S_churn": -1.0}, "S_churn must be"),
    ("lms", {"order": 5}, "order must be an integer from 1 to 4, got 5"),
    ("lms", {"order": 0}, "order must be an integer from 1 to 4"),
    ("unipc", {"order": 4}, "order must be an integer from 1 to 3, got 4"),
    ("unipc", {"order": 2.5}, "order must be an integer"),
    ("unipc", {"order": True}, "order must be an integer"),
    ("unipc", {"variant": "bh3"}, "variant must be one of"),
    ("ddim", {"eta": -1.0}, "eta must be"),
    ("heun", {"S_churn": float("nan")}, "S_churn must be"),
    ("euler", {"S_noise": -0.5}, "S_noise must be"),
])
def test_bad_options_name_the_option(name, options, match):
    with pytest.raises(ValueError, match=match):
        SAMPLERS[name](gaussian_denoiser, torch.zeros(2, 3), schedules.karras(4), disable=True,
                       **options)


def test_unknown_sampler_names():
    with pytest.raises(UnknownNameError, match="unknown sampler 'dpmpp_4m'; choose from"):
        SAMPLERS["dpmpp_4m"]
    with pytest.raises(KeyError):  # still a dict to dict users
        SAMPLERS["euler_a"]
    with pytest.raises(ValueError, match="unknown sampler 'k_lms'"):
        sampler_options("k_lms")
    assert "dpmpp_2m_sde" in SAMPLERS and SAMPLERS.get("nope") is None


def test_sampler_options_are_the_signature_minus_the_common_arguments():
    assert sampler_options("dpmpp_2m_sde") == ("eta", "S_noise", "solver_type", "noise_sampler",
                                               "randn_like")
    assert sampler_options("unipc") == ("order", "variant")
    assert sampler_options("dpmpp_2m") == ()
    assert sampler_options("heun") == ("S_churn", "S_min", "S_max", "S_noise", "randn_like")
    for name in SAMPLERS:  # every option is documented in the sampler's docstring
        doc = SAMPLERS[name].__doc__ or ""
        for option in sampler_options(name):
            assert option in doc, (name, option)
