"""The public sampling pipeline: checkpoints in, guided images out.

    ADMPipeline      from_checkpoint(...) then pipe(seeds=..., cfg_scale=..., sampler=...)
    GuidedSampler    one model + process + guidance -> x = sampler(seeds, labels)
    generate         seeds -> uint8 images over batches and torchrun ranks (resumable)
    resolve_diffusion / DiffusionSettings   which process a model is sampled with, and why
    load_model       a checkpoint, shipped model or preset, checked for its role
    OutputDir        the npz + PNG outputs of a run, written without clobbering anything
"""
from .settings import DiffusionSettings, resolve_diffusion, NOISE_SCHEDULES
from .models import LoadedModel, ModelSpecError, load_model
from .guided import GuidedSampler, OptionError, DISCRETE_SAMPLERS, sampler_names
from .batches import NonFiniteSamples, generate, labels_for
from .batch_cache import BatchCache, settings_key
from .output import OutputDir, save_grid, save_png, saturated_fraction
from .pipeline import ADMPipeline, PipelineOutput

__all__ = ["ADMPipeline", "PipelineOutput", "GuidedSampler", "OptionError", "DISCRETE_SAMPLERS",
           "sampler_names", "generate", "labels_for", "NonFiniteSamples", "DiffusionSettings",
           "resolve_diffusion", "NOISE_SCHEDULES", "LoadedModel", "ModelSpecError", "load_model",
           "BatchCache", "settings_key", "OutputDir", "save_grid", "save_png",
           "saturated_fraction"]
