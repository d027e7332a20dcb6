"""Benchmarks of fastguide's models: forward throughput and MFU on five backends side by side,
the training step, and end-to-end guided sampling (`fastguide bench`, `python -m fastguide.bench`).

    fastguide.bench.main(["--suite", "cpu"])         # -> exit status
    fastguide.bench.run_command(["--suite", "cpu"])  # -> the result dict

Modules: suites (what runs), backends (the five ways of running a model), flops (FLOP
accounting on the meta device), forward / train / sampling (the measurements), run (the
orchestration and time budget), results (the JSON layout), report (markdown tables), timing.
"""
from .command import main, run_command

__all__ = ["main", "run_command"]
