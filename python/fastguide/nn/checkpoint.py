"""Loading guided-diffusion checkpoints, and fastguide's own format (safetensors + JSON config).

    model = fastguide.load_checkpoint("256x256_diffusion.pt")       # config inferred, strict
    fastguide.save_model(model, "adm256.safetensors")               # + adm256.json
    model = fastguide.load_checkpoint("adm256.safetensors")

.pt files are read with torch.load(weights_only=True): a pickle that would run code is refused.
"""
import json
import pathlib
import pickle

import torch

from ..atomic import atomic_write
from .base import resolve_dtype
from .config_check import validate_config
from .infer import (CheckpointError, CheckpointMismatchError, build_model, compare_shapes,
                    infer_config, strip_prefix)

__all__ = ["load_checkpoint", "save_model", "read_state_dict", "model_from_state_dict",
           "infer_config", "CheckpointError", "CheckpointMismatchError"]

_SEQUENCES = ("channel_mult", "attention_resolutions")
_RUNTIME = ("backend", "dtype")  # how to run, not what was trained: chosen at load time


def read_state_dict(path):
    """A guided-diffusion .pt -> flat {name: tensor}, never executing pickled code."""
    path = _existing_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise CheckpointError(
                f"refused to load {path}: it pickles Python objects other than tensors, and "
                "loading them would execute code from the file (fastguide loads with "
                "weights_only=True). Re-save it as a plain state dict of tensors.") from None
        raise CheckpointError(f"could not read {path}: corrupt or truncated ({e})") from None
    except Exception as e:  # torch.load on arbitrary bytes raises almost any type (KeyError...)
        raise CheckpointError(
            f"could not read {path}: the file is truncated, corrupt or not a PyTorch checkpoint "
            f"({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):  # common training wrappers
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a flat dict of tensors); "
                              f"got {type(obj).__name__}")
    return strip_prefix(obj)


def model_from_state_dict(state_dict, config, device="cpu", dtype=None, backend="fused"):
    """Build config's model on the meta device and load state_dict into it strictly."""
    state_dict = strip_prefix(state_dict)
    config = {k: v for k, v in validate_config(dict(config)).items() if k not in _RUNTIME}
    try:
        with torch.device("meta"):
            model = build_model(config, backend=backend)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as e:
        raise CheckpointError(f"the config does not describe a buildable model: {e}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing, unexpected, mismatched = compare_shapes(expected, shapes, config)
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, config)
    # assign=True adopts the loaded tensors (no random init of a 500M-parameter model first).
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.to(device=device, dtype=torch.float32)
    if dtype is not None:
        model.convert_trunk(resolve_dtype(dtype))
    return model.eval()


def load_checkpoint(path, *, device="cpu", dtype=None, backend="fused", **overrides):
    """A guided-diffusion .pt (config inferred from the state dict) or a fastguide .safetensors
    (config from its JSON) -> the model, strictly loaded, in eval mode.

    dtype: the trunk precision (float32 / float16 / bfloat16; default float32, or the saved one).
    overrides: config fields the state dict cannot tell, e.g. num_heads, num_head_channels,
    use_new_attention_order, image_size; or null_class=True to add the classifier-free-guidance
    null label to a class-conditional checkpoint. See fastguide.nn.infer.infer_config.
    """
    path = _existing_file(path)
    if path.suffix == ".safetensors":
        state_dict, config = _read_safetensors(path)
        config.update(overrides)
        validate_config(config, f"{path} (with the given overrides)" if overrides else str(path))
        dtype = dtype if dtype is not None else config.get("dtype")
    else:
        state_dict = read_state_dict(path)
        config = infer_config(state_dict, **overrides)
    return model_from_state_dict(state_dict, config, device=device, dtype=dtype, backend=backend)


# ---- fastguide format ------------------------------------------------------------------------

def _config_to_json(config):
    return json.dumps({k: (list(v) if k in _SEQUENCES else v) for k, v in config.items()
                       if k != "backend"}, indent=2, sort_keys=True)


def _config_from_json(text, source):
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"bad JSON config in {source}: {e}") from None
    if not isinstance(config, dict) or "kind" not in config:
        raise CheckpointError(f"{source} is not a fastguide model config (no 'kind')")
    validate_config(config, str(source))
    for k in _SEQUENCES:
        if k in config:
            config[k] = tuple(config[k])
    return config


def _existing_file(path):
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    return path


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError("fastguide's checkpoint format needs the safetensors package "
                          "(pip install safetensors)") from None
    return safetensors


def save_model(model, path):
    """Write model's weights to path (.safetensors) and its config to path with .json; the
    config is also stored in the safetensors metadata, so the weights file alone suffices."""
    save_file = _safetensors().torch.save_file

    path = pathlib.Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"path must end in .safetensors, got {path}")
    text = _config_to_json(model.config)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"fastguide_config": text}))
    atomic_write(path.with_suffix(".json"), lambda tmp: pathlib.Path(tmp).write_text(text + "\n"))
    return path


def _read_safetensors(path):
    st = _safetensors()
    try:
        with st.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state_dict = st.torch.load_file(str(path))
    except (st.SafetensorError, OSError) as e:
        raise CheckpointError(
            f"could not read {path}: truncated or not safetensors ({e})") from None
    sidecar = path.with_suffix(".json")
    if sidecar.exists():
        config = _config_from_json(sidecar.read_text(), sidecar)
    elif "fastguide_config" in metadata:
        config = _config_from_json(metadata["fastguide_config"], f"{path} metadata")
    else:
        raise CheckpointError(f"{path} has no config: neither {sidecar.name} nor metadata")
    return state_dict, config
