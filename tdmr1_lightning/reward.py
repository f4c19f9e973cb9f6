"""The reward contract: black-box scores of generated images (nothing here is differentiated).

A reward takes a batch of ``uint8`` images ``(N, 3, H, W)``, the ``N`` prompts and their per-prompt
metadata, and returns per-sample scores with a validity mask: a sample whose scoring failed is
masked out of the advantages rather than scored 0 (``../docs/architecture.md``).

Example::

    class Brightness(Reward):
        def score(self, images, prompts, metadata):
            return RewardOutput(scores=images.float().mean(dim=(1, 2, 3)) / 255)
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class RewardOutput:
    """What a reward returns for ``N`` samples."""

    scores: Tensor
    """``(N,)`` float scores; higher is better."""
    valid: Tensor | None = None
    """``(N,)`` bool, False where scoring failed; ``None`` means all valid."""
    details: dict[str, Any] = field(default_factory=dict)
    """Per-sample extras for logging (lists or tensors of length ``N``)."""


class Reward(ABC):
    """Base class of rewards. Subclasses implement :meth:`score`; calling the reward checks the contract.

    The base class owns what every reward needs: heavy models are loaded once, lazily, by
    :meth:`load` on the first call (so listing or configuring a reward costs nothing); :meth:`to`
    records the device and moves every ``torch.nn.Module`` attribute there; :meth:`validate` lets a
    reward refuse prompts up front, before any training starts. Calling the reward turns a wrong
    output shape into an error naming the reward, and masks non-finite scores (counted in
    ``details["non_finite"]``) so they never reach the advantages.
    """

    _device: torch.device = torch.device("cpu")
    _loaded: bool = False

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> Reward:
        """Use ``device`` from now on (moves the ``nn.Module`` attributes already loaded)."""
        self._device = torch.device(device)
        for key, value in vars(self).items():
            if isinstance(value, torch.nn.Module):
                setattr(self, key, value.to(self._device))
        return self

    def load(self) -> None:
        """Load heavy models onto :attr:`device`; called once, before the first :meth:`score`."""

    def validate(self, prompts: list[str], metadata: list[dict]) -> None:
        """Raise ``ValueError`` naming the first prompt this reward cannot score (called before training)."""

    @abstractmethod
    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        """Score ``uint8`` images ``(N, 3, H, W)`` generated for ``prompts`` (with ``metadata``)."""

    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> RewardOutput:
        n = images.shape[0]
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"reward {self.name}: expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if len(prompts) != n:
            raise ValueError(f"reward {self.name}: {n} images but {len(prompts)} prompts")
        metadata = metadata if metadata is not None else [{} for _ in range(n)]
        if not self._loaded:
            self.load()
            self._loaded = True
        out = self.score(images, prompts, metadata)
        scores = torch.as_tensor(out.scores).detach().float().cpu().reshape(-1) if out is not None else None
        if scores is None or scores.numel() != n:
            got = "None" if scores is None else tuple(torch.as_tensor(out.scores).shape)
            raise ValueError(f"reward {self.name}: returned scores of shape {got} for {n} images; expected ({n},)")
        valid = (
            torch.ones(n, dtype=torch.bool)
            if out.valid is None
            else torch.as_tensor(out.valid).bool().cpu().reshape(-1)
        )
        if valid.numel() != n:
            raise ValueError(f"reward {self.name}: returned a validity mask of {valid.numel()} entries for {n} images")
        finite = torch.isfinite(scores)
        if not finite.all():
            warnings.warn(f"reward {self.name}: {int((~finite).sum())} non-finite scores masked out", RuntimeWarning)
        valid = valid & finite
        return RewardOutput(
            scores=torch.where(valid, scores, torch.zeros_like(scores)),
            valid=valid,
            details={**out.details, "non_finite": int((~finite).sum())},
        )


class WeightedRewards:
    """Several rewards scored together, each with a weight and a label (a config's reward list).

    How the scores become advantages (a weighted sum of rewards, or a weighted sum of per-reward
    advantages) is the training module's choice; this only scores, validates and places them.
    """

    def __init__(self, rewards: list[tuple[str, Reward, float]]) -> None:
        if not rewards:
            raise ValueError("WeightedRewards needs at least one reward")
        labels = [label for label, _, _ in rewards]
        self.items = [
            (label if labels.count(label) == 1 else f"{label}_{i}", r, w) for i, (label, r, w) in enumerate(rewards)
        ]

    def to(self, device: str | torch.device) -> WeightedRewards:
        for _, reward, _ in self.items:
            if reward.device != torch.device(device):
                reward.to(device)
        return self

    def validate(self, prompts: list[str], metadata: list[dict]) -> None:
        for label, reward, _ in self.items:
            try:
                reward.validate(prompts, metadata)
            except ValueError as err:
                raise ValueError(f"reward {label!r}: {err}") from err

    def __call__(
        self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None
    ) -> dict[str, tuple[RewardOutput, float]]:
        """Each reward's output and weight, by label."""
        return {label: (reward(images, prompts, metadata), weight) for label, reward, weight in self.items}

    @staticmethod
    def weighted_sum(outputs: dict[str, tuple[RewardOutput, float]]) -> tuple[Tensor, Tensor]:
        """``sum_k w_k r_k`` and the samples valid for every reward."""
        scores = sum(weight * out.scores for out, weight in outputs.values())
        valid = torch.stack([out.valid for out, _ in outputs.values()]).all(0)
        return scores, valid
