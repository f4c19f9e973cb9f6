"""Every shipped YAML parses against the real signatures, and bad input fails early with a clear message."""

import re
from pathlib import Path

import pytest

from tdmr1_lightning.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "sd35_tdm.yaml"}


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_parses_against_the_signatures(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: tdmr1_lightning.backbones" in printed
    assert "num_steps: 4" in printed or "FlowMatchingModule" in printed


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_opens_with_a_comment_block(config):
    head = config.read_text().splitlines()[:12]
    assert head[0].startswith("# ") and any("Launch:" in line and "tdmr1 fit --config" in line for line in head)


def _fit_args(tmp_path, tiny_sd3_path, *extra):
    return [
        "--config",
        "configs/tiny.yaml",
        f"--model.backbone.init_args.directory={tiny_sd3_path}",
        f"--trainer.default_root_dir={tmp_path}",
        *extra,
    ]


def _never_build(monkeypatch):
    from tdmr1_lightning.backbones.sd3 import SD3Backbone

    def refuse(self, roles):
        raise AssertionError("models were loaded before the bad input was reported")

    monkeypatch.setattr(SD3Backbone, "build", refuse)


def test_unknown_reward_is_named_with_the_installed_ones(tmp_path, tiny_sd3_path, monkeypatch):
    _never_build(monkeypatch)
    with pytest.raises(ValueError, match=r"unknown reward 'no_such_reward'; installed rewards: .*jpeg_compressibility"):
        build_cli(_fit_args(tmp_path, tiny_sd3_path, "--model.rewards=[{name: no_such_reward}]"), run=False)
    with pytest.raises(ValueError, match="NoSuchReward"):
        build_cli(
            _fit_args(tmp_path, tiny_sd3_path, "--model.rewards=[{class_path: tdmr1_lightning.reward.NoSuchReward}]"),
            run=False,
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,match",
    [
        ("--model.schedule.num_steps=0", "num_steps"),
        ("--model.schedule.shift=-1", "shift"),
        ("--model.batching.micro_batch_size=6", "micro_batch_size=6 does not hold whole groups"),
        ("--data.processes_per_group=2", r"processes_per_group=2 does not divide the world size \(1\)"),
        ("--data.train_prompts=configs/prompts/no_such_file.txt", "no_such_file.txt"),
    ],
)
def test_bad_values_fail_before_models_load(tmp_path, tiny_sd3_path, monkeypatch, override, match):
    _never_build(monkeypatch)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        cli = build_cli(_fit_args(tmp_path, tiny_sd3_path, override), run=False)
        cli.trainer.fit(cli.model, cli.datamodule)


def test_micro_batch_must_hold_whole_shares_of_groups(tmp_path, tiny_sd3_path, monkeypatch):
    # 4 processes sharing groups of 8 in pairs: each holds 4 samples of a group, so micro-batches of 3 cannot work
    from types import SimpleNamespace

    _never_build(monkeypatch)
    cli = build_cli(_fit_args(tmp_path, tiny_sd3_path, "--model.batching.micro_batch_size=3"), run=False)
    datamodule = SimpleNamespace(group_size=8, samples_per_group_local=4, samples_per_step_local=16, train_records=None)
    monkeypatch.setattr(type(cli.model), "trainer", property(lambda self: SimpleNamespace(datamodule=datamodule)))
    cli.model._trainer = object()
    with pytest.raises(ValueError, match=r"micro_batch_size=3 does not hold whole shares of a group \(4 samples"):
        cli.model.setup("fit")


def test_empty_prompt_file_fails_before_models_load(tmp_path, tiny_sd3_path, monkeypatch):
    _never_build(monkeypatch)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="empty.txt"):
        build_cli(_fit_args(tmp_path, tiny_sd3_path, f"--data.train_prompts={empty}"), run=False)


