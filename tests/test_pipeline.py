"""fastguide.pipeline: each released model is sampled with the process of its README flags, each
stage of a two-stage run with its own, and ADMPipeline is the same sampler the CLI runs."""
import re

import numpy as np
import pytest
import torch

import fastguide
from fastguide.cli import main
from fastguide.diffusion import named_betas
from fastguide.nn import presets
from fastguide.pipeline import ADMPipeline, resolve_diffusion


def readme_diffusion_flags(reference_dir):
    """checkpoint stem -> {noise_schedule, diffusion_steps, learn_sigma} from adm_flops.md's
    copy of guided-diffusion's README flags (only the models that carry them)."""
    text = (reference_dir / "adm_flops.md").read_text()
    sections = re.findall(r"^### [^(]*\(([\w]+)\.pt[^)]*\)\n\n```\n(.*?)\n```", text, re.M)
    out = {}
    for stem, flags in sections:
        values = dict(re.findall(r"--(\w+) (\S+)", flags))
        if "noise_schedule" in values:
            out[stem] = {"noise_schedule": values["noise_schedule"],
                         "steps": int(values["diffusion_steps"]),
                         "learn_sigma": values["learn_sigma"] == "True"}
    return out


def test_every_released_model_carries_its_readme_process(reference_dir):
    flags = readme_diffusion_flags(reference_dir)
    assert len(flags) == 8  # six base models and two upsamplers; classifiers have none
    for stem, expected in flags.items():
        assert presets.diffusion(stem) == expected, stem
    assert flags["64x64_diffusion"]["noise_schedule"] == "cosine"  # the one exception
    for stem in ("64x64_classifier", "256x256_classifier"):
        assert presets.diffusion(stem) is None


@pytest.mark.parametrize("stem", ["64x64_diffusion", "128x128_diffusion", "256x256_diffusion",
                                  "256x256_diffusion_uncond", "512x512_diffusion",
                                  "lsun_bedroom", "64_256_upsampler", "128_512_upsampler"])
def test_a_checkpoint_of_a_released_architecture_gets_its_process(stem, reference_dir):
    # What the loader sees for a guided-diffusion .pt: the architecture only (meta weights).
    with torch.device("meta"):
        model = presets.create(stem)
    settings = resolve_diffusion(model, None, stem)
    expected = readme_diffusion_flags(reference_dir)[stem]
    assert settings.as_dict() == expected and not settings.notes
    assert "released" in settings.source


def test_two_stage_64_to_256_runs_cosine_then_linear():
    pipe = ADMPipeline.from_checkpoint("64x64_diffusion", upsampler="64_256_upsampler",
                                       device="meta")
    assert pipe.diffusion.noise_schedule == "cosine"
    assert pipe.upsampler_diffusion.noise_schedule == "linear"
    base, up = pipe.samplers("ddpm", 1000, "ddpm", 1000)
    np.testing.assert_allclose(base.process.betas.numpy(), named_betas("cosine", 1000), rtol=1e-12)
    np.testing.assert_allclose(up.process.betas.numpy(), named_betas("linear", 1000), rtol=1e-12)
    # Each stage's flags change that stage only, and say so.
    pipe = ADMPipeline.from_checkpoint("64x64_diffusion", upsampler="64_256_upsampler",
                                       device="meta", upsample_noise_schedule="cosine")
    assert pipe.diffusion.noise_schedule == "cosine"
    assert pipe.upsampler_diffusion.noise_schedule == "cosine"
    assert any("--upsample-noise-schedule cosine overrides" in n for n in pipe.notes)


def test_training_record_wins_over_architecture_and_flags_win_over_both(tmp_path):
    model = fastguide.pipeline.load_model("digits_unet").model
    info = {"diffusion": {"steps": 500, "noise_schedule": "linear", "learn_sigma": False}}
    assert resolve_diffusion(model, info).as_dict() == info["diffusion"]
    flagged = resolve_diffusion(model, info, noise_schedule="cosine")
    assert flagged.noise_schedule == "cosine" and flagged.steps == 500
    assert "overrides noise_schedule=linear" in flagged.notes[0]


def test_pipeline_equals_the_cli(tmp_path, capsys):
    pipe = ADMPipeline.from_checkpoint("digits_unet")
    out = pipe(seeds=[3, 1, 4], cfg_scale=1.5, sampler="ddim", steps=4, batch_size=2,
               progress=False)
    assert out.images.shape == (3, 8, 8, 1) and out.images.dtype == np.uint8
    np.testing.assert_array_equal(out.labels, [3, 1, 4])
    assert main(["sample", "--model", "digits_unet", "--seeds", "3,1,4", "--cfg-scale", "1.5",
                 "--steps", "4", "--out", str(tmp_path), "--no-progress"]) == 0
    capsys.readouterr()
    with np.load(tmp_path / "samples_3x8x8x1.npz") as f:
        np.testing.assert_array_equal(f["arr_0"], out.images)
    pil = pipe(seeds=[3], cfg_scale=1.5, sampler="ddim", steps=4, progress=False,
               output_type="pil").images
    assert pil[0].size == (8, 8)
    np.testing.assert_array_equal(np.asarray(pil[0]), out.images[0, ..., 0])


def test_pipeline_bad_arguments():
    pipe = ADMPipeline.from_checkpoint("digits_unet")
    with pytest.raises(ValueError, match="output_type"):
        pipe(seeds=[0], steps=1, output_type="tensor")
    with pytest.raises(ValueError, match="batch_size"):
        pipe(seeds=[0], steps=1, batch_size=0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        pipe(seeds=[0], sampler="plms")
    with pytest.raises(ValueError, match="cfg_scale must be a finite number >= 0"):
        pipe(seeds=[0], cfg_scale=-1.0)
    with pytest.raises(ValueError, match="--weak-model digits_classifier is a classifier"):
        ADMPipeline.from_checkpoint("digits_unet", weak_model="digits_classifier")


def test_grid_puts_one_class_per_column(tmp_path):
    from PIL import Image
    from fastguide.pipeline import save_grid
    images = np.zeros((7, 4, 4, 1), np.uint8)
    labels = np.array([2, 0, 2, 1, 0, 2, 1])
    for k, label in enumerate(labels):
        images[k] = 50 * (label + 1)  # each tile shows its class
    save_grid(images, tmp_path / "g.png", min_tile=4, pad=1, labels=labels)
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (3 * 5 + 1, 3 * 5 + 1)  # 3 classes -> 3 columns, 3 of class 2 -> 3 rows
    for column, label in enumerate((0, 1, 2)):
        tiles = [grid[1 + 5 * r, 1 + 5 * column] for r in range(3)]
        members = int((labels == label).sum())
        assert tiles[:members] == [50 * (label + 1)] * members
        assert tiles[members:] == [128] * (3 - members)  # empty cells stay grey
