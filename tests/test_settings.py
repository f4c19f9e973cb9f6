"""The module's settings, grouped as the algorithm's sections: checks, the flat layout's errors, docs, resume."""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from tdmr1_lightning.settings import (
    GROUPS,
    MOVED,
    Batching,
    GeneratorLoss,
    Schedule,
    Stepping,
    SurrogateLoss,
    as_group,
    flat_settings,
)

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_of_the_flat_layout_has_one_place_in_a_group():
    targets = list(MOVED.values())
    fields = [f"{name}.{f.name}" for name, cls in GROUPS.items() for f in dataclasses.fields(cls)]
    assert sorted(targets) == sorted(fields)  # each field has one old name, each old name one field


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Schedule(num_steps=0), r"schedule\.num_steps \(K\) must be an integer >= 1, got 0"),
        (lambda: Schedule(shift=-1.0), r"schedule\.shift \(k\) must be a finite number > 0"),
        (lambda: GeneratorLoss(s_min_gen=1.0), r"generator_loss\.s_min_gen must be in \[0, 1\), got 1.0"),
        (lambda: SurrogateLoss(s_min_reward=-0.1), r"surrogate_loss\.s_min_reward must be in \[0, 1\)"),
        (lambda: Batching(micro_batch_size=0), r"batching\.micro_batch_size must be >= 1, got 0"),
        (lambda: Batching(boundaries_per_batch=0), r"batching\.boundaries_per_batch must be >= 1"),
        (lambda: Batching(rollout_batch_size=0), r"batching\.rollout_batch_size must be >= 1"),
        (lambda: Stepping(max_nonfinite_steps=0), r"stepping\.max_nonfinite_steps must be >= 1"),
    ],
)
def test_a_value_out_of_range_is_named_with_its_group(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_a_group_from_a_mapping_and_its_unknown_key():
    assert as_group("surrogate_loss", {"beta": 2.0}) == SurrogateLoss(beta=2.0)
    assert as_group("schedule", None) == Schedule()
    with pytest.raises(ValueError, match=r"model\.surrogate_loss has no setting 'betta' \(its settings: beta, "):
        as_group("surrogate_loss", {"betta": 2.0})
    with pytest.raises(TypeError, match=r"model\.batching must be a Batching or a mapping"):
        as_group("batching", 24)


def test_the_module_checks_settings_across_groups_and_stores_them_as_plain_mappings():
    from tdmr1_lightning.module import TDMR1Module

    with pytest.raises(
        ValueError, match=r"batching\.boundaries_per_batch \(M\) must be in \[1, schedule\.num_steps=2\]"
    ):
        TDMR1Module(None, schedule=Schedule(num_steps=2), batching=Batching(boundaries_per_batch=3))
    module = TDMR1Module(None, surrogate_loss={"beta": 2.0}, batching=Batching(micro_batch_size=8))
    assert module.surrogate_loss.beta == 2.0 and module.rollout_batch_size == 8
    assert module.hparams["surrogate_loss"]["beta"] == 2.0 and module.hparams["batching"]["micro_batch_size"] == 8
    # plain YAML (hparams.yaml) and plain Python types (checkpoints load with weights_only)
    hparams = {k: v for k, v in module.hparams.items() if k != "noise_seed"}
    assert yaml.safe_load(yaml.safe_dump(hparams)) == hparams


def test_the_flat_layout_is_found_in_configs_and_arguments(tmp_path):
    config = tmp_path / "old.yaml"
    config.write_text("trainer: {max_steps: 2}\nmodel:\n  rewards: null\n  beta: 2.0\n  micro_batch_size: 8\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("model:\n  class_path: tdmr1_lightning.module.TDMR1Module\n  init_args:\n    num_steps: 2\n")
    messages = flat_settings(
        ["fit", "--config", str(config), f"--config={nested}", "--model.cfg_weight=0.5", "--model.schedule.shift=2"]
    )
    assert messages == [
        f"{config}, line 4: model.beta is now model.surrogate_loss.beta",
        f"{config}, line 5: model.micro_batch_size is now model.batching.micro_batch_size",
        f"{nested}, line 4: model.num_steps is now model.schedule.num_steps",
        "--model.cfg_weight is now --model.generator_loss.cfg_weight",
    ]
    assert flat_settings(["--config", "configs/tiny.yaml", "--model.surrogate_loss.beta=2"]) == []
    # another module's own flat settings (the teacher's pretraining has a shift) are not the old layout
    assert flat_settings(["--config", "configs/shapes/teacher.yaml", "--model.init_args.shift=2.0"]) == []


def test_the_cli_refuses_the_flat_layout_before_anything_loads(tmp_path):
    from tdmr1_lightning.cli import build_cli

    config = tmp_path / "old.yaml"
    config.write_text("model:\n  freeze_surrogate_after: 20\n")
    with pytest.raises(
        ValueError, match=r"old\.yaml, line 2: model\.freeze_surrogate_after is now model\.surrogate_loss\.freeze_after"
    ):
        build_cli(["--config", "configs/tiny.yaml", "--config", str(config)], run=False)
    with pytest.raises(ValueError, match=r"--model\.advantage_clip is now --model\.advantages\.clip"):
        build_cli(["--config", "configs/tiny.yaml", "--model.advantage_clip=3"], run=False)


def test_configuration_docs_list_every_setting_with_its_default_and_old_name():
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = {
        m.group(1): m
        for m in re.finditer(r"^\| `([a-z_]+\.[a-z_]+)` \| `([^`]*)` \| .* \| `([a-z_]+)` \|$", text, re.M)
    }
    for name, cls in GROUPS.items():
        for field in dataclasses.fields(cls):
            key = f"{name}.{field.name}"
            assert key in rows, key
            default = "null" if field.default is None else str(field.default)
            assert rows[key].group(2) == default and MOVED[rows[key].group(3)] == key, key


@pytest.mark.slow
def test_a_checkpoint_in_the_flat_layout_resumes_with_its_settings(tmp_path, tiny_sd3_path, quiet_trainer):
    """A 0.1 checkpoint's flat hyperparameters (applied by ``--ckpt_path``) are read into their groups."""
    from tdmr1_lightning.cli import build_cli

    args = [
        "--config",
        "configs/tiny.yaml",
        f"--model.backbone.init_args.directory={tiny_sd3_path}",
        f"--trainer.default_root_dir={tmp_path}",
        *quiet_trainer,
        "--trainer.enable_checkpointing=true",
    ]
    build_cli(["fit", *args, "--trainer.max_steps=1"])
    (saved,) = tmp_path.rglob("*.ckpt")
    checkpoint = torch.load(saved, weights_only=True)
    grouped = checkpoint["hyper_parameters"]
    old_name = {new: old for old, new in MOVED.items()}
    flat = {k: v for k, v in grouped.items() if k not in GROUPS}
    for group in GROUPS:
        flat.update({old_name[f"{group}.{field}"]: value for field, value in grouped[group].items()})
    flat["beta"], flat["trust_threshold"] = 3.0, 0.07  # values the checkpoint's hyperparameters impose
    checkpoint["hyper_parameters"] = flat
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = build_cli(["fit", *args, "--trainer.max_steps=2", f"--ckpt_path={old}"])
    assert any("flat layout" in str(w.message) and "beta -> surrogate_loss.beta" in str(w.message) for w in caught)
    assert cli.model.surrogate_loss.beta == 3.0 and cli.model.surrogate_loss.trust_threshold == 0.07
    assert cli.trainer.global_step == 2
