"""``TDMR1Module``: TDM-R1 (and plain TDM distillation) as a LightningModule with manual optimization.

One training batch of the data module is one TDM-R1 epoch of the algorithm (docs/architecture.md; here called a
*step*): roll out the prompts' groups with the current generator, score them, compute advantages,
then accumulate the fake-score, surrogate and generator losses over micro-batches and step the
critic, then the generator. ``trainer.global_step`` counts generator updates, so ``max_steps``,
logging and checkpoint intervals count what a user expects.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from concurrent.futures import Future
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from . import losses, sharding
from .backbones.base import (
    FAKE,
    GENERATOR,
    GENERATOR_EMA,
    SURROGATE,
    SURROGATE_OLD,
    SURROGATE_REF,
    TEACHER,
    Condition,
    RectifiedFlowBackbone,
)
from .backbones.lora_files import CHECKPOINT_LORA_KEY
from .data import keyed_generator, run_seed, split_records
from .image_logging import log_image_grid
from .registry import build_rewards
from .reward import WeightedRewards
from .sampler import sample_trajectory
from .schedule import (
    euler_step,
    renoise,
    sample_query_level,
    step_boundaries,
    x0_from_velocity,
)
from .scoring import RewardScorer
from .settings import (
    GROUPS,
    Advantages,
    Batching,
    FakeLoss,
    GeneratorLoss,
    Schedule,
    Stepping,
    SurrogateLoss,
    as_group,
)
from .stepping import ManualStepper

_SURROGATE_BETAS = {"betas": [0.9, 0.999]}


def _adamw(lr: float, betas: tuple[float, float], weight_decay: float = 1e-4) -> OptimizerCallable:
    return lambda params: torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


def _append(sums: dict[str, list[Tensor]], logs: dict[str, Tensor]) -> None:
    for key, value in logs.items():
        sums.setdefault(key, []).append(value)


# Keys of the training noise streams (ints: a tuple's hash is then the same in every process).
_ROLLOUT, _FAKE_NOISE, _GENERATOR_NOISE, _GENERATOR_GROUP_NOISE, _SURROGATE_GROUP_NOISE = range(5)


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive training steps with a non-finite loss."""


