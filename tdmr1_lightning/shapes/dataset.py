"""``ShapesDataset``: freshly drawn ``(image, prompt, metadata)`` triples for pretraining a teacher."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .prompts import enumerate_prompts, sample_prompt, scene_for
from .scenes import render
from .splits import HeldOut, _by_tag, split_prompts
from .world import World

# -------------------------------------------------------------------------------------------- dataset


class ShapesDataset(Dataset):
    """Freshly drawn ``(image uint8 (3, H, W), prompt, metadata)`` triples, for teacher pretraining.

    Item ``i`` depends only on ``(seed, i)``: its prompt is drawn (tags in equal shares) from
    ``records`` when given, else from the training prompts of the world's held-out split when
    ``held_out`` is given, else from the whole world (:func:`sample_prompt`); its scene is
    :func:`scene_for` the prompt (random colours avoid the held-out (colour, shape) pairs). ``metadata``
    is the GenEval record without ``prompt``. Use :func:`collate_shapes` with a DataLoader.
    """

    def __init__(
        self,
        world: World = World(),
        length: int = 1_000_000,
        seed: int = 0,
        records: Sequence[Mapping[str, Any]] | None = None,
        held_out: HeldOut | None = None,
    ) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.world = world
        self.length = int(length)
        self.seed = int(seed)
        self.held_out = held_out
        self.avoid = held_out.color_shape if held_out is not None else frozenset()
        if records is None and held_out is not None:
            records, _ = split_prompts(enumerate_prompts(world), held_out)
        self.pools: list[list[dict]] | None = None
        if records is not None:
            if not records:
                raise ValueError("ShapesDataset: records is empty")
            by_tag = _by_tag([{k: v for k, v in r.items()} for r in records], world.tags)
            self.pools = [p for p in by_tag.values() if p]

    def __len__(self) -> int:
        return self.length

    def record(self, index: int) -> dict[str, Any]:
        """The prompt record of item ``index`` (without rendering)."""
        return self._draw(index)[1]

    def _draw(self, index: int) -> tuple[random.Random, dict[str, Any]]:
        rng = random.Random(f"shapes-dataset:{self.seed}:{index}")
        if self.pools is None:
            tag = self.world.tags[index % len(self.world.tags)]
            record = sample_prompt(rng, self.world, tag)
        else:
            record = dict(rng.choice(self.pools[index % len(self.pools)]))
        return rng, record

    def __getitem__(self, index: int) -> tuple[Tensor, str, dict[str, Any]]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a ShapesDataset of length {self.length}")
        index %= self.length
        rng, record = self._draw(index)
        scene = scene_for(record, rng, self.world, avoid=self.avoid)
        meta = {k: v for k, v in record.items() if k != "prompt"}
        return render(scene, None, self.world), record["prompt"], meta


def collate_shapes(batch: Sequence[tuple[Tensor, str, dict]]) -> tuple[Tensor, list[str], list[dict]]:
    """``(images uint8 (B, 3, H, W), prompts, metadata)`` from ShapesDataset items."""
    images, prompts, metadata = zip(*batch) if batch else ((), (), ())
    return torch.stack(list(images)), list(prompts), list(metadata)
