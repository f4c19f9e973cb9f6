"""Schedule, sampler and loss numerics on small tensors, checked against the specification (docs/architecture.md)."""

import math

import pytest
import torch

from tdmr1_lightning import losses
from tdmr1_lightning.sampler import sample_trajectory
from tdmr1_lightning.schedule import (
    check_schedule,
    euler_step,
    forward_kernel,
    inverse_time_shift,
    renoise,
    sample_level,
    step_boundaries,
    time_shift,
    x0_from_velocity,
)

torch.manual_seed(0)


# -- schedule ----------------------------------------------------------------------------------


def test_boundaries_of_the_reference_schedule():
    t = [1000 * s for s in step_boundaries(4, 3.0)]
    assert t == pytest.approx([1000, 900, 750, 500, 0])


def test_time_shift_inverts():
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(inverse_time_shift(time_shift(u, 3.0), 3.0), u)


@pytest.mark.parametrize("k,shift", [(0, 3.0), (-1, 3.0), (2.5, 3.0), (4, 0.0), (4, -2.0), (4, float("inf"))])
def test_schedule_rejects_bad_values(k, shift):
    with pytest.raises(ValueError, match="num_steps|shift"):
        check_schedule(k, shift)


def test_forward_kernel_gives_the_marginal_of_level_s():
    # x_n = (1 - s_n) x0 + s_n eps; x_s = a x_n + b xi must be (1 - s) x0 + noise of std s.
    s_n, s = 0.4, 0.75
    a, b = forward_kernel(s_n, s)
    assert float(a * (1 - s_n)) == pytest.approx(1 - s)
    assert math.sqrt(float((a * s_n) ** 2 + b**2)) == pytest.approx(s)
    a0, b0 = forward_kernel(0.0, s)
    assert (float(a0), float(b0)) == pytest.approx((1 - s, s))


def test_sample_level_stays_in_range_and_is_seeded():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    levels = [sample_level(0.5, 3.0, g1) for _ in range(50)]
    assert levels == [sample_level(0.5, 3.0, g2) for _ in range(50)]
    assert min(levels) >= time_shift(0.5, 3.0) and max(levels) <= 1.0


# -- sampler -----------------------------------------------------------------------------------


def test_sampler_recovers_x0_with_the_exact_velocity():
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    boundaries = step_boundaries(4, 3.0)
    trajectory = sample_trajectory(lambda x, s: eps - x0, eps, boundaries)
    assert trajectory.shape == (5, 3, 4, 2, 2)
    assert torch.equal(trajectory[0], eps)
    assert torch.allclose(trajectory[-1], x0, atol=1e-6)
    # every stored state lies on the straight path at its level
    for j, s in enumerate(boundaries):
        assert torch.allclose(trajectory[j], (1 - s) * x0 + s * eps, atol=1e-6)


def test_euler_step_matches_the_spec():
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.allclose(euler_step(x, 0.9, 0.75, v), x - 0.15 * v)
    assert torch.allclose(x0_from_velocity(x, 0.9, v), x - 0.9 * v)


# -- advantages --------------------------------------------------------------------------------


def test_group_advantages_centre_per_group_and_scale_globally():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 13.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    valid = torch.ones(6, dtype=torch.bool)
    std = losses.reward_std(r, valid)
    a = losses.group_advantages(r, valid, g, std)
    expected = torch.tensor([-1.0, 0.0, 1.0, -1.0, -1.0, 2.0]) / (r.std(unbiased=False) + 1e-4)
    assert torch.allclose(a, expected, atol=1e-5)


def test_group_advantages_mask_invalid_and_clip():
    r = torch.tensor([0.0, 1.0, 100.0, 5.0])
    valid = torch.tensor([True, True, True, False])
    a = losses.group_advantages(r, valid, torch.zeros(4, dtype=torch.long), torch.tensor(1.0), clip=5.0)
    # mean over the three valid rewards is 101/3; the invalid sample gets exactly 0
    assert a[3] == 0
    assert a[2] == pytest.approx(5.0) and a[0] == pytest.approx(-5.0)


