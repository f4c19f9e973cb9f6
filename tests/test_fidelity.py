"""What a GPU run trains, checked on the tiny SD3: activation checkpointing with role adapters, the
surrogate's guidance, the EMA step index and the timestep's precision (docs/architecture.md)."""

from pathlib import Path

import lightning as L
import pytest
import torch

from tdmr1_lightning import losses
from tdmr1_lightning.backbones import SD3Backbone
from tdmr1_lightning.backbones.base import FAKE, GENERATOR, GENERATOR_EMA, SURROGATE, SURROGATE_OLD, TEACHER
from tdmr1_lightning.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.fixture
def fit(tiny_sd3_path, quiet_trainer):
    """`run(root, *extra, callbacks=())`: a quiet tiny `tdmr1 fit` in `root` (no logger, callbacks or checkpoints)."""

    def run(root, *extra, callbacks=()):
        cli = build_cli(
            [
                "--config",
                "configs/tiny.yaml",
                f"--model.backbone.init_args.directory={tiny_sd3_path}",
                f"--trainer.default_root_dir={root}",
                "--trainer.logger=false",
                "--trainer.callbacks=[]",
                "--trainer.enable_checkpointing=false",
                *quiet_trainer,
                *extra,
            ],
            run=False,
        )
        cli.trainer.callbacks.extend(callbacks)
        cli.trainer.fit(cli.model, cli.datamodule)
        return cli

    return run