class TDMR1Module(L.LightningModule):
    """TDM-R1: reinforcement learning of a few-step generator from a black-box reward (or TDM without one).

    Args:
        backbone: The model family and its roles (generator, teacher, fake score, surrogate reward).
        rewards: The black-box rewards: a list of ``{name: <registered name> | class_path: <dotted path>,
            init_args: {...}, weight: 1.0}`` (``tdmr1 rewards list`` shows the names); none trains plain
            TDM distillation (no surrogate).
        eval_rewards: Rewards that score validation and test samples only (default: ``rewards``).
        overlap_rewards: Score rewards while the fake-score and generator losses (which need no
            advantages) are computed: ``true`` in a background thread (on a GPU with a CUDA stream of
            its own), ``process`` in a worker process that builds its own copy of the rewards (no
            Python lock shared with training), ``auto`` a thread when training on a GPU; ``false``
            one after the other. It can save at most the scoring time, logged as ``time/reward_s``
            (and ``time/reward_wait_s``, how long training then waited): turn it on for a reward that
            is a large share of the step. OCR on a GPU was 3 % of the tiny config's step, and
            overlapping it saved nothing measurable (benchmarks/README.md).
        generator_optimizer: Optimizer of the generator's parameters.
        critic_optimizer: Optimizer of the fake score and the surrogate (two parameter groups); its
            settings (lr, betas, weight decay, ...) apply to both groups unless a group overrides them.
        fake_param_group: Settings of the fake score's group that differ from the critic optimizer's
            (none by default: the reference's fake score uses lr 3e-4, betas (0, 0.999)).
        surrogate_param_group: Settings of the surrogate's group that differ from the critic
            optimizer's (default: betas (0.9, 0.999), the reference's surrogate).
        schedule: K, the shift k and the query levels' margin (``settings.Schedule``).
        fake_loss: The fake score's loss, 5.1 (``settings.FakeLoss``).
        surrogate_loss: The surrogate's loss, 5.2: beta, clips, reference (``settings.SurrogateLoss``).
        generator_loss: The generator's loss, 5.3: guidance scales, weights (``settings.GeneratorLoss``).
        advantages: From rewards to advantages: combination, clip, std (``settings.Advantages``).
        batching: Micro-batches, M boundaries, updates per step (``settings.Batching``).
        stepping: Gradient clip, generator EMA, non-finite losses (``settings.Stepping``).
        log_images_every_n_steps: Log a grid of rollout images every this many steps (0: never).
        noise_seed: Seed of the rollout noise and the drawn levels; ``None``: the run's global seed
            (``seed_everything``). The resolved value is saved with the hyperparameters, so resuming repeats them.
    """

    def __init__(
        self,
        backbone: RectifiedFlowBackbone,
        rewards: list[dict[str, Any]] | None = None,
        eval_rewards: list[dict[str, Any]] | None = None,
        overlap_rewards: bool | Literal["auto", "process"] = False,
        generator_optimizer: OptimizerCallable = _adamw(7.5e-5, (0.0, 0.999)),
        critic_optimizer: OptimizerCallable = _adamw(3e-4, (0.0, 0.999)),
        fake_param_group: dict[str, Any] | None = None,
        surrogate_param_group: dict[str, Any] | None = _SURROGATE_BETAS,
        schedule: Schedule = Schedule(),
        fake_loss: FakeLoss = FakeLoss(),
        surrogate_loss: SurrogateLoss = SurrogateLoss(),
        generator_loss: GeneratorLoss = GeneratorLoss(),
        advantages: Advantages = Advantages(),
        batching: Batching = Batching(),
        stepping: Stepping = Stepping(),
        log_images_every_n_steps: int = 50,
        noise_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.schedule = as_group("schedule", schedule)
        self.fake_loss = as_group("fake_loss", fake_loss)
        self.surrogate_loss = as_group("surrogate_loss", surrogate_loss)
        self.generator_loss = as_group("generator_loss", generator_loss)
        self.advantages = as_group("advantages", advantages)
        self.batching = as_group("batching", batching)
        self.stepping = as_group("stepping", stepping)
        if self.batching.boundaries_per_batch > self.schedule.num_steps:
            raise ValueError(
                f"batching.boundaries_per_batch (M) must be in [1, schedule.num_steps={self.schedule.num_steps}], "
                f"got {self.batching.boundaries_per_batch}"
            )
        objects = ["backbone", "rewards", "eval_rewards", "generator_optimizer", "critic_optimizer"]
        self.save_hyperparameters(ignore=objects + list(GROUPS))
        # The groups as plain mappings: checkpoints load with weights_only, and hparams.yaml stays plain YAML.
        self.save_hyperparameters({name: dataclasses.asdict(getattr(self, name)) for name in GROUPS})
        self.hparams.noise_seed = run_seed(noise_seed)  # recorded resolved (the CLI saves its config's null)
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold the roles only, not the frozen base
        self.backbone = backbone
        self.rewards = build_rewards(rewards)
        self.scorer = RewardScorer(self.rewards, rewards, overlap_rewards) if self.rewards is not None else None
        self.eval_rewards = (
            build_rewards(eval_rewards, "model.eval_rewards") if eval_rewards is not None else self.rewards
        )
        self.generator_optimizer = generator_optimizer
        self.critic_optimizer = critic_optimizer
        self.fake_param_group = dict(fake_param_group or {})
        self.surrogate_param_group = dict(surrogate_param_group or {})
        self.boundaries = step_boundaries(self.schedule.num_steps, self.schedule.shift)
        self.rollout_batch_size = self.batching.rollout_batch_size or self.batching.micro_batch_size
        self.stepper = ManualStepper(self, self.stepping.gradient_clip)
        self._nonfinite_in_a_row = 0
        self._built = False

    # ------------------------------------------------------------------------------------------
    # Set-up
    # ------------------------------------------------------------------------------------------

    @property
    def roles(self) -> list[str]:
        roles = [GENERATOR, FAKE, GENERATOR_EMA]
        if self.rewards is not None:
            roles += [SURROGATE, SURROGATE_OLD] + ([SURROGATE_REF] if self.surrogate_loss.reference == "ema" else [])
        return roles

    def setup(self, stage: str) -> None:
        # Runs before configure_model: bad batch geometry, or a family FSDP2 cannot shard, fails before weights load.
        if sharding.is_sharded(self._trainer) and not self.backbone.shards_blocks:
            raise ValueError(
                f"--trainer.strategy {type(self.trainer.strategy).__name__} (FSDP2) shards a denoiser block by block, "
                f"and {type(self.backbone).__name__} does not name its blocks (RectifiedFlowBackbone.denoiser_blocks)"
            )
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        group_size = getattr(datamodule, "group_size", None)
        if stage == "fit" and group_size is not None:
            mbs = self.batching.micro_batch_size
            # A micro-batch holds whole groups, or whole shares of groups that other processes hold the rest of
            # in their micro-batch of the same index: the group sums S_g are then complete across processes.
            share = getattr(datamodule, "samples_per_group_local", group_size)
            if mbs % share:
                held = (
                    f"whole groups of data.group_size={group_size}"
                    if share == group_size
                    else f"whole shares of a group ({share} samples: "
                    f"data.group_size={group_size} / data.processes_per_group)"
                )
                raise ValueError(
                    f"model.batching.micro_batch_size={mbs} does not hold {held}: use a multiple of {share}"
                )
            local = getattr(datamodule, "samples_per_step_local", None)
            if local is not None and local % mbs:
                raise ValueError(
                    f"a step's {local} samples per process (data.prompts_per_step x data.group_size / world size) "
                    f"do not split into micro-batches of model.batching.micro_batch_size={mbs}"
                )
        # Rewards refuse prompts they cannot score (an OCR prompt without target text, ...) now, not mid-run.
        for rewards, records in (
            (self.rewards, getattr(datamodule, "train_records", None)),
            (self.eval_rewards, getattr(datamodule, "val_records", None)),
        ):
            if rewards is not None and records:
                rewards.validate(*split_records(records)[:2])

    def teardown(self, stage: str) -> None:
        if self.scorer is not None:
            self.scorer.close()

    def configure_model(self) -> None:
        if self._built:
            return
        self.backbone.build(self.roles)
        trainer = self._trainer
        if sharding.is_sharded(trainer):
            mesh = sharding.data_parallel_mesh(self.device, trainer.world_size)
            self.backbone.shard_(mesh, sharding.mixed_precision())
        self._built = True

    def configure_optimizers(self):
        roles = self.backbone.roles
        generator = self.generator_optimizer(roles.parameters_of(GENERATOR))
        groups = [{"params": roles.parameters_of(FAKE), **self.fake_param_group}]
        if self.rewards is not None:
            groups.append({"params": roles.parameters_of(SURROGATE), **self.surrogate_param_group})
        return [generator, self.critic_optimizer(groups)]

    def is_checkpointed_key(self, key: str) -> bool:
        """Whether a ``state_dict`` key is saved in checkpoints: the roles' weights, not the frozen base."""
        prefix = "backbone."
        return not key.startswith(prefix) or self.backbone.is_role_state(key[len(prefix) :])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if self.is_checkpointed_key(k)}
        roles = self.backbone.roles  # what a LoRA file must state to be loaded back (backbones/lora_files.py)
        checkpoint[CHECKPOINT_LORA_KEY] = {
            "rank": roles.lora_rank,
            "alpha": roles.lora_alpha,
            "roles_as": roles.roles_as,
        }

    # ------------------------------------------------------------------------------------------
    # Sampling
    # ------------------------------------------------------------------------------------------

    def keyed_noise(self, shape: tuple[int, ...], keys: Tensor, *key: int) -> Tensor:
        """Standard normal noise ``(len(keys), *shape)``, row ``i`` drawn from its own stream keyed by
        ``(noise_seed, *key, keys[i])``: a sample (or a group) gets the same noise on whichever process
        holds it, so an update does not depend on how samples are split between processes."""

        def draw(k: int) -> Tensor:
            generator = keyed_generator(self.hparams.noise_seed, *key, k, device=self.device)
            return torch.randn(shape, generator=generator, device=self.device)

        unique, inverse = torch.unique(keys, return_inverse=True)
        return torch.stack([draw(int(k)) for k in unique.tolist()])[inverse.to(self.device)]

    @torch.no_grad()
    def rollout(
        self,
        cond: Condition,
        role: str = GENERATOR,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """K-step trajectories ``(K + 1, N, C, h, w)`` of ``role`` for the conditions ``cond``, from ``noise``
        (default: drawn from ``generator``)."""
        n = len(cond)
        if noise is None:
            noise = torch.randn((n, *self.backbone.latent_shape), generator=generator, device=self.device)
        chunks = []
        for start in range(0, n, self.rollout_batch_size):
            sl = slice(start, start + self.rollout_batch_size)
            chunks.append(
                sample_trajectory(functools.partial(self._velocity, role, cond[sl]), noise[sl], self.boundaries)
            )
        return torch.cat(chunks, dim=1)

    def _velocity(self, role: str, cond: Condition, x: Tensor, s: float) -> Tensor:
        return self.backbone.velocity(role, x, s, cond)

    @torch.no_grad()
    def generate(self, prompts: list[str], role: str = GENERATOR_EMA, seed: int = 0) -> Tensor:
        """``uint8`` images of ``prompts`` from ``role`` (the generator EMA by default) at K steps."""
        cond = self.backbone.encode_prompts(prompts)
        with self.backbone.roles.merged(role):  # inference: the adapter folded into the weights
            trajectory = self.rollout(cond, role, torch.Generator(self.device).manual_seed(seed))
        return self.decode(trajectory[-1])

    def decode(self, latents: Tensor) -> Tensor:
        return torch.cat(
            [
                self.backbone.decode(latents[i : i + self.rollout_batch_size])
                for i in range(0, len(latents), self.rollout_batch_size)
            ]
        )

    # ------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------

    def _advantages(self, rewards: Tensor, valid: Tensor, all_groups: Tensor) -> Tensor:
        """This process's advantages, computed from every process's rewards (``all_groups``: every process's
        group indices, in rank order): a group's mean, and the std, cover all its members wherever they are."""
        settings = self.advantages
        all_rewards, all_valid = (self.all_gather(t).reshape(-1) for t in (rewards, valid))
        std = losses.reward_std(all_rewards, all_valid) if settings.std == "global" else None
        advantages = losses.group_advantages(
            all_rewards, all_valid, all_groups, std, settings.clip, binarize=settings.binarize
        )
        return advantages.reshape(-1, len(rewards))[self.global_rank]

    def _group_sum(self, values: Tensor, group_index: Tensor, num_groups: int) -> Tensor:
        """Per sample, the sum of ``values`` over its group's members on all processes (``S_g``, section 8.5)."""
        sums = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, group_index, values)
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        return sums[group_index]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """One TDM-R1 step (algorithm.md section 6): rollout -> score -> advantages -> per update (fake score,
        surrogate, generator losses) -> step the critic, then the generator -> EMAs."""
        step = self.global_step
        opt_g, opt_c = self.optimizers()
        prompts, metadata = batch["prompts"], batch["metadata"]
        group, sample = batch["group_index"].to(self.device), batch["sample_index"].to(self.device)
        all_groups = self.all_gather(group).reshape(-1)
        group_sum = functools.partial(self._group_sum, num_groups=int(all_groups.max()) + 1)

        cond = self.backbone.encode_prompts(prompts)
        trajectory = self.rollout(
            cond, GENERATOR, noise=self.keyed_noise(self.backbone.latent_shape, sample, step, _ROLLOUT)
        )
        scoring = self._start_scoring(trajectory[-1], prompts, metadata) if self.rewards is not None else None
        advantages = torch.zeros(len(prompts), device=self.device)
        levels = keyed_generator(self.hparams.noise_seed, step, -1)  # same on every process
        metrics: dict[str, Tensor] = {}
        sums: dict[str, list[Tensor]] = {}
        for plan in self._update_plans(len(prompts), step, levels):
            scale = 1.0 / len(plan)
            nonfinite: list[str] = []
            with self.stepper.accumulating():
                # No parameter changes within an update: the fake and generator losses run first, while
                # the rewards are still being scored, and the surrogate's, which needs the advantages, after.
                for mb, draw, j, _ in plan:
                    _append(
                        sums,
                        self._fake_and_generator_losses(
                            trajectory[:, mb],
                            cond[mb],
                            group[mb],
                            sample[mb],
                            j,
                            levels,
                            draw,
                            scale,
                            nonfinite,
                        ),
                    )
                if scoring is not None:
                    advantages, reward_metrics = self._finish_scoring(scoring, all_groups)
                    metrics.update(reward_metrics)
                    scoring = None
                if self.rewards is not None and not self._surrogate_frozen:
                    for mb, draw, _, j_reward in plan:
                        _append(
                            sums,
                            self._surrogate_loss(
                                trajectory[:, mb],
                                cond[mb],
                                advantages[mb],
                                group[mb],
                                j_reward,
                                levels,
                                draw,
                                group_sum,
                                scale,
                                nonfinite,
                            ),
                        )
            if self.stepper.any_process(bool(nonfinite)):
                return self._skip_step(nonfinite or ["another process's"], opt_g, opt_c)
            updates_before = self.global_step  # the EMA decays count the updates made before this one (8.6)
            metrics["grad_norm/critic"] = self.stepper.step(opt_c, counts_as_update=False)
            metrics["grad_norm/generator"] = self.stepper.step(opt_g)
            self._update_emas(updates_before)
        self._nonfinite_in_a_row = 0
        metrics.update({k: torch.stack(v).mean() for k, v in sums.items()})
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(prompts))

    def _update_plans(
        self, n: int, step: int, levels: torch.Generator
    ) -> list[list[tuple[slice, tuple[int, int], int, int]]]:
        """For every update of the step, its ``(micro-batch, draw (step, d), generator boundary j, surrogate
        boundary j')`` tuples, all drawn up front from ``levels`` (the same on every process)."""
        K, batching = self.schedule.num_steps, self.batching
        mbs, updates = batching.micro_batch_size, batching.updates_per_step
        micro_batches = [slice(i, i + mbs) for i in range(0, n, mbs)]
        weights = torch.arange(1, K + 1, dtype=torch.float)
        plans = [
            [
                (mb, (step, d), j, int(torch.multinomial(weights, 1, generator=levels)))
                for mb in micro_batches[u::updates]
                for d, j in enumerate(torch.randperm(K, generator=levels)[: batching.boundaries_per_batch].tolist())
            ]
            for u in range(updates)
        ]
        return [plan for plan in plans if plan]

    @property
    def _surrogate_frozen(self) -> bool:
        after = self.surrogate_loss.freeze_after
        return after is not None and self.global_step >= after

    def _start_scoring(self, latents: Tensor, prompts: list[str], metadata: list[dict]) -> Future:
        """Decode the rollout's final states and start scoring them (in the background with ``overlap_rewards``)."""
        images = self.decode(latents)
        every = self.hparams.log_images_every_n_steps
        if every and self.global_step % every == 0:
            log_image_grid(self, "train/rollouts", images)
        return self.scorer.start(images, prompts, metadata)

    def _finish_scoring(self, scoring: Future, all_groups: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Advantages of the step's samples (collective across processes) and the reward metrics."""
        outputs, seconds, waited = self.scorer.finish(scoring)
        rewards, valid = (t.to(self.device) for t in WeightedRewards.weighted_sum(outputs))
        if self.advantages.reward_combination == "sum" or len(outputs) == 1:
            advantages = self._advantages(rewards, valid, all_groups)
        else:
            advantages = sum(
                weight * self._advantages(out.scores.to(self.device), out.valid.to(self.device), all_groups)
                for out, weight in outputs.values()
            )
        metrics = self._reward_metrics(rewards, valid, advantages)
        metrics["time/reward_s"] = torch.tensor(seconds, device=self.device)
        metrics["time/reward_wait_s"] = torch.tensor(waited, device=self.device)
        if len(outputs) > 1:
            for label, (out, _) in outputs.items():
                if out.valid.any():
                    metrics[f"reward/{label}/mean"] = out.scores[out.valid].mean().to(self.device)
        return advantages, metrics

    def _fake_and_generator_losses(
        self,
        trajectory: Tensor,
        cond: Condition,
        group: Tensor,
        sample: Tensor,
        j: int,
        levels: torch.Generator,
        draw: tuple[int, int],
        scale: float,
        nonfinite: list[str],
    ) -> dict[str, Tensor]:
        """The fake-score loss (5.1) and the generator loss (5.3) at boundary ``j``, each backpropagated.

        ``draw`` (step, index of the draw in the micro-batch) keys the noise of each ``sample`` and ``group``.
        Returns the detached values to log; the name of a loss that is not finite is appended to
        ``nonfinite`` instead of being backpropagated.
        """
        bb, s_, gl = self.backbone, self.boundaries, self.generator_loss
        k, margin = self.schedule.shift, self.schedule.level_margin
        shape = tuple(trajectory.shape[2:])
        x_j = trajectory[j]

        # The generator's step with grad: x0_hat feeds the generator loss, x_next (detached) the critics.
        v = bb.velocity(GENERATOR, x_j, s_[j], cond)
        x0_hat = x0_from_velocity(x_j, s_[j], v)
        x_next = euler_step(x_j, s_[j], s_[j + 1], v).detach()

        # 5.1 fake score, at the level the generator loss queries it (the reference's one tau per boundary)
        s = sample_query_level(s_[j + 1], k, margin, levels)
        x_s = renoise(x_next, s_[j + 1], s, self.keyed_noise(shape, sample, *draw, _FAKE_NOISE))
        with torch.no_grad():
            v_teacher = bb.velocity(TEACHER, x_s, s, cond)
        loss_fake = losses.fake_score_loss(
            bb.velocity(FAKE, x_s, s, cond), x_s, x0_hat.detach(), s, v_teacher, self.fake_loss.teacher_weight
        )
        self._backward(loss_fake * scale, "fake", nonfinite)

        # 5.3 generator: the same level, fresh noise
        with torch.no_grad():
            x_s = renoise(x_next, s_[j + 1], s, self.keyed_noise(shape, sample, *draw, _GENERATOR_NOISE))
            fake = x0_from_velocity(x_s, s, bb.velocity(FAKE, x_s, s, cond))
            vc, vu = bb.velocity_cond_uncond(TEACHER, x_s, s, cond)
            t_cond, t_uncond = x0_from_velocity(x_s, s, vc), x0_from_velocity(x_s, s, vu)
            r_cond = r_uncond = base = None
            with_reward = self.rewards is not None and j < gl.trunc_steps
            if with_reward:
                s2 = sample_query_level(max(s_[j + 1], gl.s_min_gen), k, margin, levels)
                x_s2 = renoise(x_next, s_[j + 1], s2, self.keyed_noise(shape, group, *draw, _GENERATOR_GROUP_NOISE))
                base = x0_from_velocity(x_s2, s2, bb.velocity(TEACHER, x_s2, s2, cond))
                # Phi is the surrogate's own guidance (section 8.1): both its predictions in one batched call
                rc, ru = bb.velocity_cond_uncond(SURROGATE, x_s2, s2, cond)
                r_cond, r_uncond = x0_from_velocity(x_s2, s2, rc), x0_from_velocity(x_s2, s2, ru)
        out = losses.generator_loss(
            x0_hat,
            t_cond,
            t_uncond,
            fake,
            gl.guidance_scale,
            r_cond,
            r_uncond,
            base,
            gl.rl_guidance_scale,
            gl.cfg_weight,
            gl.reward_weight,
        )
        self._backward(out.loss * scale, "generator", nonfinite)
        logs = {
            "loss/fake": loss_fake.detach(),
            "loss/generator": out.loss.detach(),
            "generator/guidance_term": out.guidance,
            "generator/kl_term": out.kl,
        }
        if with_reward:
            logs["generator/reward_term"] = out.reward
        return logs

    def _surrogate_loss(
        self,
        trajectory: Tensor,
        cond: Condition,
        advantages: Tensor,
        group: Tensor,
        j_reward: int,
        levels: torch.Generator,
        draw: tuple[int, int],
        group_sum,
        scale: float,
        nonfinite: list[str],
    ) -> dict[str, Tensor]:
        """The surrogate-reward loss (5.2, DGPO) from the stored state after boundary ``j_reward``, backpropagated."""
        bb, s_, sl = self.backbone, self.boundaries, self.surrogate_loss
        s_n = s_[j_reward + 1]
        x_n = trajectory[j_reward + 1]
        s = sample_query_level(max(s_n, sl.s_min_reward), self.schedule.shift, self.schedule.level_margin, levels)
        xi = self.keyed_noise(tuple(x_n.shape[1:]), group, *draw, _SURROGATE_GROUP_NOISE)
        x_s = renoise(x_n, s_n, s, xi)
        v_target = losses.surrogate_target_velocity(x_n, xi, s_n, s)
        with torch.no_grad():
            v_teacher = bb.velocity(TEACHER, x_s, s, cond)
            v_old = bb.velocity(SURROGATE_OLD, x_s, s, cond)
            v_ref = bb.velocity(SURROGATE_REF, x_s, s, cond) if sl.reference == "ema" else v_teacher
        out = losses.surrogate_loss(
            bb.velocity(SURROGATE, x_s, s, cond),
            v_ref,
            v_old,
            v_teacher,
            v_target,
            advantages,
            group,
            sl.beta,
            sl.clip_range,
            sl.trust_threshold,
            sl.lambda_kl,
            (j_reward + 1) / self.schedule.num_steps,
            group_sum,
        )
        self._backward(out.loss * scale, "surrogate", nonfinite)
        logs = {
            "loss/surrogate": out.loss.detach(),
            "surrogate/kl": out.kl,
            "surrogate/ppo_clip_fraction": out.ppo_clipped.float().mean(),
            "surrogate/trust_clip_fraction": out.trust_clipped.float().mean(),
            "surrogate/group_weight": out.group_weight.mean(),
        }
        pos, neg = advantages > 0, advantages < 0
        if pos.any() and neg.any():
            logs["surrogate/implied_reward_gap"] = out.implied_reward[pos].mean() - out.implied_reward[neg].mean()
        return logs

    def _backward(self, loss: Tensor, name: str, nonfinite: list[str]) -> None:
        if torch.isfinite(loss):
            self.manual_backward(loss)
        else:
            nonfinite.append(name)

    def _skip_step(self, names: list[str], *optimizers) -> None:
        self.stepper.skip(*optimizers)
        self._nonfinite_in_a_row += 1
        message = (
            f"step {self.global_step}: non-finite {', '.join(sorted(set(names)))} loss "
            f"({self._nonfinite_in_a_row} step(s) in a row)"
        )
        limit = self.stepping.max_nonfinite_steps
        if self._nonfinite_in_a_row >= limit:
            raise NonFiniteLossError(f"{message}; stopping (model.stepping.max_nonfinite_steps={limit})")
        warnings.warn(f"{message}; skipping the step", RuntimeWarning)

    def _update_emas(self, n: int) -> None:
        """EMA updates after the ``n + 1``-th generator update (``n`` made before it)."""
        roles = self.backbone.roles
        roles.ema_update_(GENERATOR_EMA, min((1 + n) / (10 + n), self.stepping.generator_ema_max_decay))
        if self.rewards is not None:
            roles.ema_update_(SURROGATE_OLD, min(0.3, 0.001 + 0.001 * n))
            if self.surrogate_loss.reference == "ema":
                roles.ema_update_(SURROGATE_REF, self.surrogate_loss.reference_ema_decay)

    def _reward_metrics(self, rewards: Tensor, valid: Tensor, advantages: Tensor) -> dict[str, Tensor]:
        r = rewards[valid]
        metrics = {"reward/valid_fraction": valid.float().mean()}
        if r.numel():
            metrics.update(
                {
                    "reward/mean": r.mean(),
                    "reward/std": r.std(unbiased=False),
                    "reward/min": r.min(),
                    "reward/max": r.max(),
                }
            )
        a = advantages[valid]
        if a.numel():
            metrics.update(
                {
                    "advantage/abs_mean": a.abs().mean(),
                    "advantage/positive_fraction": (a > 0).float().mean(),
                    "advantage/zero_fraction": (a == 0).float().mean(),
                }
            )
        return metrics

    # ------------------------------------------------------------------------------------------
    # Evaluation and inference
    # ------------------------------------------------------------------------------------------

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = self.generate(batch["prompts"], GENERATOR_EMA, seed=self.hparams.noise_seed + batch_idx)
        if batch_idx == 0:
            log_image_grid(self, "val/samples", images)
        if self.eval_rewards is not None:
            for label, (out, _) in self.eval_rewards.to(self.device)(
                images, batch["prompts"], batch["metadata"]
            ).items():
                if out.valid.any():
                    self.log(
                        f"val/{label}",
                        out.scores[out.valid].mean().to(self.device),
                        on_epoch=True,
                        sync_dist=True,
                        batch_size=int(out.valid.sum()),
                    )

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self.generate(batch["prompts"], GENERATOR_EMA, seed=self.hparams.noise_seed + batch_idx)
