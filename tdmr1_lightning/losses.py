"""The TDM-R1 losses as pure functions of tensors (docs/architecture.md, "Equations and their code").

Every function takes predictions that were already computed by the networks, so each can be
tested on small tensors. Shapes: a batch is ``(N, ...)``; per-sample quantities are ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .schedule import forward_kernel


def _per_sample_mean(x: Tensor) -> Tensor:
    return x.flatten(1).mean(1)


GroupSum = Callable[[Tensor, Tensor], Tensor]
"""``(values, group_index) -> per-sample sum of values over the sample's group``."""


def sum_over_group(values: Tensor, group_index: Tensor) -> Tensor:
    """Per sample, the sum of ``values`` over the members of its group in this batch."""
    _, group = torch.unique(group_index, return_inverse=True)
    sums = torch.zeros(int(group.max()) + 1 if group.numel() else 0, dtype=values.dtype, device=values.device)
    return sums.index_add_(0, group, values)[group]


def shifted_mse(x: Tensor, direction: Tensor) -> Tensor:
    """Per-sample ``mean || x - sg(x + d) ||^2``: its gradient moves ``x`` along ``d`` (``-2 d / numel``)."""
    x = x.float()
    return _per_sample_mean((x - (x + direction.float()).detach()) ** 2)


# --------------------------------------------------------------------------------------------
# Advantages (section 4.3)
# --------------------------------------------------------------------------------------------


def reward_std(rewards: Tensor, valid: Tensor) -> Tensor:
    """Standard deviation of the valid rewards (pass rewards gathered from all processes)."""
    r = rewards[valid.bool()].double()
    if r.numel() < 2:
        return torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    return r.std(unbiased=False).to(rewards.dtype)


def group_advantages(
    rewards: Tensor,
    valid: Tensor,
    group_index: Tensor,
    std: Tensor | None = None,
    clip: float = 5.0,
    eps: float = 1e-4,
    binarize: bool = False,
) -> Tensor:
    """GRPO advantages ``A_i = clip((r_i - mean_group r) / (std + eps), -clip, clip)``.

    Args:
        rewards: ``(N,)`` scores.
        valid: ``(N,)`` bool; invalid samples (a failed reward) get advantage 0 and are left out of
            group means and of the std.
        group_index: ``(N,)`` integers, equal for samples of one prompt group.
        std: the scale, usually :func:`reward_std` over the rewards of all processes (the paper's
            global std); ``None`` uses each group's own std.
        clip: the advantage clip.
        eps: added to the std.
        binarize: use ``sign(A) - mean_group(sign(A))`` (for like / dislike rewards), with ``sign(0) = +1``;
            the mean is over the valid members of each group.
    """
    valid = valid.bool()
    r = torch.where(valid, rewards.double(), torch.zeros_like(rewards, dtype=torch.float64))
    _, group = torch.unique(group_index, return_inverse=True)
    n_groups = int(group.max()) + 1 if group.numel() else 0
    count = torch.zeros(n_groups, dtype=torch.float64, device=r.device).index_add_(0, group, valid.double())
    total = torch.zeros_like(count).index_add_(0, group, r)
    mean = total / count.clamp_min(1)
    centred = r - mean[group]
    if std is None:
        sq = torch.zeros_like(count).index_add_(0, group, torch.where(valid, centred**2, 0.0))
        scale = (sq / count.clamp_min(1)).sqrt()[group]
    else:
        scale = torch.as_tensor(std, dtype=torch.float64, device=r.device)
    adv = (centred / (scale + eps)).clamp(-clip, clip)
    adv = torch.where(valid, adv, torch.zeros_like(adv))
    if binarize:
        # sign(0) counts as +1 and the centring is per group, as the reference's ``grpo_bi`` (section 8.4)
        sign = torch.where(valid, torch.where(adv >= 0, 1.0, -1.0).to(adv.dtype), torch.zeros_like(adv))
        sign_mean = torch.zeros_like(count).index_add_(0, group, sign) / count.clamp_min(1)
        adv = torch.where(valid, sign - sign_mean[group], torch.zeros_like(sign))
    return adv.to(rewards.dtype)


# --------------------------------------------------------------------------------------------
# 5.1 Fake score
# --------------------------------------------------------------------------------------------


