"""Shared fixtures. Reference vectors from openai/guided-diffusion live in the folder named by
FASTGUIDE_REFERENCE (default ../shared/reference, relative to the repository root). Tests that
need them skip with a reason when it is missing, except under CI=true, where that is a failure."""
import json
import os
import pathlib

import numpy as np
import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def reference_path():
    return pathlib.Path(os.environ.get("FASTGUIDE_REFERENCE", ROOT.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir():
    path = reference_path()
    if not (path / "README.txt").exists():
        msg = f"reference vectors not found at {path} (set FASTGUIDE_REFERENCE)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def cuda_kernels_built():
    import fastguide
    return fastguide.build_info()["cuda"]


HEAD_KEYS = ("num_heads", "num_head_channels", "num_heads_upsample", "use_new_attention_order")


def load_reference_model(reference_dir, name, config_json):
    """A reference checkpoint with the head settings its JSON config records (heads change no
    tensor shape, so they cannot be inferred from the state dict)."""
    import fastguide
    config = json.loads(config_json)
    overrides = {k: config[k] for k in HEAD_KEYS if k in config}
    return fastguide.load_checkpoint(reference_dir / name, **overrides).eval()


@pytest.fixture(scope="module")
def ref(reference_dir):
    """diffusion.npz as a dict."""
    return dict(np.load(reference_dir / "diffusion.npz"))
