"""Wiring of the training step: which state, level and weight each loss receives (analytic stand-in backbone).

The stand-in's roles are full copies of a one-parameter linear field ``v = a x + e(prompt) + t / 1000``, so
every state the step hands a loss can be recomputed exactly from the rollout's recorded queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from tdmr1_lightning import losses
from tdmr1_lightning.backbones.base import (
    FAKE,
    GENERATOR,
    SURROGATE,
    SURROGATE_OLD,
    TEACHER,
    Condition,
    RectifiedFlowBackbone,
    RoleTransformers,
)
from tdmr1_lightning.module import TDMR1Module
from tdmr1_lightning.schedule import inverse_time_shift, x0_from_velocity
from tdmr1_lightning.settings import Batching, GeneratorLoss, Schedule, SurrogateLoss

K, P, G = 4, 2, 4  # steps, prompts a step, group size


class LinearField(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(-0.5))

    def forward(self, x: Tensor, t: Tensor, e: Tensor) -> Tensor:
        return self.a * x + e.view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1) / 1000


class AnalyticBackbone(RectifiedFlowBackbone):
    """Records every velocity query as ``(role, level, x, grad enabled)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float, Tensor, bool]] = []

    def build(self, roles: Sequence[str]) -> None:
        self.roles = RoleTransformers(LinearField(), roles, roles_as="full")

    def transformer_forward(self, module: nn.Module, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        return module(x, t, cond.tensors["e"])

    def velocity(self, role: str, x: Tensor, s, cond: Condition) -> Tensor:
        self.calls.append((role, float(s), x.detach().clone(), torch.is_grad_enabled()))
        return super().velocity(role, x, s, cond)

    def encode_prompts(self, prompts: list[str]) -> Condition:
        return Condition({"e": torch.tensor([len(p) / 10 for p in prompts])})

    def null_condition(self, n: int) -> Condition:
        return Condition({"e": torch.zeros(n)})

    def decode(self, latents: Tensor) -> Tensor:
        return ((latents.clamp(-1, 1) + 1) * 127.5).to(torch.uint8)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (3, 8, 8)


def _recorder(monkeypatch, name: str, log: list):
    original = getattr(losses, name)

    def record(*args, **kwargs):
        out = original(*args, **kwargs)
        log.append((name, args, kwargs, out))
        return out

    monkeypatch.setattr(losses, name, record)


@pytest.fixture
def step_record(monkeypatch):
    """One TDM-R1 step of the stand-in: the module, the backbone's queries before each loss, and the loss calls."""
    log: list = []
    for name in (
        "fake_score_loss",
        "generator_loss",
        "surrogate_loss",
        "surrogate_target_velocity",
        "group_advantages",
    ):
        _recorder(monkeypatch, name, log)
    torch.manual_seed(0)
    module = TDMR1Module(
        AnalyticBackbone(),
        rewards=[{"name": "jpeg_compressibility"}],
        schedule=Schedule(num_steps=K, shift=3.0, level_margin=0.02),
        generator_loss=GeneratorLoss(
            guidance_scale=4.0, rl_guidance_scale=2.5, cfg_weight=0.4, reward_weight=0.6, s_min_gen=0.3, trunc_steps=2
        ),
        fake_loss={"teacher_weight": 0.05},  # a mapping works too (a checkpoint's hyperparameters)
        surrogate_loss=SurrogateLoss(
            beta=7.0, clip_range=0.01, trust_threshold=0.04, lambda_kl=2e-3, s_min_reward=0.55
        ),
        batching=Batching(boundaries_per_batch=K, micro_batch_size=P * G),
        noise_seed=3,
    )
    batch = {
        "prompts": ["a red circle", "two blue squares"] * G,
        "metadata": [{}] * (P * G),
        "group_index": torch.arange(P).repeat(G),
        "sample_index": torch.arange(P * G),
    }
    trainer = L.Trainer(
        max_steps=1,
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None, collate_fn=lambda b: b))
    return module, log


def _rollout(module) -> list[Tensor]:
    """The K + 1 states of the step's rollout, from its recorded no-grad generator queries."""
    rollout = module.backbone.calls[:K]
    assert [c[0] for c in rollout] == [GENERATOR] * K and not any(c[3] for c in rollout)
    assert [c[1] for c in rollout] == module.boundaries[:K]
    return [c[2] for c in rollout]  # x_0 .. x_{K-1}


def test_losses_run_in_the_algorithms_order(step_record):
    _, log = step_record
    order = [name for name, *_ in log if name in ("fake_score_loss", "generator_loss", "surrogate_loss")]
    # every boundary's fake-score and generator losses first (no advantages needed), then the surrogate's
    assert order == ["fake_score_loss", "generator_loss"] * K + ["surrogate_loss"] * K
    names = [name for name, *_ in log]
    assert names.index("group_advantages") < names.index("surrogate_loss")


