"""Runs a suite: forward grid, training step, guided sampling, then the torch.compile cells,
within the suite's time budget. Every cell becomes a row, measured or skipped with its reason."""
import time

import torch

from .backends import BACKENDS
from .forward import base_row, forward_model_rows
from .isolate import forward_rows_isolated
from .results import skipped_row
from .sampling import SamplingSetup, sampling_base_row, sampling_row
from .train import train_rows

__all__ = ["Budget", "run_suite"]

GUIDANCE = ("cfg", "classifier")


class Budget:
    """Seconds left of a suite's time budget. clock is injectable so that tests can drive it."""

    def __init__(self, seconds, clock=time.perf_counter):
        self.seconds = seconds
        self.clock = clock
        self.start = clock()

    def remaining(self):
        return self.seconds - (self.clock() - self.start)

    def reason(self, needed_s=0.0):
        """Why a cell expected to take needed_s must be skipped, or None."""
        left = self.remaining()
        if left <= needed_s:
            need = f"~{needed_s:.0f} s needed, " if needed_s else ""
            return f"time budget: {need}{max(left, 0):.0f} s of {self.seconds:g} s left"
        return None


def _split_backends(suite, section, device, listed, isolate_compile):
    """-> (backends to run now, compile backends to run last in a child, {name: skip reason})."""
    now, later, skipped = [], [], {}
    for name, backend in BACKENDS.items():
        reason = suite.skip_reason(section, name, device, listed)
        if reason:
            skipped[name] = reason
        elif backend.compile_mode and isolate_compile:
            later.append(backend)
        else:
            now.append(backend)
    return now, later, skipped


def _forward(suite, device, rec, budget, isolate_compile):
    deferred = []
    for name in suite.forward_models:
        batches = suite.batches_for(name)
        now, later, skipped = _split_backends(suite, "forward", device, suite.forward_backends,
                                              isolate_compile)
        deferred += [(name, batches, b) for b in later]
        why = budget.reason()
        for backend in BACKENDS.values():
            reason = skipped.get(backend.name) or (why if backend in now else None)
            if reason:
                for batch in batches:
                    rec.add("forward", skipped_row(base_row(name, batch, backend), reason))
        if not why:
            for row in forward_model_rows(name, batches, now, device,
                                          suite.dtype_override(device), suite.forward_timing):
                rec.add("forward", row)
    return deferred


def _deferred_compile(deferred, suite, device, rec, budget):
    for name, batches, backend in deferred:
        why = budget.reason(needed_s=10)
        if why:
            rows = [skipped_row(base_row(name, b, backend), why) for b in batches]
        else:
            rows = forward_rows_isolated(name, batches, backend, device,
                                         suite.dtype_override(device), suite.forward_timing,
                                         budget.remaining())
        for row in rows:
            rec.add("forward", row)


def _train(suite, device, rec, budget):
    for name in suite.train_models:
        _, _, skipped = _split_backends(suite, "train", device, suite.train_backends, False)
        for backend in BACKENDS.values():
            reason = skipped.get(backend.name) or budget.reason()
            if reason:
                for batch in suite.train_batches:
                    rec.add("train", skipped_row(base_row(name, batch, backend), reason))
            else:
                for row in train_rows(name, suite.train_batches, [backend], device,
                                      suite.dtype_override(device), suite.train_timing):
                    rec.add("train", row)


def _sampling_reason(suite, run, guidance, backend, device, budget, per_step):
    reason = suite.skip_reason("sampling", backend.name, device, run.backends)
    if reason:
        return reason
    if guidance == "classifier" and backend.cuda_graph:
        return ("classifier guidance takes an autograd gradient every step, which a CUDA graph "
                "cannot hold (cuda_graph=True refuses a cond_fn)")
    # Estimate from a shorter run of the same cell: skip what cannot finish in time.
    runs = run.timing["warmup"] + run.timing["min_reps"]
    needed = per_step.get((guidance, backend.name), 0.0) * run.steps * runs
    return budget.reason(needed)


def _sampling(suite, device, rec, budget):
    if not suite.sampling_runs:
        return
    setup = SamplingSetup(suite.sampling_pair, device)
    per_step = {}
    for run in suite.sampling_runs:
        for guidance in GUIDANCE:
            for backend in BACKENDS.values():
                reason = _sampling_reason(suite, run, guidance, backend, device, budget, per_step)
                base = sampling_base_row(suite.sampling_pair, guidance, run.sampler, run.steps,
                                         suite.sampling_batch, backend)
                if reason:
                    rec.add("sampling", skipped_row(base, reason))
                    continue
                dtype = suite.dtype_override(device) or backend.dtype
                row = sampling_row(setup, guidance, run.sampler, run.steps, suite.sampling_batch,
                                   backend, dtype, run.timing)
                if row["status"] == "ok":
                    per_step[(guidance, backend.name)] = row["time_s"] / run.steps
                rec.add("sampling", row)


def run_suite(suite, device, rec, sections=("forward", "train", "sampling")):
    """Run the sections of `suite` on `device`, recording rows into `rec` (a Recorder). The
    compile cells of the forward grid run last, in children, with whatever budget is left."""
    budget = Budget(suite.time_budget_s)
    isolate_compile = device.type == "cuda"
    deferred = []
    if "forward" in sections:
        deferred = _forward(suite, device, rec, budget, isolate_compile)
    if "train" in sections:
        _train(suite, device, rec, budget)
    if "sampling" in sections:
        _sampling(suite, device, rec, budget)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the compile children get the whole GPU
    _deferred_compile(deferred, suite, device, rec, budget)
    return rec.result()
