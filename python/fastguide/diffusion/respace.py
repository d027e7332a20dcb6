"""Respacing: sampling with a subset of the T training steps, as in ADM (improved DDPM §4).

Accepted strings: "" (all steps), "N" (N evenly spread steps), "ddimN" (a constant integer
stride, as in the DDIM paper), and comma lists "a,b,c" (T cut into equal sections, with a, b, c
steps in each). Rounding follows ADM exactly: the fractional stride is accumulated by repeated
addition and rounded with Python's round() (half to even), so "25" of 1000 keeps 166, not 167.
"""
import torch

__all__ = ["space_timesteps", "spaced_betas"]


def _parse_int(text, spec):
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"invalid timestep respacing {spec!r}: {text!r} is not an "
                         "integer") from None
    if value < 1:
        raise ValueError(f"invalid timestep respacing {spec!r}: step counts must be >= 1")
    return value


def _ddim_stride_steps(num_timesteps, count, spec):
    # The smallest integer stride that visits exactly `count` steps starting at 0.
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == count:
            return list(range(0, num_timesteps, stride))
    if count == num_timesteps == 1:
        return [0]
    raise ValueError(f"invalid timestep respacing {spec!r}: no integer stride gives exactly "
                     f"{count} of {num_timesteps} steps")


def _section_steps(start, size, count):
    # `count` steps spread over [start, start + size), first and last included.
    stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
    steps, position = [], 0.0
    for _ in range(count):
        steps.append(start + round(position))
        position += stride  # accumulated, not i * stride: this is ADM's rounding
    return steps


def space_timesteps(num_timesteps, section_counts):
    """Sorted list of the original timesteps kept by a respacing string or list of counts."""
    spec = section_counts
    if section_counts in ("", None):
        return list(range(num_timesteps))
    if isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("ddim"):
            count = _parse_int(text[len("ddim"):], spec)
            if count > num_timesteps:
                raise ValueError(f"invalid timestep respacing {spec!r}: {count} steps requested "
                                 f"but the process has only {num_timesteps}")
            return _ddim_stride_steps(num_timesteps, count, spec)
        counts = [_parse_int(part, spec) for part in text.split(",")]
    else:
        counts = [_parse_int(str(c), spec) for c in section_counts]
    if not counts:
        raise ValueError(f"invalid timestep respacing {spec!r}")
    size_per, extra = divmod(num_timesteps, len(counts))
    steps, start = [], 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"invalid timestep respacing {spec!r}: cannot take {count} steps from "
                             f"a section of {size} (the process has {num_timesteps} steps)")
        steps += _section_steps(start, size, count)
        start += size
    return sorted(set(steps))


def spaced_betas(alphas_cumprod, use_timesteps):
    """β_k = 1 − ᾱ[m_k] / ᾱ[m_(k−1)] over the kept steps m_k, so that the spaced process has the
    same ᾱ at every kept step (these can exceed the cosine cap of 0.999)."""
    kept = torch.as_tensor(sorted(use_timesteps), dtype=torch.long)
    abar = alphas_cumprod[kept]
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    return 1.0 - abar / abar_prev, kept
