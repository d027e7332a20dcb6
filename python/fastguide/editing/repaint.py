"""RePaint's resampling schedule (Lugmayr et al. 2022, §4.2 and their Figure 9).

The sampler's N steps take the state through the positions N−1, ..., 0, −1 (−1 is the clean
image; position k is the noise level of the sampler's step k). RePaint walks down as usual,
but each time it reaches a position k in {0, j, 2j, ...} with k < N − j it jumps back up j
positions (renoising with q(x_{k+j} | x_k)) and walks down again, r − 1 times, so every
stretch of j steps is sampled r times and the generated region has time to agree with the
known one. j is the jump length, r − 1 the jump count (RePaint's jump_n_sample is r; their
ImageNet setting j = 10, r = 10 is jump_length=10, jump_count=9). jump_count = 0 is the plain
schedule: RePaint then equals the replacement baseline.
"""
from ..pipeline.guided import OptionError

__all__ = ["repaint_schedule", "check_jumps", "default_jumps", "denoising_steps", "runs",
           "JUMP_LENGTH", "JUMP_COUNT"]

JUMP_LENGTH, JUMP_COUNT = 10, 9  # RePaint's ImageNet setting: j = 10, r = 10


def default_jumps(num_steps, jump_length=None, jump_count=None):
    """(jump_length, jump_count, note or None): RePaint's defaults for those not given, the
    length shortened to fit a short schedule (with a note); given values are kept."""
    count = JUMP_COUNT if jump_count is None else jump_count
    if jump_length is not None:
        return jump_length, count, None
    if num_steps > JUMP_LENGTH or not count:
        return JUMP_LENGTH, count, None
    if num_steps < 2:
        return JUMP_LENGTH, 0, ("RePaint cannot jump back in a 1-step schedule: this is the "
                                "replacement baseline")
    return num_steps - 1, count, (f"the default jump length {JUMP_LENGTH} does not fit "
                                  f"{num_steps} steps; using {num_steps - 1}")


def check_jumps(num_steps, jump_length, jump_count):
    """OptionError (naming the option) unless j and r − 1 fit a schedule of num_steps steps."""
    for name, value, low in (("jump_length", jump_length, 1), ("jump_count", jump_count, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise OptionError(name, f"must be an integer >= {low}, got {value!r}")
    if jump_count and jump_length >= num_steps:
        raise OptionError("jump_length", f"{jump_length} does not fit a schedule of {num_steps} "
                                         f"steps: a jump goes back jump_length steps, so it must "
                                         f"be below the step count (1..{num_steps - 1}); raise "
                                         "--steps or lower --jump-length")


def repaint_schedule(num_steps, jump_length=10, jump_count=9):
    """The positions visited, from num_steps − 1 down to −1 (see the module docstring)."""
    check_jumps(num_steps, jump_length, jump_count)
    left = {k: jump_count for k in range(0, num_steps - jump_length, jump_length)}
    k, visited = num_steps, []
    while k > 0:
        k -= 1
        visited.append(k)
        if left.get(k, 0) > 0:
            left[k] -= 1
            visited.extend(range(k + 1, k + jump_length + 1))
            k += jump_length
    return visited + [-1]


def denoising_steps(schedule):
    """How many sampler steps the schedule takes (network evaluations, for the progress bar)."""
    return sum(b < a for a, b in zip(schedule, schedule[1:]))


def runs(schedule):
    """The schedule as maximal monotone runs [(start, end), ...]: end < start walks down (the
    sampler's steps), end > start jumps up (renoising)."""
    out, start = [], schedule[0]
    for a, b, c in zip(schedule, schedule[1:], schedule[2:] + [None]):
        if c is None or (b - a) * (c - b) < 0:
            out.append((start, b))
            start = b
    return out