def fake_score_loss(
    v_fake: Tensor, x_s: Tensor, x0_hat: Tensor, s: float, v_teacher: Tensor, teacher_weight: float = 0.02
) -> Tensor:
    """``|| (x_s - x0_hat) / s - F ||^2 + teacher_weight * || sg(T) - F ||^2`` (mean over the batch).

    ``(x_s - x0_hat) / s`` is the velocity whose clean point is the generator's ``x0_hat``.
    """
    target = ((x_s - x0_hat) / s).detach().float()
    v_fake = v_fake.float()
    dsm = _per_sample_mean((target - v_fake) ** 2)
    anchor = _per_sample_mean((v_teacher.detach().float() - v_fake) ** 2)
    return (dsm + teacher_weight * anchor).mean()


# --------------------------------------------------------------------------------------------
# 5.2 Surrogate reward (DGPO)
# --------------------------------------------------------------------------------------------


def surrogate_target_velocity(x_n: Tensor, xi: Tensor, s_n: float, s: float) -> Tensor:
    """``v* = ((s / b) xi - x_s) / (1 - s)`` for ``x_s = a x_n + b xi``: the kernel's conditional score as a velocity.

    Computed in the equal form ``(s + a s_n^2 / (1 - s_n)) xi / b - x_n / (1 - s_n)`` (the reference
    script's), which has no ``1 / (1 - s)``: it stays exact as ``s`` approaches 1, where the first form
    subtracts two large, nearly equal terms.
    """
    a, b = (float(c) for c in forward_kernel(s_n, s))
    return ((s + a * s_n**2 / (1 - s_n)) / b) * xi - x_n / (1 - s_n)


@dataclass
class SurrogateLossOutput:
    """The DGPO loss and what it logs."""

    loss: Tensor
    """The scalar to backpropagate into the surrogate."""
    l: Tensor
    """``(N,)`` per-sample denoising losses of the surrogate (before any detaching)."""
    l_ref: Tensor
    """``(N,)`` per-sample losses of the reference."""
    implied_reward: Tensor
    """``(N,)`` ``beta * (l_ref - l)``, the surrogate's implied reward of each sample."""
    group_weight: Tensor
    """``(N,)`` ``w_g`` of each sample's group."""
    ppo_clipped: Tensor
    """``(N,)`` bool, samples detached by the PPO clip."""
    trust_clipped: Tensor
    """``(N,)`` bool, samples detached by the trust clip."""
    kl: Tensor
    """Scalar ``mean || v_R - v_T ||^2``."""


def surrogate_loss(
    v_surrogate: Tensor,
    v_reference: Tensor,
    v_old: Tensor,
    v_teacher: Tensor,
    v_target: Tensor,
    advantages: Tensor,
    group_index: Tensor,
    beta: float,
    clip_range: float = 1e-3,
    trust_threshold: float = 0.05,
    lambda_kl: float = 1e-3,
    step_weight: float = 1.0,
    group_sum: GroupSum = sum_over_group,
) -> SurrogateLossOutput:
    """DGPO: the advantage-weighted denoising loss of the surrogate with both clips and the group weight.

    ``L_R = step_weight * [ mean_i(w_g(i) A_i l_i) + lambda_kl * mean || v_R - sg(v_T) ||^2 ]`` with
    ``l_i = mean || v* - v_R ||^2``; ``step_weight`` is ``(j' + 1) / K``. ``S_g`` sums over a group's
    members and divides by their count ``G``, both through ``group_sum``: over this batch by default
    (it must hold whole groups), across processes when they share groups (section 8.5).
    """
    v_r = v_surrogate.float()
    v_target = v_target.detach().float()
    adv = advantages.detach().float()
    l = _per_sample_mean((v_target - v_r) ** 2)
    with torch.no_grad():
        l_ref = _per_sample_mean((v_target - v_reference.float()) ** 2)
        l_old = _per_sample_mean((v_target - v_old.float()) ** 2)
        rho = torch.exp(l_old - l)
        ppo = ((adv > 0) & (rho > 1 + clip_range)) | ((adv < 0) & (rho < 1 - clip_range))
        kl_value = _per_sample_mean((v_r - v_teacher.float()) ** 2).mean()
        ref_ratio = torch.exp(l_ref - l)
        moved = ((adv > 0) & (ref_ratio > 1)) | ((adv < 0) & (ref_ratio < 1))
        trust = moved & (kl_value > trust_threshold)
        score = group_sum(adv * beta * (l - l_ref), group_index) / group_sum(torch.ones_like(l), group_index)
        weight = torch.sigmoid(score)
    l_used = torch.where(ppo | trust, l.detach(), l)
    kl = _per_sample_mean((v_r - v_teacher.detach().float()) ** 2).mean()
    loss = step_weight * ((weight * adv * l_used).mean() + lambda_kl * kl)
    return SurrogateLossOutput(
        loss=loss,
        l=l.detach(),
        l_ref=l_ref,
        implied_reward=beta * (l_ref - l.detach()),
        group_weight=weight,
        ppo_clipped=ppo,
        trust_clipped=trust & ~ppo,
        kl=kl.detach(),
    )


