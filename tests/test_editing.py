"""fastguide.editing: the exact properties of each edit, checked against plain sampling, the
input itself, or a closed form (not against recorded outputs).

- inpainting keeps the known pixels exactly and, with nothing known, is plain sampling; RePaint
  without jumps is the baseline; RePaint's schedule is the paper's;
- img2img at strength 0 returns the input and at strength 1 equals plain sampling;
- inversion is the exact inverse of sampling when the ODE steps are exact (a constant ε or a
  constant denoiser), which pins down every index;
- every result is the same at any batch size.
"""
import numpy as np
import pytest
import torch

from fastguide import editing
from fastguide.diffusion import create_gaussian_diffusion
from fastguide.editing import inpainting, inversion, sdedit
from fastguide.editing.core import model_kwargs
from fastguide.pipeline import ADMPipeline
from fastguide.pipeline.guided import OptionError
from fastguide.sampling import ddim_sample_loop, sample_euler, sample_heun
from fastguide.train.data import digits_split, float_to_uint8

N = 6


@pytest.fixture(scope="module")
def pipe():
    return ADMPipeline.from_checkpoint("digits_unet")


@pytest.fixture(scope="module")
def digits():
    """Six held-out digits as guided-diffusion's npz would hold them (uint8 NHWC, labels)."""
    x, y = digits_split("test")
    return float_to_uint8(x[:N]).numpy(), y[:N].numpy()


def right_half(value=255):
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = value
    return mask


SAMPLERS = ["ddim", "ddpm", "euler", "heun", "dpmpp_2m"]


# ---- the RePaint schedule ----------------------------------------------------------------------

def test_repaint_schedule_is_the_papers():
    # N = 6, j = 2, one jump back: jump points 0 and 2 (k < N − j = 4).
    assert editing.repaint_schedule(6, 2, 1) == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    assert editing.repaint_schedule(5, 3, 0) == [4, 3, 2, 1, 0, -1]  # no jumps: plain


@pytest.mark.parametrize("steps,j,count", [(20, 5, 4), (50, 10, 9), (7, 6, 2), (9, 2, 1)])
def test_repaint_schedule_walks_each_stretch_count_plus_one_times(steps, j, count):
    schedule = editing.repaint_schedule(steps, j, count)
    assert schedule[0] == steps - 1 and schedule[-1] == -1
    assert all(abs(b - a) == 1 for a, b in zip(schedule, schedule[1:]))
    assert max(schedule) <= steps - 1
    down = [(a, b) for a, b in zip(schedule, schedule[1:]) if b < a]
    points = len(range(0, steps - j, j))
    assert len(down) == steps + count * j * points
    for k in range(steps):  # each step is taken 1 + count times inside a resampled stretch
        times = down.count((k, k - 1))
        in_stretch = any(p < k <= p + j for p in range(0, steps - j, j))
        assert times == (1 + count if in_stretch else 1), k


def test_jump_settings_that_do_not_fit_are_refused():
    with pytest.raises(OptionError, match="jump_length 20 does not fit a schedule of 20 steps"):
        editing.check_jumps(20, 20, 3)
    with pytest.raises(OptionError, match="jump_count must be an integer >= 0"):
        editing.check_jumps(20, 5, -1)
    with pytest.raises(OptionError, match="jump_length must be an integer >= 1"):
        editing.check_jumps(20, 0, 2)
    editing.check_jumps(20, 20, 0)  # without jumps the length does not matter


# ---- inpainting ------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLERS)
def test_inpainting_keeps_the_known_pixels_exactly(pipe, digits, sampler):
    images, labels = digits
    for method in ("replace", "repaint"):
        out = editing.inpaint(pipe, images, right_half(), class_labels=labels, method=method,
                              jump_length=2, jump_count=1, sampler=sampler, steps=4,
                              cfg_scale=1.5, progress=False)
        np.testing.assert_array_equal(out.images[:, :, :4], images[:, :, :4])
        assert (out.images[:, :, 4:] != images[:, :, 4:]).any()  # the rest was generated
        np.testing.assert_array_equal(out.labels, labels)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_inpainting_with_nothing_known_is_plain_sampling(pipe, digits, sampler):
    images, labels = digits
    seeds = [3, 1, 4, 5, 9, 2]
    out = editing.inpaint(pipe, images, np.full((8, 8), 255, np.uint8), seeds, labels,
                          method="replace", sampler=sampler, steps=4, cfg_scale=1.0,
                          progress=False)
    plain = pipe(seeds, labels, sampler=sampler, steps=4, cfg_scale=1.0, progress=False)
    np.testing.assert_array_equal(out.images, plain.images)
    assert any("plain sampling" in n for n in out.notes)


