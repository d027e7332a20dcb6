"""Graceful stops: SIGINT (Ctrl-C) or SIGTERM (torchrun, Slurm preemption, `kill`) during
training finishes the step in flight, writes a checkpoint, and ends the run; `--resume` then
continues exactly where it stopped. A second signal stops at once (the last checkpoint stands).

The flag is only read between steps, so the model, optimizer and EMA are never saved half
updated; under torchrun the ranks agree on it with one all-reduce per step, so that all of them
stop after the same step even when the signal reaches them at different moments.
"""
import signal
import threading

import torch
import torch.distributed as dist

__all__ = ["StopRequests"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.flag, self.signal, self._previous = False, None, {}

    def _handler(self, signum, frame):
        if self.flag:  # the second signal: the default behaviour
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
        self.flag, self.signal = True, signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers need the main thread
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}

    def requested(self):
        """Whether any rank has been asked to stop."""
        if not dist.is_initialized():
            return self.flag
        flag = torch.tensor([float(self.flag)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
