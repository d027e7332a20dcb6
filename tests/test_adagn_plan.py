"""The CUDA AdaGN launch plans, checked without a GPU: torch.ops.fastguide._adagn_plan builds the
plans the CUDA ops would launch for a problem on a described device and walks every CTA, thread
and pack the kernels touch, through the kernels' own index functions (csrc/adagn/adagn_plan.h).
An error is an element touched twice or never, a group split across single-pass units, a partial
written twice or never, or a plan outside its limits (cluster size, packs per thread, splits)."""
import random

import pytest
import torch

import fastguide  # noqa: F401  (registers the ops)

PLAN = torch.ops.fastguide._adagn_plan
H100 = [2 * 132, 132, 8 * 132, 1]   # single-pass fwd / bwd CTA targets, streaming target, clusters
A100 = [2 * 108, 108, 8 * 108, 0]   # no clusters: single-pass units are one CTA
FIELDS = ("fwd_fused", "fwd_K", "fwd_nr", "fwd_CT", "bwd_fused", "bwd_K", "bwd_nr", "bwd_CT",
          "width", "splits", "partials", "errors")


def plan(shape, groups, elem=2, channels_last=True, aligned=True, device=H100, check=True):
    n, c, s = shape
    return dict(zip(FIELDS, PLAN([n, c, s, groups, elem, int(channels_last), int(aligned)], device, check)))


# Every AdaGN shape class of ADM-64/128/256 at batch 1 and 8 (spatial sizes and the channel
# counts of encoder, decoder and concatenated skips), small enough to walk element by element.
ADM = [(n, c, hw * hw) for n in (1, 8) for c, hw in
       [(192, 64), (384, 32), (576, 16), (768, 8), (1152, 8), (256, 32), (512, 16), (768, 16),
        (1024, 8), (1536, 8), (128, 64), (256, 64)]]


@pytest.mark.parametrize("shape", ADM)
@pytest.mark.parametrize("channels_last", [True, False])
def test_adm_shapes_cover_every_element_once(shape, channels_last):
    for device in (H100, A100):
        p = plan(shape, 32, channels_last=channels_last, device=device)
        assert p["errors"] == 0, (p, device)


def test_batch_32_channels_last_takes_the_single_pass():
    """The bandwidth goal's case: bf16 channels-last at batch 32, 16x16 to 64x64, C = 256..1024."""
    for c, hw in [(256, 64), (256, 32), (512, 32), (512, 16), (1024, 16), (1024, 8)]:
        p = plan((32, c, hw * hw), 32, check=False)
        assert p["fwd_fused"] == 1 and 1 <= p["fwd_K"] <= 8 and 1 <= p["fwd_nr"] <= 16, (c, hw, p)


def test_huge_slabs_fall_back_to_the_multi_pass_with_capped_splits():
    """256x256 at C = 256: a (n, group) slab of 0.5M elements fits no cluster; at N = 1 the split
    count that keeps the grid full is capped, so the finalize reads at most 64 partials."""
    p = plan((1, 256, 256 * 256), 32, check=False)
    assert p["fwd_fused"] == 0 and p["bwd_fused"] == 0
    assert 1 <= p["partials"] <= 64 and p["splits"] >= 8
    p = plan((1, 256, 128 * 128), 32)  # N = 1, many splits, walked
    assert p["errors"] == 0 and p["partials"] <= 64


def test_no_clusters_without_sm90():
    for shape in [(1, 256, 1024), (1, 512, 256), (8, 256, 4096)]:
        assert plan(shape, 32, device=A100)["fwd_K"] == 1


def test_clusters_spread_batch_one_over_the_machine():
    p = plan((1, 256, 32 * 32), 32)
    assert p["fwd_fused"] == 1 and p["fwd_K"] > 1


@pytest.mark.parametrize("case", [
    ((2, 16, 36), 1, 2, True, True),      # G = 1
    ((2, 16, 36), 16, 2, True, True),     # one channel per group
    ((3, 20, 35), 4, 2, True, True),      # C and S not multiples of 8: single elements
    ((2, 64, 64), 32, 2, True, False),    # misaligned storage: single elements
    ((2, 192, 81), 32, 2, True, True),    # Cg = 6: packs straddle groups
    ((2, 4104, 4), 8, 2, True, True),     # many tiles, Cg = 513 wider than a tile
    ((1, 3000, 16), 1, 4, True, True),    # one group wider than a tile, fp32
    ((1, 16, 60), 4, 4, False, True),     # contiguous, fp32
    ((4, 8, 1), 8, 2, False, True),       # 1x1 spatial
])
def test_edge_shapes(case):
    shape, g, elem, cl, aligned = case
    for device in (H100, A100, [1, 1, 1, 1]):
        p = plan(shape, g, elem, cl, aligned, device)
        assert p["errors"] == 0, (case, device, p)


def test_random_shapes_and_devices():
    rng = random.Random(0)
    for _ in range(300):
        g = rng.choice([1, 2, 4, 8, 32])
        c = g * rng.choice([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 100])
        n, s = rng.choice([1, 2, 5]), rng.choice([1, 3, 8, 9, 64, 100, 1024])
        device = [rng.choice([1, 100, 264]), rng.choice([1, 132]), rng.choice([1, 500, 1056]), rng.choice([0, 1])]
        p = plan((n, c, s), g, rng.choice([2, 4]), rng.choice([True, False]), rng.random() < 0.8, device)
        assert p["errors"] == 0, (n, c, s, g, device, p)


def test_path_switch_round_trips():
    before = torch.ops.fastguide._adagn_set_path(1)
    try:
        assert torch.ops.fastguide._adagn_set_path(1) == 1
    finally:
        torch.ops.fastguide._adagn_set_path(before)
    with pytest.raises(RuntimeError, match="0 \\(auto\\) or 1"):
        torch.ops.fastguide._adagn_set_path(2)
