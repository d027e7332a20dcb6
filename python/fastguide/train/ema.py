"""Exponential moving averages of a model's parameters at several rates:
    θ_ema ← rate·θ_ema + (1 − rate)·θ   after every optimizer step.
Shadows are float32 whatever the model's dtype, so slow rates do not round away small updates."""
import copy

import torch

__all__ = ["EMA"]


class EMA:
    def __init__(self, model, rates):
        self.rates = [float(r) for r in rates]
        for r in self.rates:
            if not 0.0 <= r < 1.0:
                raise ValueError(f"EMA rates must be in [0, 1), got {r}")
        self.names = [n for n, _ in model.named_parameters()]
        self.shadows = {r: [p.detach().float().clone() for p in model.parameters()]
                        for r in self.rates}

    @torch.no_grad()
    def copy_from(self, model):
        """Every shadow := model's parameters (a model of the same architecture, e.g. the EMA
        weights a fine-tuned checkpoint was released with)."""
        if not self.shadows:
            return
        params = dict(model.named_parameters())
        shapes = [p.shape for p in next(iter(self.shadows.values()), [])]
        if list(params) != self.names or [params[n].shape for n in self.names] != shapes:
            raise ValueError("the EMA's initial model does not match the trained model's "
                             "parameters (names or shapes differ)")
        for shadow in self.shadows.values():
            for s, name in zip(shadow, self.names):
                s.copy_(params[name].detach().float())

    @torch.no_grad()
    def update(self, model):
        params = [p.detach().float() for p in model.parameters()]
        for r, shadow in self.shadows.items():
            torch._foreach_lerp_(shadow, params, 1.0 - r)  # s + (1 − r)(p − s) = r·s + (1 − r)·p

    def state_dict(self):
        return {str(r): dict(zip(self.names, s)) for r, s in self.shadows.items()}

    def load_state_dict(self, state):
        for r in self.rates:
            saved = state[str(r)]
            for s, name in zip(self.shadows[r], self.names):
                s.copy_(saved[name])

    def averaged_model(self, model, rate):
        """A copy of model holding the rate's averaged parameters (in the model's dtypes)."""
        averaged = copy.deepcopy(model)
        with torch.no_grad():
            for p, s in zip(averaged.parameters(), self.shadows[float(rate)]):
                p.copy_(s)
        return averaged
