"""The deterministic sampler (docs/architecture.md): training rollouts, evaluation and a teacher's samples alike."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .schedule import euler_step

VelocityFn = Callable[[Tensor, float], Tensor]
"""``v = f(x, s)``: a network's velocity at the batch ``x`` and the scalar level ``s``."""


@torch.no_grad()
def sample(velocity: VelocityFn, noise: Tensor, boundaries: list[float]) -> Tensor:
    """The sample ``x_K``: Euler steps over ``boundaries`` from ``noise``, keeping only the current state
    (a many-step teacher would otherwise hold a latent a step for every sample)."""
    x = noise
    for s, s_next in zip(boundaries[:-1], boundaries[1:]):
        x = euler_step(x, s, s_next, velocity(x, s))
    return x


@torch.no_grad()
def sample_trajectory(velocity: VelocityFn, noise: Tensor, boundaries: list[float]) -> Tensor:
    """Euler steps over ``boundaries`` (``s_0 = 1 > ... > s_K = 0``) starting from ``noise``.

    Returns the whole trajectory ``(K + 1, N, ...)``: ``[x_0 = noise, x_1, ..., x_K]``; ``x_K`` is the
    sample. The losses rebuild the generator's step with the same first-order rule, so the stored
    states are exactly what they assume.
    """
    trajectory = noise.new_empty((len(boundaries), *noise.shape))
    trajectory[0] = x = noise
    for j, (s, s_next) in enumerate(zip(boundaries[:-1], boundaries[1:])):
        x = euler_step(x, s, s_next, velocity(x, s))
        trajectory[j + 1] = x
    return trajectory
