"""Command-line option helpers shared by `fastguide train` and `fastguide eval`: help that shows
every default and the subcommand's examples, and range checks that name the option.

Checks run on the parsed arguments before any work starts and raise CLIError, which the
`fastguide` command prints as one line, `fastguide: error: ...`, with exit status 2.
"""
import math

from ..cliutil import HelpFormatter

__all__ = ["use_help_formatter", "check_range"]


def use_help_formatter(parser, description, examples):
    """Give a subcommand's parser (made by fastguide.cli) a description, examples and defaults."""
    parser.formatter_class = HelpFormatter
    parser.description = description
    parser.epilog = examples


def check_range(value, option, low=None, high=None, low_open=False, high_open=False):
    """value must be a finite number in [low, high] (open ends where asked); otherwise a
    CLIError naming the option, e.g. '--lr must be a finite number > 0, got nan'."""
    from ..cli import CLIError
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    wanted = f"{option} must be a finite number" + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(value, float) and not math.isfinite(value):
        raise CLIError(f"{wanted}, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise CLIError(f"{wanted}, got {value}")