def test_unresolvable_model_fails_before_models_load(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception, match="not in the hub cache"):
        build_cli(
            [
                "--config",
                "configs/sd35_tdm.yaml",
                "--data.train_prompts=configs/prompts/tiny_train.txt",
                f"--trainer.default_root_dir={tmp_path}",
                "--trainer.accelerator=cpu",
                "--trainer.devices=1",
                "--trainer.strategy=auto",
                "--trainer.precision=32-true",
            ],
            run=False,
        )


def test_tdmr1_dispatches_evaluate(capsys):
    from tdmr1_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0 and "usage: tdmr1 evaluate" in capsys.readouterr().out


def test_console_script_parses_the_command_line_without_warnings(monkeypatch, capsys, recwarn):
    from tdmr1_lightning.cli import main

    monkeypatch.setattr("sys.argv", ["tdmr1", "fit", "--config", "configs/tiny.yaml", "--print_config"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    assert "num_steps: 4" in capsys.readouterr().out
    assert not [w for w in recwarn if "args" in str(w.message)], [str(w.message) for w in recwarn]


def test_shapes_configs_use_the_shipped_models_and_the_world_vocabulary():
    import yaml

    from tdmr1_lightning.shapes.prompts import enumerate_prompts
    from tdmr1_lightning.shapes.world import World

    teacher = yaml.safe_load((ROOT / "configs/shapes/teacher.yaml").read_text())
    words = set(teacher["model"]["init_args"]["backbone"]["init_args"]["words"])
    vocabulary = {w for r in enumerate_prompts(World()) for w in r["prompt"].split()}
    assert vocabulary <= words, f"words missing from the teacher's tokenizer: {sorted(vocabulary - words)}"
    for name in ("tdm.yaml", "tdmr1.yaml"):
        backbone = yaml.safe_load((ROOT / "configs/shapes" / name).read_text())["model"]["backbone"]["init_args"]
        folder = ROOT / "configs/shapes"  # input paths in a config are relative to its folder
        assert (folder / backbone["pretrained_model"] / "model_index.json").is_file()
        if "generator_checkpoint" in backbone:
            assert (folder / backbone["generator_checkpoint"]).is_file()


def test_shapes_teacher_trains_on_the_shipped_prompt_split():
    """The teacher's data avoids exactly the combinations of the shipped test prompts (world.json), in
    the same world (grid, sizes) that the TDM-R1 config's rewards score."""
    import json

    import yaml

    from tdmr1_lightning.shapes.splits import held_out_combinations, is_held_out
    from tdmr1_lightning.shapes.world import World

    shipped = json.loads((ROOT / "configs/prompts/shapes/world.json").read_text())
    data = yaml.safe_load((ROOT / "configs/shapes/teacher.yaml").read_text())["data"]["init_args"]
    world = World(**shipped["world"])
    partners, triples = data.get("held_out_count_partners", 1), data.get("held_out_count_triples", False)
    held = held_out_combinations(
        world, data["held_out_fraction"], data["held_out_seed"], data["held_out_split"], partners, triples
    )
    assert {k: v for k, v in held.to_dict().items() if v} == {k: v for k, v in shipped["held_out"].items() if v}
    assert data["held_out_split"] == shipped["split"]
    assert (partners, triples) == (shipped.get("count_partners", 1), shipped.get("count_triples", False))
    assert World(**data["world"]) == world
    tdmr1 = yaml.safe_load((ROOT / "configs/shapes/tdmr1.yaml").read_text())["model"]
    for spec in tdmr1["rewards"] + tdmr1["eval_rewards"]:
        assert World(**((spec.get("init_args") or {}).get("world") or {})) == world, spec
    records = [json.loads(line) for line in (ROOT / "configs/prompts/shapes/test.jsonl").read_text().splitlines()]
    assert len(records) >= 200 and all(is_held_out(r, held) for r in records)


@pytest.mark.slow
def test_config_paths_resolve_against_the_config_folder(tmp_path, tiny_sd3_path, quiet_trainer, monkeypatch):
    # from another working directory, the config's own relative paths still name its files; the run's saved
    # config names them absolutely; a path given on the command line is relative to the working directory
    monkeypatch.chdir(tmp_path)
    config = (ROOT / "configs" / "tiny.yaml").resolve()
    args = [
        "--config",
        str(config),
        f"--model.backbone.init_args.directory={tiny_sd3_path}",
        "--trainer.default_root_dir=run",
        "--trainer.max_steps=1",
        *quiet_trainer,
    ]
    cli = build_cli(args, run=False)
    assert cli.datamodule.train_prompts == str(ROOT / "configs" / "prompts" / "tiny_train.txt")
    cli.trainer.fit(cli.model, cli.datamodule)
    saved = next((tmp_path / "run").rglob("config.yaml")).read_text()
    assert f"train_prompts: {ROOT / 'configs' / 'prompts' / 'tiny_train.txt'}" in saved
    (tmp_path / "mine.txt").write_text("a blue square\n")
    cli = build_cli([*args, "--data.train_prompts=mine.txt"], run=False)
    assert cli.datamodule.train_prompts == str(tmp_path / "mine.txt")
    # a missing file is named where it was looked for: beside its config
    (tmp_path / "sub").mkdir()
    bad = tmp_path / "sub" / "bad.yaml"
    bad.write_text(config.read_text().replace("prompts/tiny_train.txt", "prompts/nowhere.txt"))
    with pytest.raises(ValueError, match=f"{tmp_path / 'sub' / 'prompts' / 'nowhere.txt'}: prompt file does not exist"):
        build_cli(["--config", str(bad), *args[2:]], run=False)


@pytest.mark.parametrize("name", ["sd35_ocr.yaml", "sd35_geneval.yaml"])
def test_sd35_rl_configs_validate_held_out_prompts_every_60_updates(name):
    # algorithm 8.7: the generator EMA on held-out prompts of the task every 60 updates; the header writes them
    import yaml

    text = (ROOT / "configs" / name).read_text()
    config = yaml.safe_load(text)
    assert config["trainer"]["val_check_interval"] == 60 and config["trainer"]["check_val_every_n_epoch"] is None
    train, val = config["data"]["train_prompts"], config["data"]["val_prompts"]
    assert val and val != train
    assert (
        f"--out configs/{val} " in text and f"--exclude configs/{train}" in text
    )  # held out from the training prompts
    # the reference's geometry: a group of 24 shared by processes_per_group GPUs, one share a micro-batch
    assert (
        config["model"]["batching"]["micro_batch_size"] * config["data"]["processes_per_group"]
        == config["data"]["group_size"]
        == 24
    )


def _uncommented_settings(text: str) -> list[str]:
    """Keys of the model and data sections with no comment on their line or the line above (structure exempt)."""
    missing, section, previous = [], None, ""
    for number, line in enumerate(text.splitlines(), 1):
        top = re.match(r"^([a-z_]+):", line)
        if top:
            section = top.group(1)
        key = re.match(r"^\s+(?:- )?([a-z_]+):(.*)$", line)
        structural = key is not None and (
            key.group(1) in ("class_path", "name") or (key.group(1) == "init_args" and not key.group(2).strip())
        )
        if section in ("model", "data") and key and not structural:
            if "#" not in line and not previous.strip().startswith("#"):
                missing.append(f"line {number}: {line.strip()}")
        previous = line
    return missing


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_setting_of_a_shipped_config_is_commented(config):
    assert _uncommented_settings(config.read_text()) == []


def test_an_uncommented_setting_is_found():
    text = "model:\n  class_path: x.Y\n  num_steps: 4      # K\n  shift: 3.0\ndata:\n  # P\n  prompts_per_step: 8\n"
    assert _uncommented_settings(text) == ["line 4: shift: 3.0"]
