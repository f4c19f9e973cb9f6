"""Image grids to the module's logger (TensorBoard and any logger whose experiment has ``add_image``)."""

from __future__ import annotations

import math

import lightning as L
from torch import Tensor


def image_logger_ready(module: L.LightningModule) -> bool:
    """Whether ``module`` has a logger that takes images, on the process that should write them."""
    experiment = getattr(module.logger, "experiment", None)
    return experiment is not None and hasattr(experiment, "add_image") and module.trainer.is_global_zero


def log_image_grid(module: L.LightningModule, tag: str, images: Tensor, max_images: int = 16) -> None:
    """Log up to ``max_images`` ``uint8`` images ``(N, 3, H, W)`` as one square-ish grid at the current step."""
    if not image_logger_ready(module):
        return
    from torchvision.utils import make_grid

    images = images[:max_images].cpu()
    grid = make_grid(images, nrow=int(math.ceil(math.sqrt(len(images)))))
    module.logger.experiment.add_image(tag, grid, module.global_step)
