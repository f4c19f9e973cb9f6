"""End-to-end `tdmr1 fit` on the tiny config, in process: what trains, what stays frozen, step counting."""

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from tdmr1_lightning import losses
from tdmr1_lightning.backbones.base import FAKE, GENERATOR, GENERATOR_EMA, SURROGATE, SURROGATE_OLD, TEACHER
from tdmr1_lightning.cli import build_cli
from tdmr1_lightning.module import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the shipped configs name prompt files relative to the repository


@pytest.fixture
def tiny_args(tiny_sd3_path, quiet_trainer):
    """`build(root, *extra)`: `tdmr1 fit` arguments of a quiet tiny run in `root`, then `extra`."""

    def build(root, *extra):
        return [
            "--config",
            "configs/tiny.yaml",
            f"--model.backbone.init_args.directory={tiny_sd3_path}",
            f"--trainer.default_root_dir={root}",
            *quiet_trainer,
            *extra,
        ]

    return build


class Snapshot(L.Callback):
    """Parameters of every role (and of the frozen parts) when training starts; training steps seen."""

    def __init__(self):
        self.steps = 0

    def on_fit_start(self, trainer, module):
        bb = module.backbone
        self.roles = {
            r: [p.detach().clone() for p in bb.roles.parameters_of(r)]
            for r in [TEACHER, GENERATOR, FAKE, SURROGATE, GENERATOR_EMA, SURROGATE_OLD]
        }
        self.frozen = [p.detach().clone() for p in [*bb.vae.parameters(), *bb.text_encoders.parameters()]]

    def on_train_batch_end(self, *args):
        self.steps += 1


def _changed(before, after):
    return any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.slow
