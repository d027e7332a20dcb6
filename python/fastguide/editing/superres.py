"""Super-resolution of given images: the second stage of ADM-G + ADM-U (64->256, 128->512)
run on low-resolution images a user already has, as guided-diffusion's super_res_sample.py
--base_samples does.

The network conditions on any low-resolution size (it resizes it bilinearly), so the size it
was trained on must come from elsewhere; in order: low_res_size given by the caller, the
training record's `--low-res-size` (fastguide train), the released upsamplers (a quarter of
their output size: 64 for 256, 128 for 512), else a quarter of the output size, announced.
"""
from ..nn.infer import released_architecture

__all__ = ["expected_low_res_size", "given_images", "UPSAMPLE_FACTOR"]

UPSAMPLE_FACTOR = 4  # both released ADM-U models, and guided-diffusion's super_res defaults


def _recorded_low_res_size(info):
    """--low-res-size N from a training record's command, or None."""
    words = str((info or {}).get("command", "")).split() + [""]
    for word, after in zip(words, words[1:]):
        value = after if word == "--low-res-size" else (
            word.split("=", 1)[1] if word.startswith("--low-res-size=") else "")
        if value.isdigit():
            return int(value)
    return None


def expected_low_res_size(loaded, low_res_size=None):
    """(size in px, a note for the user or None) of the images loaded.model upsamples."""
    size = loaded.model.config.get("image_size")
    if low_res_size is not None:
        return int(low_res_size), None
    recorded = _recorded_low_res_size(loaded.info)
    if recorded is not None:
        return recorded, None
    if size is None:
        raise ValueError("the upsampler has no image_size; pass it (--image-size)")
    guess = size // UPSAMPLE_FACTOR
    if released_architecture(loaded.model.config) is not None:
        return guess, None
    return guess, (f"the upsampler {loaded.origin} records no low-resolution size; assuming "
                   f"{guess}px, a quarter of its {size}px (the released ADM-U models' ratio; "
                   "--low-res-size sets it)")


def given_images(gs, x0, **unused):
    """The 'base stage' of an upsample run: the given images themselves."""
    return x0
