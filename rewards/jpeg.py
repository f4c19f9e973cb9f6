"""JPEG compressibility: a cheap reward with no model, for smoke tests and the tiny config."""

from __future__ import annotations

import torch
from torch import Tensor

from tdmr1_lightning.reward import Reward, RewardOutput


class JPEGCompressibility(Reward):
    """Smaller JPEG files score higher: ``-(size in kB)`` at the given quality (a cheap smoke-test reward).

    Args:
        quality: JPEG quality used to measure the size.
    """

    def __init__(self, quality: int = 95) -> None:
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be in [1, 100], got {quality}")
        self.quality = quality

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        from torchvision.io import encode_jpeg

        encoded = encode_jpeg(list(images.cpu()), quality=self.quality)
        sizes = torch.tensor([e.numel() / 1000.0 for e in encoded])
        return RewardOutput(scores=-sizes, details={"jpeg_kb": sizes.tolist()})
