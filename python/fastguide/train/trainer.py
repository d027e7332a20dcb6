"""The training loop for diffusion models and noisy classifiers, on one process or on torchrun.

Reproducibility: the randomness of step s (which images, t, the noise, the CFG label drops) comes
from one generator seeded with (seed, s). Every rank draws the whole global batch from it and
keeps its own slice, so a run gives the same result on any number of ranks and microbatches
(up to float summation order), and a resumed run repeats exactly what an uninterrupted one does.

    loss (diffusion)   training_losses(...)["loss"] · importance weight, averaged over the batch
    loss (classifier)  cross-entropy of classifier(x_t, t); x_t = q_sample(x_0, t) when noised
                       (guided-diffusion's --noised), else the clean image at t = 0
    learning rate      lr · min(1, (s + 1)/warmup) · (1 − s/anneal) at step s (either factor 1
                       when its option is 0); the anneal is guided-diffusion's lr_anneal_steps

A run directory holds one run: a Trainer refuses a run_dir with an earlier run's files unless
resume (continue it) or overwrite (delete those files when training starts) is set.
"""
import contextlib
import dataclasses
import json
import math
import pathlib
import time
import warnings

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..diffusion import create_named_schedule_sampler, training_losses
from ..diffusion.timestep_sampler import TimestepSampler
from ..nn.base import input_checks
from ..nn.checkpoint import save_model
from . import distributed as dist_util
from .checkpoint import CHECKPOINT_NAME, load_training_state, save_atomic
from .ema import EMA
from .stop import StopRequests

__all__ = ["TrainOptions", "Trainer", "run_files"]


def run_files(run_dir):
    """The files of an earlier run in run_dir: its checkpoint, log and exported models."""
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        return []
    names = (CHECKPOINT_NAME, CHECKPOINT_NAME + ".tmp", "log.jsonl")
    exports = [p for p in run_dir.glob("*") if p.name.startswith(("model.", "ema_"))
               and p.name.endswith((".safetensors", ".json"))]
    return sorted([run_dir / n for n in names if (run_dir / n).exists()] + exports)


@dataclasses.dataclass
class TrainOptions:
    run_dir: str
    task: str = "diffusion"            # "diffusion" or "classifier"
    steps: int = 1000
    batch_size: int = 64               # global, over all ranks
    microbatch: int = 0                # per-rank forward size; 0 = the whole local batch
    lr: float = 1e-4
    lr_warmup_steps: int = 0           # linear warm-up from lr/warmup to lr
    lr_anneal_steps: int = 0           # guided-diffusion's: lr·(1 − step/anneal); 0 = constant
    weight_decay: float = 0.0
    ema_rates: tuple = (0.9999,)
    precision: str = "bf16"            # autocast dtype: bf16, fp16 (+ loss scaling) or fp32
    grad_clip: float = 0.0             # max gradient norm; 0 = no clipping
    p_uncond: float = 0.0              # CFG label dropout (to the model's null class)
    noised: bool = True                # classifier: train on x_t at random t
    low_res_size: int = 0              # super-resolution: condition on x_0 area-resized to this
    random_flip: bool = False          # mirror each image left-right with probability 1/2
    schedule_sampler: str = "uniform"  # or "loss-second-moment" (importance sampling)
    seed: int = 0
    log_every: int = 50
    save_every: int = 500
    resume: bool = False               # continue from run_dir/checkpoint.pt (which must exist)
    overwrite: bool = False            # start afresh in a run_dir that holds an earlier run
    progress: bool = True


def resolve_precision(precision, device):
    """bf16 autocast is the default everywhere. On a CPU without native bf16 arithmetic
    (AVX512-BF16 or AMX) it is emulated: the digits UNet's forward + backward measured 12x
    slower than fp32 on the 2-core AVX2 machine used here, so say so once."""
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be bf16, fp16 or fp32, got {precision!r}")
    if precision == "bf16" and device.type == "cpu" and not _cpu_has_bf16():
        warnings.warn("bf16 autocast on this CPU is emulated (no AVX512-BF16/AMX) and much "
                      "slower than fp32; pass --precision fp32 for CPU training", stacklevel=3)
    return precision


def _cpu_has_bf16():
    cpu = getattr(torch, "cpu", None)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in probes)