def test_group_advantages_per_group_std_and_binarised():
    r = torch.tensor([0.0, 2.0, 0.0, 20.0])
    g = torch.tensor([0, 0, 1, 1])
    a = losses.group_advantages(r, torch.ones(4, dtype=torch.bool), g, None)
    assert torch.allclose(a, torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-3)
    b = losses.group_advantages(
        torch.tensor([0.0, 1.0, 1.0]),
        torch.ones(3, dtype=torch.bool),
        torch.zeros(3, dtype=torch.long),
        None,
        binarize=True,
    )
    sign = torch.tensor([-1.0, 1.0, 1.0])
    assert torch.allclose(b, sign - sign.mean())


def test_binarised_advantages_are_centred_per_group_with_sign_zero_positive():
    # section 8.4: sign(0) = +1 (a reward equal to its group's mean is a like), centred within each group
    r = torch.tensor([0.0, 1.0, 2.0, 5.0, 5.0, 5.0, 3.0, 7.0, 9.0, 9.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    valid = torch.tensor([True] * 9 + [False])
    a = losses.group_advantages(r, valid, g, losses.reward_std(r, valid), binarize=True)
    # group 0: signs -1, +1 (the mean itself), +1; group 1 all at the mean: all +1, so 0;
    # group 2 (valid 3, 7, 9): -1, +1, +1
    expected = torch.tensor([-1 - 1 / 3, 1 - 1 / 3, 1 - 1 / 3, 0.0, 0.0, 0.0, -1 - 1 / 3, 1 - 1 / 3, 1 - 1 / 3, 0.0])
    assert torch.allclose(a, expected, atol=1e-6)


# -- losses ------------------------------------------------------------------------------------


def test_shifted_mse_gradient_is_along_its_direction():
    x = torch.randn(2, 3, 4, requires_grad=True)
    d = torch.randn(2, 3, 4)
    losses.shifted_mse(x, d).sum().backward()
    assert torch.allclose(x.grad, -2 * d / 12)


def test_fake_score_loss_value_and_gradient():
    x_s, x0_hat = torch.randn(2, 4), torch.randn(2, 4)
    s = 0.6
    target = (x_s - x0_hat) / s
    v_t = torch.randn(2, 4)
    v_f = target.clone().requires_grad_(True)
    loss = losses.fake_score_loss(v_f, x_s, x0_hat, s, v_t, teacher_weight=0.02)
    assert loss.item() == pytest.approx((0.02 * (v_t - target) ** 2).mean().item(), rel=1e-5)
    loss.backward()
    # only the teacher anchor pulls: gradient = 0.02 * 2 (F - T) / numel
    assert torch.allclose(v_f.grad, 0.02 * 2 * (target - v_t) / 8, atol=1e-6)


def test_surrogate_target_is_the_closed_form_of_the_kernel():
    x_n, xi = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    s_n, s = 0.3, 0.8
    a, b = (float(c) for c in forward_kernel(s_n, s))
    x_s = a * x_n + b * xi
    v_star = losses.surrogate_target_velocity(x_n, xi, s_n, s)
    # conditional score of q(x_s | x_n) is -(x_s - a x_n) / b^2; eps_hat = -s * score; v = (eps_hat - x_s) / (1 - s)
    score = -(x_s - a * x_n) / b**2
    assert torch.allclose(v_star, (-s * score - x_s) / (1 - s), atol=1e-12)
    assert torch.allclose(v_star, ((s / b) * xi - x_s) / (1 - s), atol=1e-12)
    # from a clean point (s_n = 0) it is the flow-matching target eps - x0
    x0 = torch.randn(3, 5, dtype=torch.float64)
    assert torch.allclose(losses.surrogate_target_velocity(x0, xi, 0.0, s), xi - x0, atol=1e-12)


def test_surrogate_target_stays_exact_near_pure_noise():
    # in float32 at s = 1 - 1e-6 the form ((s / b) xi - x_s) / (1 - s) loses every digit; the code's form does not
    x_n, xi = torch.randn(4, 8), torch.randn(4, 8)
    s_n, s = 0.5, 1 - 1e-6
    exact = losses.surrogate_target_velocity(x_n.double(), xi.double(), s_n, s)
    assert torch.allclose(losses.surrogate_target_velocity(x_n, xi, s_n, s).double(), exact, rtol=1e-5, atol=1e-5)


def _surrogate_inputs(n=4, d=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(n, d, generator=gen)
    v_r = (target + 0.1 * torch.randn(n, d, generator=gen)).requires_grad_(True)
    return target, v_r


def test_surrogate_loss_ppo_clip_detaches_exactly_the_right_samples():
    target, v_r = _surrogate_inputs()
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    l = ((target - v_r.detach()) ** 2).mean(1)
    # choose v_old so that rho = exp(l_old - l) is outside the clip for samples 0 (A > 0) and 2 (A < 0)
    shift = torch.tensor([0.5, 0.0, -0.5, 0.0]) * l  # l_old - l
    v_old = target + (v_r.detach() - target) * torch.sqrt((l + shift) / l)[:, None]
    # |log rho| = l / 2 for the shifted samples: a clip range below l / 4 holds whatever the draw
    clip_range = 0.25 * float(l.min())
    out = losses.surrogate_loss(
        v_r,
        v_r.detach(),
        v_old,
        v_r.detach(),
        target,
        adv,
        torch.tensor([0, 0, 1, 1]),
        beta=1.0,
        clip_range=clip_range,
        lambda_kl=0.0,
    )
    assert out.ppo_clipped.tolist() == [True, False, True, False]
    out.loss.backward()
    grad_norm = v_r.grad.norm(dim=1)
    assert grad_norm[0] == 0 and grad_norm[2] == 0
    assert grad_norm[1] > 0 and grad_norm[3] > 0


def test_surrogate_loss_trust_clip_and_group_weight():
    target, v_r = _surrogate_inputs()
    adv = torch.tensor([2.0, -2.0, 1.0, -1.0])
    group = torch.tensor([0, 0, 1, 1])
    v_ref = target + 0.2 * torch.randn_like(target)  # the reference: l_ref differs from l
    v_teacher = v_r.detach() + 1.0  # ||v_R - v_T||^2 = 1 > threshold: the trust clip is live
    out = losses.surrogate_loss(v_r, v_ref, v_r.detach(), v_teacher, target, adv, group, beta=3.0, clip_range=1.0)
    l = ((target - v_r.detach()) ** 2).mean(1)
    l_ref = ((target - v_ref) ** 2).mean(1)
    moved = ((adv > 0) & (l_ref > l)) | ((adv < 0) & (l_ref < l))
    assert out.trust_clipped.tolist() == moved.tolist()
    s_g = torch.stack([(adv[:2] * 3.0 * (l - l_ref)[:2]).sum() / 2, (adv[2:] * 3.0 * (l - l_ref)[2:]).sum() / 2])
    assert torch.allclose(out.group_weight, torch.sigmoid(s_g)[group], atol=1e-6)
    assert torch.allclose(out.implied_reward, 3.0 * (l_ref - l), atol=1e-6)
    # without the trust clip (low KL) the same samples are not detached
    calm = losses.surrogate_loss(v_r, v_ref, v_r.detach(), v_r.detach(), target, adv, group, beta=3.0, clip_range=1.0)
    assert not calm.trust_clipped.any()


def test_surrogate_loss_gradient_lowers_l_for_positive_advantages():
    target, v_r = _surrogate_inputs(2)
    out = losses.surrogate_loss(
        v_r,
        target * 0,
        v_r.detach(),
        v_r.detach(),
        target,
        torch.tensor([1.0, -1.0]),
        torch.tensor([0, 0]),
        beta=1.0,
        clip_range=1.0,
        lambda_kl=0.0,
        step_weight=0.5,
    )
    out.loss.backward()
    # d l / d v_R = 2 (v_R - v*) / d; a positive advantage descends it, a negative one ascends it
    direction = v_r.detach() - target
    assert (v_r.grad[0] * direction[0]).sum() > 0
    assert (v_r.grad[1] * direction[1]).sum() < 0


def test_generator_loss_terms_move_x0_along_their_directions():
    n, d = 3, 8
    x0_hat = torch.randn(n, d, requires_grad=True)
    tc, tu, fk, rc, ru, base = (torch.randn(n, d) for _ in range(6))
    w, rl_cfg, cfg_w, r_w = 4.5, 2.5, 0.3, 0.7
    out = losses.generator_loss(x0_hat, tc, tu, fk, w, rc, ru, base, rl_cfg, cfg_w, r_w)
    out.loss.backward()
    x = x0_hat.detach()
    phi = ru + rl_cfg * (rc - ru)  # the surrogate's own guidance (section 8.1)
    wf = (x - (tu + w * (tc - tu))).abs().mean(1, keepdim=True)
    wr = (x - phi).abs().mean(1, keepdim=True)
    expected = -2 / (d * n) * (cfg_w * (w - 1) * (tc - tu) / wf + r_w * (phi - base) / wr + (tc - fk) / wf)
    assert torch.allclose(x0_hat.grad, expected, atol=1e-6)
    assert out.loss.item() == pytest.approx((out.guidance + out.reward + out.kl).item())


def test_reward_direction_at_the_teacher_is_guidance():
    # While R == T (R_c = B = Tc', R_u = Tu' at the surrogate's point), Phi - B = (rl_cfg - 1)(Tc' - Tu').
    n, d, rl_cfg, r_w = 2, 6, 4.5, 0.7
    x0_hat = torch.randn(n, d, requires_grad=True)
    tc = tu = fk = torch.randn(n, d)  # guidance and KL directions vanish: the gradient is the reward term's
    tc2, tu2 = torch.randn(n, d), torch.randn(n, d)
    with_reward = losses.generator_loss(x0_hat, tc, tu, fk, 4.5, tc2, tu2, tc2, rl_cfg, 0.3, r_w)
    (grad,) = torch.autograd.grad(with_reward.loss, x0_hat)
    x = x0_hat.detach()
    wr = (x - (tu2 + rl_cfg * (tc2 - tu2))).abs().mean(1, keepdim=True)
    assert torch.allclose(grad, -2 / (n * d) * r_w * (rl_cfg - 1) * (tc2 - tu2) / wr, atol=1e-6)


def test_plain_tdm_distils_the_teachers_guidance():
    # section 8.2: without the reward term the loss is 0.3 (cfg + KL); its gradient vanishes where the fake
    # score sits at the teacher guided by w = 4.5 (with 0.3 cfg + KL it would vanish at w = 1 + 0.3 * 3.5)
    n, d, w = 3, 5, 4.5
    x0_hat = torch.randn(n, d, requires_grad=True)
    tc, tu = torch.randn(n, d), torch.randn(n, d)

    def grad_at(fake):
        out = losses.generator_loss(x0_hat, tc, tu, fake, w)
        return torch.autograd.grad(out.loss, x0_hat)[0]

    assert grad_at(tu + w * (tc - tu)).abs().max() < 1e-6
    assert grad_at(tu + (1 + 0.3 * (w - 1)) * (tc - tu)).abs().max() > 1e-3


def test_generator_loss_without_reward_weighs_both_terms_by_cfg_weight():
    x0_hat = torch.randn(2, 4, requires_grad=True)
    tc, tu, fk = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)
    out = losses.generator_loss(x0_hat, tc, tu, fk, 4.5, cfg_weight=0.3)
    unit = losses.generator_loss(x0_hat, tc, tu, fk, 4.5, cfg_weight=1.0)
    assert out.reward == 0
    assert out.loss.item() == pytest.approx(0.3 * unit.loss.item(), rel=1e-6)
    assert out.kl.item() == pytest.approx(0.3 * unit.kl.item(), rel=1e-6)
    with pytest.raises(ValueError, match="surrogate_cond, surrogate_uncond and surrogate_base"):
        losses.generator_loss(x0_hat, tc, tu, fk, 4.5, surrogate_cond=tc)


def test_renoise_matches_the_kernel():
    x = torch.randn(2, 3)
    xi = torch.randn(2, 3)
    a, b = forward_kernel(0.5, 0.9)
    assert torch.allclose(renoise(x, 0.5, 0.9, xi), float(a) * x + float(b) * xi)


def test_sample_is_the_trajectorys_last_state():
    from tdmr1_lightning.sampler import sample, sample_trajectory

    def velocity(x, s):
        return torch.sin(3 * x) + s

    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    boundaries = step_boundaries(4, 3.0)
    trajectory = sample_trajectory(velocity, noise, boundaries)
    assert trajectory.shape[0] == 5 and torch.equal(trajectory[0], noise)
    assert torch.equal(sample(velocity, noise, boundaries), trajectory[-1])
