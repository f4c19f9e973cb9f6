"""The shapes world as training parts: data module batches, the registered reward, the teacher config."""

import random
from pathlib import Path

import pytest
import torch

from tdmr1_lightning.cli import build_cli
from tdmr1_lightning.registry import RewardSpec
from tdmr1_lightning.shapes.training import ShapesDataModule
from tdmr1_lightning.shapes.world import World, is_held_out, render, sample_prompt, scene_for

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
    two = ShapesDataModule(batch_size=8, steps_per_epoch=4, held_out_fraction=0.3, held_out_split="compositions",
                           held_out_count_partners=2).dataset.held_out
    assert {n for n, _ in two.count_shape} == {2, 3} and {n for n, _ in held.count_shape} == {3}
    triples = ShapesDataModule(batch_size=8, steps_per_epoch=8, held_out_fraction=0.3, held_out_split="compositions",
                               held_out_count_triples=True).dataset
    assert triples.held_out.count_binding and not triples.held_out.count_shape
    assert not any(is_held_out(triples.record(i), triples.held_out) for i in range(64))


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


def test_teacher_config_trains_and_exports(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cli = build_cli([
        "--config", "configs/shapes/teacher.yaml",
        f"--model.init_args.backbone.init_args.directory={tmp_path / 'init'}",
        "--model.init_args.backbone.init_args.num_layers=1", f"--model.init_args.export_dir={tmp_path / 'pipeline'}",
        "--data.init_args.batch_size=4", "--trainer.max_steps=3", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false",
    ], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 3
    assert (tmp_path / "pipeline" / "transformer").is_dir() and (tmp_path / "pipeline" / "model_index.json").is_file()


def test_reward_refuses_prompts_outside_the_world_naming_the_word():
    from tdmr1_lightning.shapes.training import ShapesGenEval
    from tdmr1_lightning.shapes.world import parse_prompt

    good = parse_prompt("a photo of a red circle")
    bad = {**good, "prompt": "a photo of a purple circle"}
    reward = ShapesGenEval(mode="strict")
    reward.validate([good["prompt"]], [good])
    with pytest.raises(ValueError, match=r"prompt 2 'a photo of a purple circle'.*purple"):
        reward.validate([good["prompt"], bad["prompt"]], [good, bad])
