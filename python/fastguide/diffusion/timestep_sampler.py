"""Timestep samplers for training: which t to train on, and the importance weight 1/(T·p_t)
that keeps the loss estimate unbiased.

UniformSampler: p_t = 1/T. LossSecondMomentResampler (improved DDPM §3.3): p_t ∝ √E[L_t²], from a
history of recent losses at each t, mixed with a little uniform mass; uniform until every t has
a full history. It lowers the variance of the L_vb gradient.
"""
import torch
import torch.distributed as dist

__all__ = ["UniformSampler", "LossSecondMomentResampler", "create_named_schedule_sampler"]


class TimestepSampler:
    def weights(self):
        """Unnormalised sampling weights, a float64 [T] tensor."""
        raise NotImplementedError

    def sample(self, batch_size, device, generator=None):
        """(timesteps [B] long, importance weights [B] float32) on `device`."""
        w = self.weights()
        p = w / w.sum()
        indices = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (len(p) * p[indices])
        return indices.to(device), weights.to(device=device, dtype=torch.float32)

    def update_with_local_losses(self, local_ts, local_losses):
        """Record this rank's losses; with torch.distributed running, gather all ranks' first."""
        local_ts = local_ts.detach().reshape(-1)
        local_losses = local_losses.detach().reshape(-1).float()
        if dist.is_available() and dist.is_initialized():
            sizes = [torch.zeros(1, dtype=torch.long, device=local_ts.device)
                     for _ in range(dist.get_world_size())]
            dist.all_gather(sizes, torch.tensor([len(local_ts)], device=local_ts.device))
            max_size = int(max(s.item() for s in sizes))
            padded_ts = torch.zeros(max_size, dtype=local_ts.dtype, device=local_ts.device)
            padded_losses = torch.zeros(max_size, dtype=local_losses.dtype, device=local_ts.device)
            padded_ts[:len(local_ts)], padded_losses[:len(local_ts)] = local_ts, local_losses
            all_ts = [torch.zeros_like(padded_ts) for _ in sizes]
            all_losses = [torch.zeros_like(padded_losses) for _ in sizes]
            dist.all_gather(all_ts, padded_ts)
            dist.all_gather(all_losses, padded_losses)
            local_ts = torch.cat([t[:int(n.item())] for t, n in zip(all_ts, sizes)])
            local_losses = torch.cat([l[:int(n.item())] for l, n in zip(all_losses, sizes)])
        self.update_with_all_losses(local_ts.cpu().tolist(), local_losses.cpu().tolist())

    def update_with_all_losses(self, ts, losses):
        pass


class UniformSampler(TimestepSampler):
    def __init__(self, diffusion):
        self.num_timesteps = diffusion.num_timesteps

    def weights(self):
        return torch.ones(self.num_timesteps, dtype=torch.float64)


class LossSecondMomentResampler(TimestepSampler):
    def __init__(self, diffusion, history_per_term=10, uniform_prob=0.001):
        self.num_timesteps = diffusion.num_timesteps
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self.loss_history = torch.zeros(self.num_timesteps, history_per_term, dtype=torch.float64)
        self.loss_counts = torch.zeros(self.num_timesteps, dtype=torch.long)

    def warmed_up(self):
        return bool((self.loss_counts == self.history_per_term).all())

    def weights(self):
        if not self.warmed_up():
            return torch.ones(self.num_timesteps, dtype=torch.float64)
        w = (self.loss_history ** 2).mean(dim=-1).sqrt()
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def update_with_all_losses(self, ts, losses):
        for t, loss in zip(ts, losses):
            t = int(t)
            if self.loss_counts[t] == self.history_per_term:
                # Full: drop the oldest loss (a FIFO of the last history_per_term values).
                self.loss_history[t, :-1] = self.loss_history[t, 1:].clone()
                self.loss_history[t, -1] = float(loss)
            else:
                self.loss_history[t, self.loss_counts[t]] = float(loss)
                self.loss_counts[t] += 1


def create_named_schedule_sampler(name, diffusion):
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    raise ValueError(f"unknown schedule sampler {name!r}; "
                     "expected 'uniform' or 'loss-second-moment'")