class Trainer:
    def __init__(self, model, dataset, diffusion, options, device="cpu", extra_info=None,
                 ema_init=None):
        """ema_init: a model of the same architecture whose weights start every EMA (default:
        the model's own)."""
        self.opts = o = options
        self.device = torch.device(device)
        self.model, self.dataset, self.diffusion = model.to(self.device), dataset, diffusion
        self.extra_info = dict(extra_info or {})
        self.world, self.rank = dist_util.world_size(), dist_util.rank()
        if o.task not in ("diffusion", "classifier"):
            raise ValueError(f"task must be 'diffusion' or 'classifier', got {o.task!r}")
        if o.batch_size % self.world:
            raise ValueError(f"batch_size {o.batch_size} is not divisible by {self.world} ranks")
        self.local_batch = o.batch_size // self.world
        self.microbatch = o.microbatch or self.local_batch
        if bool(o.low_res_size) != (getattr(model, "config", {}).get("kind") == "superres"):
            raise ValueError("low_res_size is for (and required by) super-resolution models")
        if o.p_uncond and getattr(model, "null_label", None) is None:
            raise ValueError("p_uncond > 0 needs a model with a null class (null_class=True)")
        self.precision = resolve_precision(o.precision, self.device)
        self.ddp = model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        self.scaler = (torch.amp.GradScaler(self.device.type) if self.precision == "fp16"
                       else None)
        self.ema = EMA(model, o.ema_rates)
        if ema_init is not None:
            self.ema.copy_from(ema_init)
        self.sampler = create_named_schedule_sampler(o.schedule_sampler, diffusion)
        self.loss_aware = (type(self.sampler).update_with_all_losses
                           is not TimestepSampler.update_with_all_losses)
        self.step, self.cpu_seconds = 0, 0.0
        self.run_dir = pathlib.Path(o.run_dir)
        self.log_window = {}
        self._check_run_dir()
        if o.resume:
            self.load(self.run_dir / CHECKPOINT_NAME)

    def _check_run_dir(self):
        o, earlier = self.opts, run_files(self.run_dir)
        if o.resume and o.overwrite:
            raise ValueError("resume and overwrite contradict each other; choose one")
        if o.resume and not (self.run_dir / CHECKPOINT_NAME).exists():
            raise FileNotFoundError(f"cannot resume: {self.run_dir / CHECKPOINT_NAME} does not "
                                    "exist")
        if earlier and not (o.resume or o.overwrite):
            raise FileExistsError(
                f"{self.run_dir} holds an earlier run ({', '.join(p.name for p in earlier[:4])}"
                f"{', ...' if len(earlier) > 4 else ''}); resume it, or overwrite it to start "
                "afresh")

    # ---- one step ----------------------------------------------------------------------------

    def batch(self, step):
        """This rank's slice of step's global batch: x0, y, t, importance weights, noise."""
        o, n = self.opts, self.opts.batch_size
        g = torch.Generator().manual_seed(o.seed * 1_000_003 + step)
        indices = torch.randint(len(self.dataset), (n,), generator=g)
        if o.task == "classifier" and not o.noised:
            t, weights = torch.zeros(n, dtype=torch.long), torch.ones(n)
        else:
            t, weights = self.sampler.sample(n, "cpu", generator=g)
        x0, y = self.dataset.get(indices)
        noise = torch.randn(x0.shape, generator=g)
        drop = torch.rand(n, generator=g) < o.p_uncond
        if y is not None and o.p_uncond:
            y = torch.where(drop, torch.full_like(y, self.model.null_label), y)
        if y is not None:  # checked here, on the host, so the model need not read y back
            self._check_labels(y)
        if o.random_flip:  # drawn last, so that runs without flips keep their batches
            flip = torch.rand(n, generator=g) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        part = slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)
        put = lambda v: None if v is None else v[part].to(self.device)  # noqa: E731
        return put(x0), put(y), put(t), put(weights), put(noise)

    def _check_labels(self, y):
        cfg = getattr(self.model, "config", {})
        rows = (cfg.get("out_channels") if cfg.get("kind") == "classifier"
                else (cfg.get("num_classes") or 0) + int(bool(cfg.get("null_class"))))
        if rows and bool(((y < 0) | (y >= rows)).any()):
            raise ValueError(f"the data set has labels outside 0..{rows - 1} (min {int(y.min())}, "
                             f"max {int(y.max())}), which the model cannot take")

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def losses(self, x0, y, t, noise):
        """Per-sample loss terms of one microbatch."""
        if self.opts.task == "diffusion":
            kwargs = {} if y is None else {"y": y}
            if self.opts.low_res_size:  # guided-diffusion's super_res_train: an area resize
                kwargs["low_res"] = F.interpolate(x0, size=(self.opts.low_res_size,) * 2,
                                                  mode="area")
            return training_losses(self.diffusion, self.ddp, x0, t, kwargs, noise)
        if y is None:
            raise ValueError("classifier training needs labelled data")
        x = self.diffusion.q_sample(x0, t, noise) if self.opts.noised else x0
        logits = self.ddp(x, self.diffusion.model_timesteps(t))
        return {"loss": F.cross_entropy(logits.float(), y, reduction="none"),
                "accuracy": (logits.argmax(-1) == y).float()}

    def learning_rate(self, step):
        """lr at step (0-based): linear warm-up, then guided-diffusion's linear anneal."""
        o, lr = self.opts, self.opts.lr
        if o.lr_warmup_steps:
            lr *= min(1.0, (step + 1) / o.lr_warmup_steps)
        if o.lr_anneal_steps:
            lr *= 1.0 - step / o.lr_anneal_steps
        return lr

    def backward(self, x0, y, t, weights, noise):
        """Gradients of the local batch, one microbatch at a time, without a host sync: the
        labels were checked on the host (batch()), the log sums stay on the device. Returns the
        per-sample losses (for a loss-aware timestep sampler)."""
        losses = []
        with input_checks(False):
            for lo in range(0, self.local_batch, self.microbatch):
                part = slice(lo, lo + self.microbatch)
                last = lo + self.microbatch >= self.local_batch
                sync = (contextlib.nullcontext() if last or self.ddp is self.model
                        else self.ddp.no_sync())
                with sync:
                    with self.autocast():
                        terms = self.losses(x0[part], None if y is None else y[part], t[part],
                                            noise[part])
                    loss = (terms["loss"] * weights[part]).sum() / self.local_batch
                    (self.scaler.scale(loss) if self.scaler else loss).backward()
                losses.append(terms["loss"].detach())
                self.record(t[part], terms)
        return torch.cat(losses)

    def train_step(self):
        x0, y, t, weights, noise = self.batch(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.backward(x0, y, t, weights, noise)
        # Only a loss-aware sampler needs the losses: for the uniform one, gathering them would
        # be a host sync (and three all-gathers under DDP) for nothing. Once per step is enough:
        # every t of this step was drawn before any update.
        if self.loss_aware:
            self.sampler.update_with_local_losses(t, losses)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        clip = self.opts.grad_clip if self.opts.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if self.scaler:
            self.scaler.step(self.optimizer)  # skipped on inf/nan gradients
            self.scaler.update()
        else:
            self.optimizer.step()
        if torch.isfinite(grad_norm):  # an fp16 overflow skipped the step: skip the EMA too
            self.ema.update(self.model)
        self.record(None, {"grad_norm": grad_norm.reshape(1)})
        self.step += 1

    # ---- logging -----------------------------------------------------------------------------

    def record(self, t, terms):
        """Accumulate means of each term, and of each term per timestep quartile (q0 = least
        noise), like guided-diffusion's log_loss_dict. The sums stay on the device (no host
        sync per step): per term a [2, 5] tensor of (sum, count) for quartiles 0-3 and all."""
        quartile = None
        if t is not None and (self.opts.task == "diffusion" or self.opts.noised):
            quartile = (t * 4 // self.diffusion.num_timesteps).clamp(max=3)
        for name, values in terms.items():
            values = values.detach().double().reshape(-1)
            acc = self.log_window.setdefault(name, values.new_zeros(2, 5))
            acc[0, 4] += values.sum()
            acc[1, 4] += values.numel()
            if quartile is not None:
                acc[0, :4].index_add_(0, quartile, values)
                acc[1, :4].index_add_(0, quartile, torch.ones_like(values))

    def flush_log(self):
        """One row of means over the window and over every rank's share of the batch."""
        names = sorted(self.log_window)  # the same terms on every rank
        row = {}
        if names:
            sums = torch.stack([self.log_window[n] for n in names])
            if self.world > 1:
                torch.distributed.all_reduce(sums)
            for name, (total, count) in zip(names, sums.cpu().tolist()):
                row[name] = total[4] / count[4]
                row.update({f"{name}_q{q}": total[q] / count[q] for q in range(4) if count[q]})
        row = dict(sorted(row.items()))
        row.update(step=self.step, lr=self.learning_rate(self.step - 1))
        if self.scaler:
            row["loss_scale"] = float(self.scaler.get_scale())
        self.log_window = {}
        if dist_util.is_main():
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        return row

    # ---- checkpoints ---------------------------------------------------------------------------

    def state_dict(self):
        return {"step": self.step, "cpu_seconds": self.cpu_seconds,
                "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else {},
                "sampler": _sampler_state(self.sampler),
                "rng": _rng_state(self.device),
                "options": json.dumps(dataclasses.asdict(self.opts), sort_keys=True)}

    def load(self, path):
        state = load_training_state(path)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        for name, value in state["sampler"].items():
            getattr(self.sampler, name).copy_(value)
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step, self.cpu_seconds = int(state["step"]), float(state["cpu_seconds"])
        _warn_changed_options(json.loads(state["options"]), dataclasses.asdict(self.opts))

    def save(self):
        """Checkpoint (atomically) and export the model and its EMAs with save_model (rank 0)."""
        if dist_util.is_main():
            save_atomic(self.state_dict(), self.run_dir / CHECKPOINT_NAME)
            self.export()
        dist_util.barrier()

    def export(self):
        info = dict(self.extra_info, task=self.opts.task, step=self.step,
                    cpu_seconds=round(self.cpu_seconds, 1))
        models = {"model": self.model}
        models.update({f"ema_{r}": self.ema.averaged_model(self.model, r) for r in self.ema.rates})
        for name, model in models.items():
            path = save_model(model, self.run_dir / f"{name}.safetensors")
            path.with_suffix(".train.json").write_text(json.dumps(info, indent=2) + "\n")

    # ---- the loop ----------------------------------------------------------------------------

    def run(self):
        """Train to opts.steps, or until SIGINT/SIGTERM (then checkpoint and set
        self.stopped_by to the signal's name). Returns the last logged row."""
        o = self.opts
        if o.overwrite and not o.resume and dist_util.is_main():
            for path in run_files(self.run_dir):
                path.unlink()
        dist_util.barrier()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=o.steps, initial=self.step, disable=not (o.progress and dist_util.is_main()),
                   desc=f"train {o.task}")
        self.model.train()
        last_row, self.stopped_by = None, None
        with StopRequests(self.device) as stop:
            while self.step < o.steps:
                start = time.process_time()
                self.train_step()
                self.cpu_seconds += time.process_time() - start
                bar.update(1)
                stopping = stop.requested()
                if self.step % o.log_every == 0 or self.step == o.steps or stopping:
                    last_row = self.flush_log()
                    bar.set_postfix(loss=f"{last_row['loss']:.4f}")
                if self.step % o.save_every == 0 or self.step == o.steps or stopping:
                    self.save()
                if stopping:
                    self.stopped_by = stop.signal or "another rank"
                    break
        bar.close()
        self.model.eval()
        return last_row


def _rng_state(device):
    """The global generators (dropout); the batches themselves come from per-step generators."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


# Options that may change between a run and its resumption without changing what is trained.
_RESUMABLE = {"steps", "resume", "overwrite", "progress", "log_every", "save_every", "run_dir"}


def _warn_changed_options(saved, current):
    for f in dataclasses.fields(TrainOptions):  # options that older checkpoints predate
        if f.name not in saved and f.default is not dataclasses.MISSING:
            saved[f.name] = _jsonable(f.default)
    changed = {k: (saved.get(k), v) for k, v in current.items()
               if k not in _RESUMABLE and saved.get(k) != _jsonable(v)}
    if changed and dist_util.is_main():
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
        warnings.warn(f"resuming with options that differ from the checkpoint's: {detail}",
                      stacklevel=3)


def _jsonable(value):
    return json.loads(json.dumps(value))


def _sampler_state(sampler):
    """The importance sampler's loss history (empty for the uniform sampler)."""
    return {name: getattr(sampler, name).clone() for name in ("loss_history", "loss_counts")
            if hasattr(sampler, name)}
