"""Training diffusion models and noisy classifiers, on one process or on torchrun (DDP).

    fastguide train --task diffusion --arch digits_unet --data digits --p-uncond 0.1 ...
    torchrun --nproc_per_node 8 -m fastguide train ...

See docs/training.md for every option and the commands that trained the shipped models.
"""
from .data import (ArrayDataset, ImageFolderDataset, digits_dataset, npz_dataset, load_dataset,
                   uint8_to_float, float_to_uint8)
from .ema import EMA
from .checkpoint import save_atomic, load_training_state
from .trainer import TrainOptions, Trainer
from .arch import build_arch, arch_names
from .run import add_arguments, main

__all__ = ["ArrayDataset", "ImageFolderDataset", "digits_dataset", "npz_dataset", "load_dataset",
           "uint8_to_float", "float_to_uint8", "EMA", "save_atomic", "load_training_state",
           "TrainOptions", "Trainer", "build_arch", "arch_names", "add_arguments", "main"]