# --------------------------------------------------------------------------------------------
# 5.3 Generator
# --------------------------------------------------------------------------------------------


@dataclass
class GeneratorLossOutput:
    """The generator loss and its terms (each already weighted and averaged over the batch)."""

    loss: Tensor
    guidance: Tensor
    reward: Tensor
    kl: Tensor


def classifier_free_guidance(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """``uncond + scale (cond - uncond)``: guidance of any role's conditional prediction over its unconditional one."""
    return uncond + scale * (cond - uncond)


def generator_loss(
    x0_hat: Tensor,
    teacher_cond: Tensor,
    teacher_uncond: Tensor,
    fake: Tensor,
    guidance_scale: float,
    surrogate_cond: Tensor | None = None,
    surrogate_uncond: Tensor | None = None,
    surrogate_base: Tensor | None = None,
    rl_guidance_scale: float = 4.5,
    cfg_weight: float = 0.3,
    reward_weight: float = 0.7,
    norm_eps: float = 1e-6,
) -> GeneratorLossOutput:
    """TDM-R1's generator loss; every input but ``x0_hat`` is a no-grad x0 prediction.

    With the surrogate's predictions (``j < trunc_steps`` in TDM-R1):

    ``L_G = cfg_weight * ||x0_hat - sg(x0_hat + (w-1)(Tc - Tu))||^2 / wf``
    ``    + reward_weight * ||x0_hat - sg(x0_hat + Phi - B)||^2 / wr``
    ``    + ||x0_hat - sg(x0_hat + Tc - Fk)||^2 / wf``

    where ``Phi = R_u + rl_cfg (R_c - R_u)`` is the surrogate's own guidance (section 8.1; while the
    surrogate equals the teacher, ``Phi - B = (rl_cfg - 1)(Tc - Tu)``) and ``B`` the conditional
    teacher at the surrogate's point. The per-sample detached normalisers are ``wf = mean |x0_hat - Tw|``
    (``Tw`` the guided teacher) and ``wr = mean |x0_hat - Phi|``. Without them (plain TDM, and
    ``j >= trunc_steps``) the loss is ``cfg_weight * (guidance + KL)`` (section 8.2), whose stationary
    point is the fake score at the guided teacher: the generator distils guidance ``w`` exactly.
    """
    x = x0_hat.float()
    tc, tu, fk = teacher_cond.float(), teacher_uncond.float(), fake.float()
    with torch.no_grad():
        wf = _per_sample_mean((x - classifier_free_guidance(tc, tu, guidance_scale)).abs()).clamp_min(norm_eps)
    guidance = (shifted_mse(x, (guidance_scale - 1) * (tc - tu)) / wf).mean()
    kl = (shifted_mse(x, tc - fk) / wf).mean()
    given = [t is not None for t in (surrogate_cond, surrogate_uncond, surrogate_base)]
    if any(given) and not all(given):
        raise ValueError("generator_loss: the reward term needs surrogate_cond, surrogate_uncond and surrogate_base")
    if not any(given):
        guidance, kl = cfg_weight * guidance, cfg_weight * kl
        return GeneratorLossOutput(
            loss=guidance + kl, guidance=guidance.detach(), reward=torch.zeros((), device=x.device), kl=kl.detach()
        )
    phi = classifier_free_guidance(surrogate_cond.float(), surrogate_uncond.float(), rl_guidance_scale)
    with torch.no_grad():
        wr = _per_sample_mean((x - phi).abs()).clamp_min(norm_eps)
    guidance = cfg_weight * guidance
    reward = reward_weight * (shifted_mse(x, phi - surrogate_base.float()) / wr).mean()
    return GeneratorLossOutput(
        loss=guidance + reward + kl, guidance=guidance.detach(), reward=reward.detach(), kl=kl.detach()
    )
