"""Built-in rewards inside `tdmr1 fit` on the tiny model: validated before models load, scored in training."""

from pathlib import Path

import pytest

from tdmr1_lightning.cli import build_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.fixture
def fit_args(tiny_sd3_path, quiet_trainer):
    """`build(root, prompts, *extra)`: `tdmr1 fit` arguments of a quiet tiny run on `prompts` in `root`, then extra."""

    def build(root, prompts, *extra):
        return [
            "--config",
            "configs/tiny.yaml",
            f"--model.backbone.init_args.directory={tiny_sd3_path}",
            f"--trainer.default_root_dir={root}",
            f"--data.train_prompts={prompts}",
            "--data.val_prompts=null",
            *quiet_trainer,
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.callbacks=[]",
            *extra,
        ]

    return build


@pytest.mark.slow
def test_ocr_prompt_without_target_fails_before_models_load(tmp_path, fit_args, monkeypatch):
    from tdmr1_lightning.backbones.sd3 import SD3Backbone

    monkeypatch.setattr(SD3Backbone, "build", lambda self, roles: pytest.fail("models loaded before the prompt check"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a sign that says "OPEN"\na plain red circle\nA poster reading "SALE"\na card that says "HI"\n')
    cli = build_cli(fit_args(tmp_path, prompts, "--model.rewards=[{name: ocr}]"), run=False)
    with pytest.raises(ValueError, match=r"reward 'ocr': prompt 1 'a plain red circle'"):
        cli.trainer.fit(cli.model, cli.datamodule)


def test_geneval_metadata_missing_a_field_fails_before_models_load(tmp_path, fit_args, monkeypatch):
    from tdmr1_lightning.backbones.sd3 import SD3Backbone

    monkeypatch.setattr(
        SD3Backbone, "build", lambda self, roles: pytest.fail("models loaded before the metadata check")
    )
    prompts = tmp_path / "geneval.jsonl"
    prompts.write_text(
        '{"prompt": "a photo of a dog", "tag": "single_object", "include": [{"class": "dog", "count": 1}]}\n'
        '{"prompt": "a photo of a cat", "tag": "single_object"}\n' * 2
    )
    cli = build_cli(
        fit_args(tmp_path, prompts, "--model.rewards=[{name: geneval}]", "--data.prompts_per_step=2"),
        run=False,
    )
    with pytest.raises(ValueError, match=r"reward 'geneval': prompt 1 'a photo of a cat'.*include"):
        cli.trainer.fit(cli.model, cli.datamodule)


@pytest.mark.slow
def test_one_step_with_the_real_ocr_reward(tmp_path, fit_args):
    from tdmr1_rewards.ocr_prompts import generate_ocr_prompts, write_prompts

    prompts = tmp_path / "ocr.jsonl"
    write_prompts(generate_ocr_prompts(8, seed=0), prompts)
    cli = build_cli(fit_args(tmp_path, prompts, "--model.rewards=[{name: ocr}]", "--trainer.max_steps=1"), run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    metrics = cli.trainer.logged_metrics
    assert cli.trainer.global_step == 1
    assert metrics["reward/valid_fraction"] == 1.0 and 0.0 <= float(metrics["reward/mean"]) <= 1.0