def test_inpainting_with_everything_known_returns_the_input(pipe, digits):
    images, labels = digits
    out = editing.inpaint(pipe, images, np.zeros((8, 8), np.uint8), class_labels=labels,
                          steps=3, jump_length=1, jump_count=1, progress=False)
    np.testing.assert_array_equal(out.images, images)
    assert any("outputs equal the inputs" in n for n in out.notes)


@pytest.mark.parametrize("sampler", ["ddpm", "euler"])
def test_repaint_without_jumps_is_the_baseline(pipe, digits, sampler):
    images, labels = digits
    kw = dict(class_labels=labels, sampler=sampler, steps=5, progress=False)
    baseline = editing.inpaint(pipe, images, right_half(), method="replace", **kw)
    repaint = editing.inpaint(pipe, images, right_half(), method="repaint", jump_count=0,
                              **kw)
    np.testing.assert_array_equal(repaint.images, baseline.images)
    jumped = editing.inpaint(pipe, images, right_half(), jump_length=2, jump_count=2, **kw)
    assert (jumped.images != baseline.images).any()


@pytest.mark.parametrize("sampler", ["ddpm", "heun"])
def test_inpainting_does_not_depend_on_the_batch_size(pipe, digits, sampler):
    images, labels = digits
    kw = dict(class_labels=labels, sampler=sampler, steps=4, jump_length=2, jump_count=1,
              cfg_scale=1.0, progress=False)
    whole = editing.inpaint(pipe, images, right_half(), seeds=range(6), batch_size=6, **kw)
    split = editing.inpaint(pipe, images, right_half(), seeds=range(6), batch_size=4, **kw)
    np.testing.assert_allclose(whole.images.astype(int), split.images.astype(int), atol=1)
    assert (whole.images == split.images).mean() > 0.99  # float rounding of batched convs


def test_inpainting_with_classifier_guidance_and_per_image_masks(digits):
    images, labels = digits
    pipe = ADMPipeline.from_checkpoint("digits_unet", classifier="digits_classifier")
    masks = np.zeros((N, 8, 8), bool)
    for k in range(N):
        masks[k, k:k + 3] = True  # a different band of rows per image
    for sampler in ("ddim", "euler"):
        out = editing.inpaint(pipe, images, masks, class_labels=labels, sampler=sampler,
                              steps=4, jump_length=2, jump_count=1, classifier_scale=2.0,
                              progress=False)
        keep = ~masks[..., None]
        np.testing.assert_array_equal(out.images[keep], images[keep])


def test_one_image_many_seeds(pipe, digits):
    images, labels = digits
    out = editing.inpaint(pipe, images[:1], right_half(), seeds=range(4), class_labels=[3],
                          method="replace", steps=4, sampler="ddpm", progress=False)
    assert out.images.shape == (4, 8, 8, 1)
    assert len({o.tobytes() for o in out.images}) == 4  # four different completions
    np.testing.assert_array_equal(out.images[:, :, :4], np.repeat(images[:1, :, :4], 4, 0))


# ---- img2img ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLERS)
def test_img2img_ends(pipe, digits, sampler):
    images, labels = digits
    kw = dict(class_labels=labels, sampler=sampler, steps=5, cfg_scale=1.0, progress=False)
    zero = editing.img2img(pipe, images, 0.0, **kw)
    np.testing.assert_array_equal(zero.images, images)
    one = editing.img2img(pipe, images, 1.0, seeds=range(10, 16), **kw)
    plain = pipe(range(10, 16), labels, **{k: v for k, v in kw.items() if k != "class_labels"})
    np.testing.assert_array_equal(one.images, plain.images)
    half = editing.img2img(pipe, images, 0.5, **kw)
    assert (half.images != images).any()


def test_img2img_strength_sets_the_steps_and_is_checked(pipe):
    gs, _ = pipe.samplers("ddim", 10)
    assert [sdedit.img2img_steps(gs, s) for s in (0, 0.04, 0.05, 0.5, 0.96, 1)] == [
        0, 0, 1, 5, 10, 10]
    for bad in (-0.1, 1.5, float("nan"), "0.5"):
        with pytest.raises(OptionError, match="strength must be a number in \\[0, 1\\]"):
            sdedit.img2img_steps(gs, bad)


