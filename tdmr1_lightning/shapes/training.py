"""The shapes world as training parts: a data module of rendered scenes and its GenEval reward."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from tdmr1_rewards.geneval import GenEvalReward
from torch.utils.data import DataLoader, DistributedSampler

from ..data import ResumableLoader
from ..reward import Reward, RewardOutput
from .dataset import ShapesDataset, collate_shapes
from .detector import ShapesDetector
from .prompts import parse_prompt
from .splits import held_out_combinations
from .world import World


def _collate(batch) -> dict[str, Any]:
    images, prompts, metadata = collate_shapes(batch)
    return {"images": images, "prompts": prompts, "metadata": metadata}


class ShapesDataModule(L.LightningDataModule):
    """Freshly rendered scenes of the shapes world with their prompts (teacher pretraining).

    Prompts come from the world's training split: whole combinations held out for evaluation
    (``held_out_fraction``, ``held_out_seed``; the same as ``tdmr1 shapes prompts``)
    are never drawn.

    Args:
        world: Fields of :class:`~tdmr1_lightning.shapes.world.World` (empty: the default world).
        batch_size: Scenes per batch.
        steps_per_epoch: Batches per epoch, across all processes (item ``i``'s scene is a pure
            function of ``seed`` and ``i``; every epoch shows the same scenes in a new order).
        seed: Seed of the scenes and of their order (a function of the seed and the epoch, so a
            run resumed mid-epoch with ``--ckpt_path`` continues it exactly).
        held_out_fraction: Fraction of combinations held out (0: none).
        held_out_seed: Seed of the held-out split.
        held_out_split: What is held out besides counts, shape pairs and relations: ``bindings``
            ((colour, shape) pairs) or ``compositions`` (pairs of coloured objects in one prompt).
        held_out_count_partners: Shapes each count keeps in training (1 lets one count go with one
            shape alone).
        held_out_count_triples: Hold out (count, colour, shape) triples of counting prompts, every
            pair of them trained, instead of (count, shape) pairs.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        world: dict[str, Any] | None = None,
        batch_size: int = 64,
        steps_per_epoch: int = 1000,
        seed: int = 0,
        held_out_fraction: float = 0.25,
        held_out_seed: int = 0,
        held_out_split: Literal["bindings", "compositions"] = "bindings",
        held_out_count_partners: int = 1,
        held_out_count_triples: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or steps_per_epoch < 1:
            raise ValueError(f"batch_size and steps_per_epoch must be >= 1, got {batch_size}, {steps_per_epoch}")
        self.world = World(**(world or {}))
        held_out = (
            held_out_combinations(
                self.world,
                held_out_fraction,
                held_out_seed,
                held_out_split,
                held_out_count_partners,
                held_out_count_triples,
            )
            if held_out_fraction > 0
            else None
        )
        self.dataset = ShapesDataset(self.world, batch_size * steps_per_epoch, seed, held_out=held_out)
        self.batch_size, self.num_workers = batch_size, num_workers

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = DistributedSampler(self.dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.dataset.seed)
        # The generator only seeds the workers: loading draws nothing from the global random stream.
        return ResumableLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=_collate,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.dataset.seed),
        )


class ShapesGenEval(GenEvalReward):
    """GenEval scoring of the shapes world with its exact, non-learned detector (no model to load).

    Args:
        world: Fields of the World the images come from (empty: the default world).
        mode: ``soft`` (training score) or ``strict`` (the benchmark's ``correct``).
    """

    def __init__(self, world: dict[str, Any] | None = None, mode: Literal["soft", "strict"] = "soft") -> None:
        self.world = World(**(world or {}))
        super().__init__(detector=ShapesDetector(self.world), mode=mode)

    def validate(self, prompts: list[str], metadata: list[dict]) -> None:
        """GenEval's metadata checks, then every prompt must read as a prompt of this world
        (:func:`~tdmr1_lightning.shapes.prompts.parse_prompt`: the error names the unknown word)."""
        super().validate(prompts, metadata)
        for i, prompt in enumerate(prompts):
            try:
                parse_prompt(prompt, self.world)
            except ValueError as err:
                raise ValueError(f"prompt {i + 1} {prompt!r} is not a prompt of the shapes world: {err}") from None


class ShapesParsable(Reward):
    """1 when an image parses as a scene of the shapes world, else 0 (:meth:`ShapesDetector.parse`).

    A prompt-free image-quality measure for evaluation tables: the fraction of samples that are clean
    scenes (one to ``max_objects`` recognised shapes, no stray coloured blobs), so a reward-trained model
    that scores well with smeared or cluttered images shows it.

    Args:
        world: Fields of the World the images come from (empty: the default world).
        max_stray_pixels: Unrecognised coloured components up to this size are tolerated.
    """

    def __init__(self, world: dict[str, Any] | None = None, max_stray_pixels: int = 2) -> None:
        if max_stray_pixels < 0:
            raise ValueError(f"max_stray_pixels must be >= 0, got {max_stray_pixels}")
        self.detector = ShapesDetector(World(**(world or {})))
        self.max_stray_pixels = max_stray_pixels

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        flags = self.detector.parse(images, self.max_stray_pixels)
        return RewardOutput(scores=torch.tensor(flags, dtype=torch.float32), details={"parsable": flags})