def test_fit_two_epochs_trains_the_roles_and_not_the_teacher(tmp_path, tiny_args):
    cli = build_cli(tiny_args(tmp_path, "--trainer.max_epochs=2", "--trainer.max_steps=-1"), run=False)
    snap = Snapshot()
    cli.trainer.callbacks.append(snap)
    cli.trainer.fit(cli.model, cli.datamodule)
    bb = cli.model.backbone
    # 8 prompts, 4 per step: 2 steps an epoch, one generator update each
    assert snap.steps == 4 and cli.trainer.global_step == 4
    for role in [GENERATOR, FAKE, SURROGATE, GENERATOR_EMA, SURROGATE_OLD]:
        assert _changed(snap.roles[role], bb.roles.parameters_of(role)), f"{role} did not change"
    assert not _changed(snap.roles[TEACHER], bb.roles.parameters_of(TEACHER)), "the teacher changed"
    assert not _changed(snap.frozen, [*bb.vae.parameters(), *bb.text_encoders.parameters()]), (
        "VAE / text encoders changed"
    )
    metrics = cli.trainer.logged_metrics
    for key in [
        "loss/fake",
        "loss/surrogate",
        "loss/generator",
        "reward/mean",
        "advantage/abs_mean",
        "surrogate/kl",
        "grad_norm/generator",
    ]:
        assert key in metrics and torch.isfinite(metrics[key]), key

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(Path(tmp_path).rglob("events.out.tfevents*"))))
    events.Reload()
    assert "train/rollouts" in events.Tags()["images"]

    # the checkpoint holds the roles only, and loads back into a fresh module
    ckpt = next(Path(tmp_path).rglob("last.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert state and all(".lora_" in k for k in state)
    fresh = build_cli(tiny_args(tmp_path / "again"), run=False).model
    fresh.configure_model()
    fresh.load_state_dict(state, strict=False)
    for role in [GENERATOR, GENERATOR_EMA, SURROGATE]:
        assert not _changed(bb.roles.parameters_of(role), fresh.backbone.roles.parameters_of(role))


@pytest.mark.slow
@pytest.mark.parametrize("updates_per_step,steps,global_step", [(1, 3, 3), (2, 2, 4)])
def test_max_steps_counts_generator_updates(tmp_path, tiny_args, updates_per_step, steps, global_step):
    cli = build_cli(
        tiny_args(
            tmp_path,
            "--trainer.max_steps=3",
            f"--model.batching.updates_per_step={updates_per_step}",
            "--model.batching.micro_batch_size=4",
            "--data.prompts_per_step=2",
        ),
        run=False,
    )
    snap = Snapshot()
    cli.trainer.callbacks.append(snap)
    cli.trainer.fit(cli.model, cli.datamodule)
    # max_steps is checked between steps: with two updates a step, the third update ends in the second step
    assert (snap.steps, cli.trainer.global_step) == (steps, global_step)


@pytest.mark.slow
def test_plain_tdm_mode_has_no_surrogate(tmp_path, tiny_args):
    cli = build_cli(tiny_args(tmp_path, "--trainer.max_steps=1", "--model.rewards=null"), run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert SURROGATE not in cli.model.backbone.roles.roles
    assert "loss/surrogate" not in cli.trainer.logged_metrics and "loss/generator" in cli.trainer.logged_metrics


@pytest.mark.slow
def test_non_finite_loss_skips_then_stops(tmp_path, tiny_args, monkeypatch):
    real = losses.fake_score_loss
    calls = {"n": 0}

    def once_nan(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 1 else value

    monkeypatch.setattr(losses, "fake_score_loss", once_nan)
    cli = build_cli(tiny_args(tmp_path, "--trainer.max_steps=1"), run=False)
    snap = Snapshot()
    cli.trainer.callbacks.append(snap)
    with pytest.warns(RuntimeWarning, match="non-finite fake loss"):
        cli.trainer.fit(cli.model, cli.datamodule)
    assert snap.steps == 2 and cli.trainer.global_step == 1  # the first step was skipped, not stepped

    monkeypatch.setattr(losses, "fake_score_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    cli = build_cli(
        tiny_args(tmp_path / "b", "--trainer.max_steps=5", "--model.stepping.max_nonfinite_steps=2"), run=False
    )
    with pytest.warns(RuntimeWarning), pytest.raises(NonFiniteLossError, match=r"2 step\(s\) in a row"):
        cli.trainer.fit(cli.model, cli.datamodule)


@pytest.mark.slow
@pytest.mark.parametrize(
    "prompts_per_step, max_steps",
    # the tiny config saves every 2 updates and has 8 prompts: with 4 a step the step-2 checkpoint ends epoch 0;
    # with 2 a step (4 steps an epoch) it is mid-epoch, and the run goes on past the epoch's end
    [(4, 4), (2, 6)],
    ids=["end_of_epoch", "mid_epoch"],
)
def test_resume_from_a_checkpoint_continues_exactly(tmp_path, tiny_args, prompts_per_step, max_steps):
    def cli(name, steps):
        args = ("--trainer.logger=false", f"--data.prompts_per_step={prompts_per_step}", f"--trainer.max_steps={steps}")
        return build_cli(tiny_args(tmp_path / name, *args), run=False)

    straight = cli("straight", max_steps)
    straight.trainer.fit(straight.model, straight.datamodule)
    first = cli("first", 2)
    first.trainer.fit(first.model, first.datamodule)
    ckpt = next((tmp_path / "first").rglob("last.ckpt"))
    resumed = cli("resumed", max_steps)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*dataloader is not resumable.*")
        resumed.trainer.fit(resumed.model, resumed.datamodule, ckpt_path=str(ckpt))
    assert resumed.trainer.global_step == max_steps and resumed.trainer.current_epoch == straight.trainer.current_epoch
    for role in [GENERATOR, FAKE, SURROGATE, GENERATOR_EMA, SURROGATE_OLD]:
        a, b = straight.model.backbone.roles.parameters_of(role), resumed.model.backbone.roles.parameters_of(role)
        assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b)), role


@pytest.mark.slow
def test_one_seed_varies_the_whole_run(tmp_path, tiny_args, monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # restored after the test
    # --seed_everything alone sets the rollout noise and the prompt shuffling; with a logger, Lightning merges
    # the module's and the datamodule's hyperparameters, which must not share a key with different values
    cli = build_cli(tiny_args(tmp_path / "a", "--seed_everything=3", "--trainer.max_steps=1"), run=False)
    assert cli.model.hparams.noise_seed == 3 and cli.datamodule.hparams.shuffle_seed == 3
    cli.trainer.fit(cli.model, cli.datamodule)
    cli = build_cli(
        tiny_args(tmp_path / "b", "--seed_everything=3", "--model.noise_seed=5", "--trainer.max_steps=1"),
        run=False,
    )
    assert cli.model.hparams.noise_seed == 5 and cli.datamodule.hparams.shuffle_seed == 3
    cli.trainer.fit(cli.model, cli.datamodule)
    saved = torch.load(next((tmp_path / "b").rglob("*.ckpt")), weights_only=False)["hyper_parameters"]
    assert saved["noise_seed"] == 5  # the resolved seed is recorded


@pytest.mark.slow
def test_predict_returns_generator_ema_images(tmp_path, tiny_args):
    cli = build_cli(tiny_args(tmp_path, "--trainer.logger=false"), run=False)
    batches = cli.trainer.predict(cli.model, datamodule=cli.datamodule)
    images = torch.cat(batches)
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)


def _role_params(cli):
    return {
        r: [p.detach().clone() for p in cli.model.backbone.roles.parameters_of(r)] for r in [GENERATOR, FAKE, SURROGATE]
    }


@pytest.mark.slow
def test_scoring_in_the_background_changes_nothing(tmp_path, tiny_args):
    results = {}
    for overlap in ("false", "true", "process"):
        cli = build_cli(
            tiny_args(
                tmp_path / overlap,
                "--trainer.logger=false",
                "--trainer.max_steps=2",
                f"--model.overlap_rewards={overlap}",
            ),
            run=False,
        )
        cli.trainer.fit(cli.model, cli.datamodule)
        results[overlap] = _role_params(cli)
        metrics = cli.trainer.logged_metrics
        assert metrics["time/reward_s"] > 0 and metrics["time/reward_wait_s"] >= 0, overlap
        assert not cli.model.scorer.active  # the thread or worker process is shut down at the end
    for overlap in ("true", "process"):
        for role in results["false"]:
            assert all(torch.equal(a, b) for a, b in zip(results["false"][role], results[overlap][role])), (
                overlap,
                role,
            )


@pytest.mark.slow
def test_two_rewards_combined_by_advantages(tmp_path, tiny_args):
    rewards = (
        "[{name: jpeg_compressibility, weight: 0.5}, "
        "{name: jpeg_compressibility, init_args: {quality: 50}, weight: 2.0}]"
    )
    cli = build_cli(
        tiny_args(
            tmp_path,
            "--trainer.max_steps=1",
            f"--model.rewards={rewards}",
            "--model.advantages.reward_combination=advantages",
        ),
        run=False,
    )
    cli.trainer.fit(cli.model, cli.datamodule)
    metrics = cli.trainer.logged_metrics
    assert "reward/jpeg_compressibility_0/mean" in metrics and "reward/jpeg_compressibility_1/mean" in metrics
    assert torch.isfinite(metrics["loss/surrogate"])


@pytest.mark.slow
def test_generator_and_fake_start_from_a_tdm_run_checkpoint(tmp_path, tiny_args):
    first = build_cli(
        tiny_args(tmp_path / "tdm", "--trainer.logger=false", "--trainer.max_steps=2", "--model.rewards=null"),
        run=False,
    )
    first.trainer.fit(first.model, first.datamodule)
    ckpt = next((tmp_path / "tdm").rglob("last.ckpt"))
    second = build_cli(
        tiny_args(
            tmp_path / "r1",
            f"--model.backbone.init_args.generator_checkpoint={ckpt}",
            f"--model.backbone.init_args.fake_checkpoint={ckpt}",
        ),
        run=False,
    )
    second.model.configure_model()
    trained, roles = first.model.backbone.roles, second.model.backbone.roles
    for role in (GENERATOR, GENERATOR_EMA):
        assert all(
            torch.equal(a, b) for a, b in zip(trained.parameters_of(GENERATOR_EMA), roles.parameters_of(role))
        ), role
    fake_b = [p for n, p in trained.base.named_parameters() if f".lora_B.{FAKE}." in n]
    assert fake_b and any(p.abs().sum() > 0 for p in fake_b)  # the fake score was trained ...
    assert all(
        torch.equal(a, b) for a, b in zip(trained.parameters_of(FAKE), roles.parameters_of(FAKE))
    )  # ... and loaded
    # the checkpoint records its adapters' alpha: another one is refused before any model loads
    with pytest.raises(ValueError, match="trained with lora_alpha 8 but lora_alpha is 16: set lora_alpha: 8"):
        build_cli(
            tiny_args(
                tmp_path / "r3",
                f"--model.backbone.init_args.generator_checkpoint={ckpt}",
                "--model.backbone.init_args.lora_alpha=16",
            ),
            run=False,
        )
    # a checkpoint of this project without the role is refused, naming the key, the file and what it has
    no_fake = tmp_path / "no_fake.pt"
    torch.save(
        {k: v for k, v in torch.load(ckpt, weights_only=True)["state_dict"].items() if f".{FAKE}." not in k}, no_fake
    )
    with pytest.raises(
        ValueError, match=r"fake_checkpoint: .*no_fake\.pt holds no 'fake' adapter \(it has generator, generator_ema\)"
    ):
        build_cli(
            tiny_args(tmp_path / "r2", f"--model.backbone.init_args.fake_checkpoint={no_fake}"),
            run=False,
        )


@pytest.mark.slow
def test_frozen_surrogate_stops_changing(tmp_path, tiny_args):
    seen = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            seen.append([p.detach().clone() for p in module.backbone.roles.parameters_of(SURROGATE)])

    cli = build_cli(
        tiny_args(
            tmp_path,
            "--trainer.logger=false",
            "--trainer.max_steps=3",
            "--model.surrogate_loss.freeze_after=1",
        ),
        run=False,
    )
    snap = Snapshot()
    cli.trainer.callbacks += [snap, Watch()]
    cli.trainer.fit(cli.model, cli.datamodule)
    assert _changed(snap.roles[SURROGATE], seen[0])  # trained in the first step ...
    assert not _changed(seen[0], seen[2])  # ... then frozen
