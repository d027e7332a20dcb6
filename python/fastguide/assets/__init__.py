"""Models shipped with fastguide (a few MB), each trained by a documented `fastguide train`
command (see README.md here and docs/training.md):

    digits_unet              class-conditional UNet with a null class, CFG-trained, 8x8 digits
    digits_unet_weak         the same training run stopped at step 300 of 1500: the weaker
                             model that autoguidance (Karras et al. 2024) steers away from
    digits_classifier        noisy classifier (guided-diffusion --noised), for classifier guidance
    digits_clean_classifier  classifier of clean digits: the metrics' feature extractor

Each is NAME.safetensors + NAME.json (fastguide.save_model) + NAME.train.json (the diffusion
process, the training command and its CPU time).
"""
import json
import pathlib

__all__ = ["ASSET_DIR", "names", "path", "load", "train_info"]

ASSET_DIR = pathlib.Path(__file__).resolve().parent


def names():
    return sorted(p.stem for p in ASSET_DIR.glob("*.safetensors"))


def path(name):
    p = ASSET_DIR / f"{name}.safetensors"
    if not p.exists():
        raise FileNotFoundError(f"no shipped model {name!r} in {ASSET_DIR}; shipped: {names()}")
    return p


def train_info(name):
    return json.loads(path(name).with_suffix(".train.json").read_text())


def load(name, **kwargs):
    """The shipped model, loaded with the public loader (fastguide.load_checkpoint)."""
    from ..nn.checkpoint import load_checkpoint
    return load_checkpoint(path(name), **kwargs)
