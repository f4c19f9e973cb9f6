"""The shapes world as training parts: data module batches, the registered reward, the teacher config."""

import json
import random
import warnings
from pathlib import Path

import pytest
import torch

from tdmr1_lightning.cli import build_cli
from tdmr1_lightning.registry import RewardSpec
from tdmr1_lightning.shapes.prompts import sample_prompt, scene_for
from tdmr1_lightning.shapes.scenes import render
from tdmr1_lightning.shapes.splits import is_held_out
from tdmr1_lightning.shapes.training import ShapesDataModule
from tdmr1_lightning.shapes.world import World

ROOT = Path(__file__).resolve().parents[2]


def test_data_module_batches_avoid_held_out_combinations():
    dm = ShapesDataModule(batch_size=8, steps_per_epoch=4)
    batches = list(dm.train_dataloader())
    assert len(batches) == 4
    batch = batches[0]
    assert batch["images"].shape == (8, 3, 32, 32) and batch["images"].dtype == torch.uint8
    held = dm.dataset.held_out
    records = [{"prompt": p, **m} for b in batches for p, m in zip(b["prompts"], b["metadata"])]
    assert not any(is_held_out(r, held) for r in records)
    comp = ShapesDataModule(batch_size=8, steps_per_epoch=4, held_out_fraction=0.3, held_out_split="compositions")
    held = comp.dataset.held_out
    assert held.color_pair and not held.color_shape
    assert not any(is_held_out(comp.dataset.record(i), held) for i in range(32))
    two = ShapesDataModule(
        batch_size=8, steps_per_epoch=4, held_out_fraction=0.3, held_out_split="compositions", held_out_count_partners=2
    ).dataset.held_out
    assert {n for n, _ in two.count_shape} == {2, 3} and {n for n, _ in held.count_shape} == {3}
    triples = ShapesDataModule(
        batch_size=8,
        steps_per_epoch=8,
        held_out_fraction=0.3,
        held_out_split="compositions",
        held_out_count_triples=True,
    ).dataset
    assert triples.held_out.count_binding and not triples.held_out.count_shape
    assert not any(is_held_out(triples.record(i), triples.held_out) for i in range(64))


def test_data_module_order_is_a_function_of_the_epoch_and_shared_between_processes():
    from types import SimpleNamespace

    def indices(rank=0, world=1, epoch=0):
        dm = ShapesDataModule(batch_size=2, steps_per_epoch=4, held_out_fraction=0.0)
        dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)  # Lightning does, before each epoch
        return [dm.dataset.record(i)["prompt"] for i in loader.sampler], [b["prompts"] for b in loader]

    order, batches = indices()
    assert [p for b in batches for p in b] == order and len(batches) == 4
    assert indices()[0] == order and indices(epoch=1)[0] != order  # reshuffled each epoch, the same in every run
    (r0, b0), (r1, b1) = indices(0, 2), indices(1, 2)
    assert len(b0) == len(b1) == 2 and sorted(r0 + r1) == sorted(order)  # two processes split the epoch


def test_registered_reward_scores_rendered_scenes():
    reward = RewardSpec(name="shapes_geneval", init_args={"mode": "strict"}).build()
    world, rng = World(), random.Random(0)
    records = [sample_prompt(rng, world, tag) for tag in world.tags]
    images = torch.stack([render(scene_for(r, rng, world), None, world) for r in records])
    metadata = [{k: v for k, v in r.items() if k != "prompt"} for r in records]
    out = reward(images, [r["prompt"] for r in records], metadata)
    assert out.scores.tolist() == [1.0] * len(records)
    blank = torch.full_like(images, 255)
    assert reward(blank, [r["prompt"] for r in records], metadata).scores.sum() == 0


@pytest.mark.slow
def test_teacher_config_trains_and_exports(tmp_path, quiet_trainer, monkeypatch):
    monkeypatch.chdir(ROOT)
    cli = build_cli(
        [
            "--config",
            "configs/shapes/teacher.yaml",
            f"--model.init_args.backbone.init_args.directory={tmp_path / 'init'}",
            "--model.init_args.backbone.init_args.num_layers=1",
            f"--model.init_args.export_dir={tmp_path / 'pipeline'}",
            "--data.init_args.batch_size=4",
            "--trainer.max_steps=3",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            *quiet_trainer,
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 3
    assert (tmp_path / "pipeline" / "transformer").is_dir() and (tmp_path / "pipeline" / "model_index.json").is_file()


def test_reward_refuses_prompts_outside_the_world_naming_the_word():
    from tdmr1_lightning.shapes.prompts import parse_prompt
    from tdmr1_lightning.shapes.training import ShapesGenEval

    good = parse_prompt("a photo of a red circle")
    bad = {**good, "prompt": "a photo of a purple circle"}
    reward = ShapesGenEval(mode="strict")
    reward.validate([good["prompt"]], [good])
    with pytest.raises(ValueError, match=r"prompt 2 'a photo of a purple circle'.*purple"):
        reward.validate([good["prompt"], bad["prompt"]], [good, bad])


@pytest.mark.slow
@pytest.mark.parametrize("stop", [2, 3], ids=["mid-epoch", "end-of-epoch"])
def test_teacher_run_resumed_from_a_checkpoint_equals_the_straight_run(tmp_path, quiet_trainer, monkeypatch, stop):
    """``--ckpt_path`` continues the scene order and the training draws: weights and EMA as if never stopped."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    monkeypatch.chdir(ROOT)

    def cli(name, max_steps):
        every_step = {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",  # as a long run's every 500 steps
            "init_args": {"every_n_train_steps": 1, "save_top_k": -1, "dirpath": str(tmp_path / name / "steps")},
        }
        return build_cli(
            [
                "--config",
                "configs/shapes/teacher.yaml",
                f"--trainer.callbacks+={json.dumps(every_step)}",
                f"--model.init_args.backbone.init_args.directory={tmp_path / 'init'}",
                "--model.init_args.backbone.init_args.num_layers=1",
                "--model.init_args.export_dir=null",
                "--data.init_args.batch_size=4",
                "--data.init_args.steps_per_epoch=3",
                f"--trainer.max_steps={max_steps}",
                f"--trainer.default_root_dir={tmp_path / name}",
                "--trainer.logger=false",
                *quiet_trainer,
            ],
            run=False,
        )

    straight = cli("straight", 5)
    straight.trainer.fit(straight.model, straight.datamodule)
    first = cli("first", stop)
    first.trainer.fit(first.model, first.datamodule)
    resumed = cli("resumed", 5)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*dataloader is not resumable.*")
        (ckpt,) = (tmp_path / "first" / "steps").glob(f"*-step={stop}.ckpt")
        resumed.trainer.fit(resumed.model, resumed.datamodule, ckpt_path=str(ckpt))
    assert resumed.trainer.global_step == 5

    def ema(c):
        return next(cb for cb in c.trainer.callbacks if isinstance(cb, EMAWeightAveraging))._average_model.module

    for a, b in [(straight.model, resumed.model), (ema(straight), ema(resumed))]:
        sa, sb = a.backbone.roles.base.state_dict(), b.backbone.roles.base.state_dict()
        assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    # ... and the run did train: a resumed run that repeated the first steps' batches or draws would not match
    start = cli("start", 0).model
    start.configure_model()
    assert any(
        not torch.allclose(v, straight.model.backbone.roles.base.state_dict()[k])
        for k, v in start.backbone.roles.base.state_dict().items()
    )
