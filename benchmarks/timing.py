"""Timing and run metadata shared by the benchmarks: they live in fastguide.bench.timing."""
from fastguide.bench.timing import (copy_bandwidth, git_commit, median_time,  # noqa: F401
                                    run_metadata, sync, timed_runs, write_json)