# ---- inversion --------------------------------------------------------------------------------

class ConstantEps(torch.nn.Module):
    """ε(x, t) = c: every DDIM step is exact, so inversion must undo sampling exactly."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, t, **kwargs):
        return self.c.expand_as(x)


@pytest.mark.parametrize("steps", [1, 2, 7, 25])
def test_ddim_reverse_sample_loop_inverts_an_exact_ode(steps):
    torch.manual_seed(0)
    process = create_gaussian_diffusion(steps=100, noise_schedule="cosine",
                                        timestep_respacing=str(steps))
    x0, c = (torch.rand(3, 1, 4, 4) * 2 - 1).double(), torch.randn(1, 1, 4, 4).double()
    model = ConstantEps(c)
    latents = editing.ddim_reverse_sample_loop(process, model, x0, clip_denoised=False)
    # on the DDIM path of a constant ε: x_k = √ᾱ_k·x₀ + √(1 − ᾱ_k)·c at position N−1
    a = float(process.alphas_cumprod[-1])
    # The schedule's coefficients are float32 on every device, and sampling back divides by
    # √ᾱ (5e-4 at the start): tolerances 1e-6 and 1e-4, where skipping the first step (the
    # clean image taken as position 0) would be off by √(1 − ᾱ₀)·c ≈ 0.025·c.
    torch.testing.assert_close(latents, a ** 0.5 * x0 + (1 - a) ** 0.5 * c, rtol=0, atol=1e-6)
    back = ddim_sample_loop(process, model, x0.shape, noise=latents, clip_denoised=False,
                            fused=False)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("method,sampler", [("euler", sample_euler), ("heun", sample_heun)])
def test_probability_flow_inversion_inverts_an_exact_ode(method, sampler):
    x0 = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
    c = torch.randn(1, 1, 4, 4, dtype=torch.float64)

    def denoiser(x, sigma, **kwargs):  # a constant ε = c: the ODE's path is x₀ + σ·c
        return x - sigma.reshape(-1, 1, 1, 1) * c
    sigmas = torch.tensor([80.0, 10.0, 2.0, 0.3, 0.02, 0.0], dtype=torch.float64)
    latents = editing.probability_flow_inversion(denoiser, x0, sigmas, method)
    torch.testing.assert_close(latents, x0 + 80 * c, rtol=0, atol=1e-9)
    back = sampler(denoiser, latents, sigmas, disable=True)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-9)


def test_only_deterministic_samplers_invert(pipe, digits):
    images, labels = digits
    for sampler, extra, option in (("ddpm", {}, "sampler"), ("dpmpp_2m", {}, "sampler"),
                                   ("ddim", {"eta": 0.5}, "eta"),
                                   ("heun", {"S_churn": 1.0}, "S_churn")):
        with pytest.raises(OptionError) as e:
            editing.invert(pipe, images, labels, sampler=sampler, steps=3,
                           sampler_options=extra, progress=False)
        assert e.value.option == option


def test_decode_is_plain_sampling_from_the_latents(pipe, digits):
    images, labels = digits
    inv = editing.invert(pipe, images, labels, sampler="ddim", steps=4, progress=False)
    gs, _ = pipe.samplers("ddim", 4)
    direct = inversion.decode(gs, inv.latents, list(range(N)), model_kwargs(labels, "cpu"))
    np.testing.assert_array_equal(inv.reconstructions, float_to_uint8(direct).numpy())
    again = editing.decode(pipe, inv.latents, labels, sampler="ddim", steps=4, progress=False)
    np.testing.assert_array_equal(again.images, inv.reconstructions)


# ---- inputs ------------------------------------------------------------------------------------

def test_images_and_labels_from_npz_png_and_folders(tmp_path, digits):
    from PIL import Image
    images, labels = digits
    np.savez(tmp_path / "d.npz", images, labels)
    x, y = editing.read_images(tmp_path / "d.npz")
    np.testing.assert_array_equal(float_to_uint8(x).numpy(), images)
    np.testing.assert_array_equal(y, labels)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for k, image in enumerate(images):
        Image.fromarray(image[..., 0]).save(folder / f"{k:02d}.png")
    x, y = editing.read_images(folder)
    assert y is None and x.shape == (N, 1, 8, 8)
    np.testing.assert_array_equal(float_to_uint8(x).numpy(), images)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert editing.read_images(tmp_path / "rgb.png")[0].shape == (1, 3, 8, 8)


def test_masks_white_is_inpainted_and_grey_needs_a_threshold(tmp_path):
    from PIL import Image
    Image.fromarray(right_half()).save(tmp_path / "m.png")
    mask = editing.read_mask(tmp_path / "m.png", 8)
    assert mask.inpaint.shape == (1, 1, 8, 8) and mask.inpaint[..., 4:].all()
    assert not mask.inpaint[..., :4].any() and mask.note is None
    assert editing.read_mask(tmp_path / "m.png", 8, invert=True).inpaint[..., :4].all()
    grey = right_half(200)
    grey[0, 0] = 30
    Image.fromarray(grey).save(tmp_path / "g.png")
    with pytest.raises(editing.InputError, match="not binary: 33 of 64 pixels.*values 30..200"):
        editing.read_mask(tmp_path / "g.png", 8)
    mask = editing.read_mask(tmp_path / "g.png", 8, threshold=128)
    assert int(mask.inpaint.sum()) == 32
    assert "thresholded at 128 (pixels >= 128 are inpainted): 32 of 64" in mask.note
    assert editing.read_mask(np.eye(8, dtype=bool), 8).inpaint.sum() == 8
    with pytest.raises(editing.InputError, match="not binary"):
        editing.read_mask(np.full((8, 8), 0.5), 8)


def test_inversion_composes_with_guidance(digits):
    """CFG and classifier guidance invert too (the reverse step shifts the score as the
    sampler does). Measured RMSE at 20 steps: ddim + CFG w = 1 0.071 (unguided 0.056), heun +
    classifier s = 1 0.0087 (unguided 0.0025); bounds 1.5x and 2.3x that."""
    images, labels = digits
    pipe = ADMPipeline.from_checkpoint("digits_unet", classifier="digits_classifier")
    cfg = editing.invert(pipe, images, labels, sampler="ddim", steps=20, cfg_scale=1.0,
                         progress=False)
    clf = editing.invert(pipe, images, labels, sampler="heun", steps=20, classifier_scale=1.0,
                         progress=False)
    assert cfg.rmse.mean() < 0.11 and clf.rmse.mean() < 0.02, (cfg.rmse, clf.rmse)


# ---- super-resolution of given images ------------------------------------------------------

@pytest.fixture(scope="module")
def upsampler(tmp_path_factory):
    """A small random-weight 8 -> 32 super-resolution UNet (the shipped models have none)."""
    from fastguide import save_model
    from fastguide.nn.unet import SuperResUNet
    torch.manual_seed(0)
    model = SuperResUNet(image_size=32, in_channels=1, model_channels=32, out_channels=1,
                         num_res_blocks=1, attention_resolutions=(), channel_mult=(1, 2),
                         num_classes=10)
    return save_model(model, tmp_path_factory.mktemp("sr") / "sr.safetensors")


def test_upsampling_given_images_is_the_second_stage_of_sample(upsampler, tmp_path):
    from PIL import Image
    seeds, labels = [4, 8, 15], [1, 7, 3]
    two_stage = ADMPipeline.from_checkpoint("digits_unet", upsampler=upsampler)
    both = two_stage(seeds, labels, sampler="ddim", steps=3, upsample_steps=3, progress=False)
    base = ADMPipeline.from_checkpoint("digits_unet")(seeds, labels, sampler="ddim", steps=3,
                                                      progress=False)
    np.savez(tmp_path / "base.npz", base.images, base.labels)
    out = editing.upsample(upsampler, tmp_path / "base.npz", seeds, steps=3, progress=False)
    assert out.images.shape == (3, 32, 32, 1)
    np.testing.assert_array_equal(out.images, both.images)
    np.testing.assert_array_equal(out.labels, labels)  # from arr_1
    folder = tmp_path / "pngs"  # a folder of PNGs, labels given
    folder.mkdir()
    for k, image in enumerate(base.images):
        Image.fromarray(image[..., 0]).save(folder / f"{k}.png")
    again = editing.upsample(upsampler, folder, seeds, labels, steps=3, progress=False)
    np.testing.assert_array_equal(again.images, both.images)
    assert any("assuming 8px" in n for n in out.notes)  # no record of its low resolution