class Gradients(L.Callback):
    """Every trained role's gradient at each optimizer step (before it is applied)."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        roles = module.backbone.roles
        grads = {}
        for role in (GENERATOR, FAKE, SURROGATE):
            params = roles.parameters_of(role) if role in roles.roles else []
            if any(p in {id(q) for g in optimizer.param_groups for q in g["params"]} for p in map(id, params)):
                grads[role] = torch.cat(
                    [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
                )
        self.steps.append(grads)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tdm", "tdmr1"])
def test_gradient_checkpointing_trains_exactly_the_same_updates(tmp_path, fit, mode):
    # Between the generator's forward and its backward the fake score, the teacher and the surrogate are
    # queried: a recomputation with whichever adapter is active then would give another role's gradient.
    extra = ["--trainer.max_steps=2", "--model.stepping.gradient_clip=0"] + (
        ["--model.rewards=null"] if mode == "tdm" else []
    )
    runs = {}
    for checkpointing in (False, True):
        grads = Gradients()
        cli = fit(
            tmp_path / str(checkpointing),
            *extra,
            f"--model.backbone.init_args.gradient_checkpointing={str(checkpointing).lower()}",
            callbacks=[grads],
        )
        roles = cli.model.backbone.roles
        params = {r: torch.cat([p.detach().flatten() for p in roles.parameters_of(r)]) for r in roles.roles}
        runs[checkpointing] = (grads.steps, params)
    (plain_grads, plain_params), (ckpt_grads, ckpt_params) = runs[False], runs[True]
    assert len(plain_grads) == len(ckpt_grads) == 4  # two updates, critic then generator
    trained = {role for step in plain_grads for role in step}
    assert trained == ({GENERATOR, FAKE} if mode == "tdm" else {GENERATOR, FAKE, SURROGATE})
    for plain, ckpt in zip(plain_grads, ckpt_grads):
        assert plain.keys() == ckpt.keys()
        for role in plain:
            assert plain[role].norm() > 0, role
            assert _relative_error(ckpt[role], plain[role]) <= 1e-6, role
    for role in plain_params:
        assert _relative_error(ckpt_params[role], plain_params[role]) <= 1e-6, role


@pytest.mark.slow
def test_gradient_checkpointing_in_full_copy_mode(tmp_path, fit):
    runs = []
    for checkpointing in ("false", "true"):
        cli = fit(
            tmp_path / checkpointing,
            "--trainer.max_steps=1",
            "--model.backbone.init_args.roles_as=full",
            f"--model.backbone.init_args.gradient_checkpointing={checkpointing}",
        )
        runs.append(
            {
                r: torch.cat([p.detach().flatten() for p in cli.model.backbone.roles.parameters_of(r)])
                for r in (GENERATOR, FAKE, SURROGATE)
            }
        )
    for role in runs[0]:
        assert _relative_error(runs[1][role], runs[0][role]) <= 1e-6, role


@pytest.mark.slow
def test_ema_decays_count_the_updates_made_before(tmp_path, fit):
    # section 8.6: the first generator EMA decay is (1 + 0) / (10 + 0) = 0.1, the first surrogate-old decay 0.001
    before = {}

    class Start(L.Callback):
        def on_fit_start(self, trainer, module):
            roles = module.backbone.roles
            before.update({r: [p.detach().clone() for p in roles.parameters_of(r)] for r in (GENERATOR, SURROGATE)})

    cli = fit(tmp_path, "--trainer.max_steps=1", callbacks=[Start()])
    roles = cli.model.backbone.roles
    for ema, source, decay in ((GENERATOR_EMA, GENERATOR, 0.1), (SURROGATE_OLD, SURROGATE, 0.001)):
        # the EMA started equal to its source: after one update ema = decay * start + (1 - decay) * source
        for e, s, s0 in zip(roles.parameters_of(ema), roles.parameters_of(source), before[source]):
            assert torch.allclose(e, decay * s0 + (1 - decay) * s, atol=1e-7), ema


@pytest.mark.slow
def test_surrogate_guidance_is_its_own(tmp_path, fit, monkeypatch):
    # section 8.1: the reward term gets the surrogate's conditional AND unconditional predictions; while
    # the surrogate still equals the teacher its conditional one is the teacher's B exactly
    seen = []
    real = losses.generator_loss

    def spy(*args, **kwargs):
        seen.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(losses, "generator_loss", spy)
    cli = fit(tmp_path, "--trainer.max_steps=1", "--model.generator_loss.rl_guidance_scale=3.0")
    assert seen
    for _x0_hat, _tc, _tu, _fake, w, r_cond, r_uncond, base, rl_cfg, *_ in seen:
        assert rl_cfg == 3.0 and w == cli.model.generator_loss.guidance_scale
        assert torch.equal(r_cond, base)
        assert (r_cond - r_uncond).abs().max() > 1e-4  # the prompt matters to the tiny model: guidance is not trivial


def test_timestep_reaches_the_network_in_float32(tiny_sd3_path):
    bb = SD3Backbone(
        str(tiny_sd3_path), resolution=32, lora_rank=4, lora_alpha=8, dtype="bfloat16", max_sequence_length=16
    )
    bb.build([GENERATOR])
    seen = []
    bb.roles.base.time_text_embed.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(2, *bb.latent_shape)
    v = bb.velocity(TEACHER, x, 0.75, bb.encode_prompts(["a", "b"]))
    assert v.dtype == torch.float32
    (t,) = seen
    assert t.dtype == torch.float32 and t.tolist() == [750.0, 750.0]  # in bfloat16 it would be 752


def test_critic_optimizer_settings_have_one_source(tmp_path, tiny_sd3_path):
    # the critic optimizer's lr and betas reach the fake score's group; the surrogate's group overrides only its betas
    cli = build_cli(
        [
            "--config",
            "configs/tiny.yaml",
            f"--model.backbone.init_args.directory={tiny_sd3_path}",
            f"--trainer.default_root_dir={tmp_path}",
            "--model.critic_optimizer.init_args.lr=0.123",
            "--model.critic_optimizer.init_args.betas=[0.5, 0.9]",
        ],
        run=False,
    )
    cli.model.configure_model()
    _, critic = cli.model.configure_optimizers()
    fake, surrogate = critic.param_groups
    assert (fake["lr"], fake["betas"]) == (0.123, (0.5, 0.9))
    assert (surrogate["lr"], tuple(surrogate["betas"])) == (0.123, (0.9, 0.999))
    assert fake["weight_decay"] == surrogate["weight_decay"] == 1e-4


@pytest.mark.slow
def test_every_query_level_keeps_the_margin(tmp_path, fit, monkeypatch):
    # section 8.3: u ~ U[S^-1(lower) + 0.02, 1] for the fake score's and the generator's x_s, the generator's
    # x_s' (lower = max(s_{j+1}, s_min_gen)) and the surrogate's training level (lower = max(s_n, s_min_reward))
    from tdmr1_lightning import module as module_file
    from tdmr1_lightning.schedule import inverse_time_shift, step_boundaries, time_shift

    calls = []
    real = module_file.sample_query_level

    def spy(above, shift, margin, generator=None):
        s = real(above, shift, margin, generator)
        calls.append((above, margin, s))
        return s

    monkeypatch.setattr(module_file, "sample_query_level", spy)
    cli = fit(
        tmp_path,
        "--trainer.max_steps=1",
        "--model.generator_loss.s_min_gen=0.6",
        "--model.surrogate_loss.s_min_reward=0.8",
    )
    assert all(margin == 0.02 for _, margin, _ in calls)
    assert all(s >= time_shift(float(inverse_time_shift(above, 3.0)) + 0.02, 3.0) - 1e-12 for above, _, s in calls)
    lowers = {round(above, 6) for above, _, _ in calls}
    boundaries = step_boundaries(4, 3.0)[1:]
    assert lowers & {round(max(s, 0.6), 6) for s in boundaries} - {round(s, 6) for s in boundaries}  # x_s'
    assert 0.8 in lowers  # the surrogate's training level (every boundary is below 0.8 but t = 900)
    assert cli.trainer.global_step == 1


@pytest.mark.slow
def test_the_fake_score_is_trained_at_the_level_the_generator_queries_it(tmp_path, fit, monkeypatch):
    # the reference draws one level tau per boundary for both (scripts/train_tdmr1_pub.py: tau_list[j])
    from tdmr1_lightning.backbones.sd3 import SD3Backbone as Family

    fake_levels = []
    real = Family.velocity

    def spy(self, role, x, s, cond):
        if role == FAKE:
            fake_levels.append((torch.is_grad_enabled(), float(s)))
        return real(self, role, x, s, cond)

    monkeypatch.setattr(Family, "velocity", spy)
    fit(tmp_path, "--trainer.max_steps=1", "--model.rewards=null")
    trained, queried = fake_levels[0::2], fake_levels[1::2]  # per boundary: the fake loss, then the generator's query
    assert len(trained) == len(queried) == 4 and all(g for g, _ in trained) and not any(g for g, _ in queried)
    assert [s for _, s in trained] == [s for _, s in queried]