def test_generator_and_fake_score_receive_the_rollout_state_its_level_and_their_weights(step_record):
    module, log = step_record
    s_ = module.boundaries
    states = _rollout(module)
    grad_queries = [c for c in module.backbone.calls if c[3] and c[0] == GENERATOR]
    fakes = [entry for entry in log if entry[0] == "fake_score_loss"]
    generators = [entry for entry in log if entry[0] == "generator_loss"]
    assert len(grad_queries) == len(fakes) == len(generators) == K
    for (_, level, x, _), (_, fake_args, _, _), (_, gen_args, _, _) in zip(grad_queries, fakes, generators):
        j = s_.index(level)  # the generator is queried at a boundary, on the rollout's state there
        assert torch.equal(x, states[j])
        v_fake, x_s, x0_hat, s, v_teacher, teacher_weight = fake_args
        # x0_hat: the generator's x0 prediction from x_j, with its parameter before the update (a = -0.5)
        e = torch.tensor([len(p) / 10 for p in ["a red circle", "two blue squares"] * G]).view(-1, 1, 1, 1)
        v = -0.5 * x + e + level
        assert torch.allclose(x0_hat, x0_from_velocity(x, level, v), atol=1e-6)
        assert torch.equal(gen_args[0].detach(), x0_hat)  # the generator loss differentiates the same prediction
        # the fake score's level: above the next boundary by the margin, S(u) with u >= S^-1(s_{j+1}) + margin
        assert (
            inverse_time_shift(s, module.schedule.shift)
            >= inverse_time_shift(s_[j + 1], module.schedule.shift) + module.schedule.level_margin - 1e-9
        )
        assert teacher_weight == module.fake_loss.teacher_weight
        # the generator loss's fake-score and teacher queries are at the fake score's own level (one tau)
        guidance_scale = gen_args[4]
        assert guidance_scale == module.generator_loss.guidance_scale
        rl_cfg, cfg_weight, reward_weight = gen_args[8:11]
        assert (rl_cfg, cfg_weight, reward_weight) == (
            module.generator_loss.rl_guidance_scale,
            module.generator_loss.cfg_weight,
            module.generator_loss.reward_weight,
        )
        with_reward = j < module.generator_loss.trunc_steps
        assert (gen_args[5] is not None) == with_reward  # the reward term only before trunc_steps


def test_query_levels_of_each_role(step_record):
    module, _ = step_record
    s_ = module.boundaries
    calls = module.backbone.calls[K:]  # after the rollout
    # group the no-grad queries by the grad generator query that opens each boundary's block
    blocks, current = [], None
    for role, level, _x, grad in calls:
        if role == GENERATOR and grad:
            current = {"j": s_.index(level), "queries": []}
            blocks.append(current)
        elif current is not None and role != SURROGATE_OLD:
            current["queries"].append((role, level, grad))
    for block in blocks[:K]:
        j, queries = block["j"], block["queries"]
        fake_level = next(level for role, level, grad in queries if role == FAKE and grad)
        # the fake-score loss's teacher, and the generator loss's fake and teacher queries: all at the fake's level
        fake_block = [q for q in queries if q[1] == fake_level]
        assert {(role, grad) for role, _, grad in fake_block} >= {(TEACHER, False), (FAKE, True), (FAKE, False)}
        surrogate = [level for role, level, grad in queries if role == SURROGATE and not grad]
        if (
            j < module.generator_loss.trunc_steps
        ):  # the surrogate's query in the generator loss: above max(s_{j+1}, s_min_gen)
            assert len(surrogate) == 1
            low = max(s_[j + 1], module.generator_loss.s_min_gen)
            assert (
                inverse_time_shift(surrogate[0], module.schedule.shift)
                >= inverse_time_shift(low, module.schedule.shift) + module.schedule.level_margin - 1e-9
            )
        else:
            assert surrogate == []


def test_surrogate_loss_receives_the_stored_state_its_level_weights_and_advantages(step_record):
    module, log = step_record
    s_ = module.boundaries
    states = _rollout(module)
    targets = [entry for entry in log if entry[0] == "surrogate_target_velocity"]
    surrogates = [entry for entry in log if entry[0] == "surrogate_loss"]
    ((_, _, _, advantages),) = [entry for entry in log if entry[0] == "group_advantages"]
    assert len(targets) == len(surrogates) == K
    for (_, (x_n, _xi, s_n, s), _, _), (_, args, _, _) in zip(targets, surrogates):
        n = s_.index(s_n)  # j' + 1: the state after the drawn boundary j'
        assert n >= 1
        if n < K:  # a stored intermediate state of the rollout
            assert torch.equal(x_n, states[n])
        low = max(s_n, module.surrogate_loss.s_min_reward)
        assert (
            inverse_time_shift(s, module.schedule.shift)
            >= inverse_time_shift(low, module.schedule.shift) + module.schedule.level_margin - 1e-9
        )
        (v_surrogate, v_ref, v_old, v_teacher, v_target, adv, group, beta, clip, trust, lambda_kl, step_weight, _) = (
            args
        )
        assert (beta, clip, trust, lambda_kl) == (
            module.surrogate_loss.beta,
            module.surrogate_loss.clip_range,
            module.surrogate_loss.trust_threshold,
            module.surrogate_loss.lambda_kl,
        )
        assert step_weight == n / module.schedule.num_steps
        assert torch.equal(adv, advantages)  # one process, one micro-batch: the step's advantages as computed
        assert torch.equal(v_ref, v_teacher)  # reference: teacher
