"""Forward throughput, training step and guided sampling of the ADM models on five backends:
the same as `fastguide bench` (see fastguide/bench/command.py for the options).

    python benchmarks/bench_models.py --suite cpu     # < 1 min
    python benchmarks/bench_models.py --suite gpu     # H100/H200, ~8 min
"""
import sys

from fastguide.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
