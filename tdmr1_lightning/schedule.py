"""Rectified-flow time maths shared by the sampler and the losses (docs/architecture.md).

Conventions: ``x_s = (1 - s) * x0 + s * eps`` with noise level ``s`` in [0, 1]; the network sees
``t = 1000 * s`` and predicts the velocity ``v = eps - x0``.
"""

from __future__ import annotations

import torch
from torch import Tensor

TIMESTEP_SCALE = 1000.0


def _as_level(s: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast a scalar or per-sample noise level against a batch ``like`` (N, ...)."""
    s = torch.as_tensor(s, dtype=like.dtype, device=like.device)
    return s.reshape(-1, *([1] * (like.dim() - 1))) if s.dim() > 0 else s


def time_shift(u: Tensor | float, shift: float) -> Tensor | float:
    """``S(u) = k u / (1 + (k - 1) u)``: moves levels towards the noisy end for ``k > 1``."""
    return shift * u / (1 + (shift - 1) * u)


def inverse_time_shift(s: Tensor | float, shift: float) -> Tensor | float:
    """The inverse of :func:`time_shift`: ``u = s / (k - (k - 1) s)``."""
    return s / (shift - (shift - 1) * s)


def check_schedule(num_steps: int, shift: float) -> None:
    """Raise a ValueError naming the argument when K or the shift is out of range."""
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps (K) must be an integer >= 1, got {num_steps!r}")
    if not (isinstance(shift, (int, float)) and 0 < float(shift) < float("inf")):
        raise ValueError(f"shift (k) must be a finite number > 0, got {shift!r}")


def step_boundaries(num_steps: int, shift: float) -> list[float]:
    """Levels ``s_j = S(1 - j / K)`` for ``j = 0..K``: from 1 (pure noise) down to 0 (image).

    With ``K = 4, k = 3`` these are t = 1000, 900, 750, 500, 0.
    """
    check_schedule(num_steps, shift)
    return [float(time_shift(1.0 - j / num_steps, shift)) for j in range(num_steps + 1)]


def x0_from_velocity(x: Tensor, s: Tensor | float, v: Tensor) -> Tensor:
    """Clean-image prediction ``x0_hat = x - s v``."""
    return x - _as_level(s, x) * v


def eps_from_velocity(x: Tensor, s: Tensor | float, v: Tensor) -> Tensor:
    """Noise prediction ``eps_hat = x + (1 - s) v``."""
    return x + (1 - _as_level(s, x)) * v


def euler_step(x: Tensor, s: Tensor | float, s_next: Tensor | float, v: Tensor) -> Tensor:
    """One Euler (= DDIM for rectified flow) step ``x' = x - (s - s') v``."""
    return x - (_as_level(s, x) - _as_level(s_next, x)) * v


def forward_kernel(s_from: Tensor | float, s: Tensor | float) -> tuple[Tensor, Tensor]:
    """Coefficients ``(a, b)`` of the exact marginal kernel ``x_s = a x_n + b xi`` from ``s_n < s``.

    ``a = (1 - s) / (1 - s_n)``, ``b = sqrt(s^2 - (a s_n)^2)``.
    """
    s_from = torch.as_tensor(s_from, dtype=torch.float64)
    s = torch.as_tensor(s, dtype=torch.float64)
    a = (1 - s) / (1 - s_from)
    b = torch.sqrt((s**2 - (a * s_from) ** 2).clamp_min(0))
    return a, b


def renoise(x_from: Tensor, s_from: Tensor | float, s: Tensor | float, xi: Tensor) -> Tensor:
    """Move ``x_from`` at level ``s_from`` to the higher level ``s`` with noise ``xi``."""
    a, b = forward_kernel(s_from, s)
    return _as_level(a.to(x_from.dtype), x_from) * x_from + _as_level(b.to(x_from.dtype), x_from) * xi


def sample_level(lower: float, shift: float, generator: torch.Generator | None = None, upper: float = 1.0) -> float:
    """Draw ``s = S(u)`` with ``u ~ U[lower, upper]`` (one scalar shared by the whole batch)."""
    lower = min(max(float(lower), 0.0), upper)
    u = lower + (upper - lower) * torch.rand((), generator=generator, dtype=torch.float64).item()
    return float(time_shift(u, shift))


def sample_query_level(above: float, shift: float, margin: float, generator: torch.Generator | None = None) -> float:
    """A query level above ``above``: ``s = S(u)``, ``u ~ U[S^-1(above) + margin, 1]`` (sections 5, 8.3).

    The margin keeps ``s`` away from ``above``, where the forward kernel's noise ``b`` vanishes.
    """
    return sample_level(float(inverse_time_shift(above, shift)) + margin, shift, generator)
