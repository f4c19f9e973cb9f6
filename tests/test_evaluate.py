"""`tdmr1 evaluate` on the tiny model: outputs, the per-tag table, GenEval columns, checkpoints, errors."""

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch
from torchvision.io import read_image

from tdmr1_lightning import evaluation
from tdmr1_lightning.backbones.base import GENERATOR_EMA, TEACHER
from tdmr1_lightning.cli import build_cli
from tdmr1_lightning.evaluation import (
    EvaluationError,
    format_table,
    images_per_prompt_by_tag,
    main,
    mean_and_se,
    sample_images,
    sample_noise,
    summarise,
    wilson_interval,
)
from tdmr1_lightning.schedule import step_boundaries

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "tiny.yaml")

# Two GenEval tags, uneven: 2 single_object prompts, 1 counting prompt. `ok` / `valid` drive the fake reward.
RECORDS = [
    {"prompt": "a photo of a cat", "tag": "single_object", "ok": True},
    {"prompt": "a photo of a dog", "tag": "single_object", "ok": False},
    {"prompt": "a photo of three apples", "tag": "counting", "ok": True, "valid": False},
]

FAKE_REWARD = '''
import torch
from tdmr1_lightning.reward import Reward, RewardOutput


class FakeGenEval(Reward):
    """GenEval-like: `correct` from the prompt's `ok`, invalid where `valid` is false."""

    def validate(self, prompts, metadata):
        for prompt, meta in zip(prompts, metadata):
            if "ok" not in meta:
                raise ValueError(f"prompt {prompt!r}: missing field 'ok'")

    def score(self, images, prompts, metadata):
        correct = torch.tensor([float(m["ok"]) for m in metadata])
        valid = torch.tensor([bool(m.get("valid", True)) for m in metadata])
        return RewardOutput(scores=0.5 * correct, valid=valid,
                            details={"correct": correct, "soft": 0.5 * correct, "tag": [m["tag"] for m in metadata],
                                     "reasons": ["" if m["ok"] else f"no {m['tag']}" for m in metadata]})
'''


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written outside --out


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


@pytest.fixture
def fake_reward(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "fake_geneval_reward.py").write_text(textwrap.dedent(FAKE_REWARD))
    monkeypatch.syspath_prepend(str(folder))
    return "fake_geneval_reward.FakeGenEval"


def base_args(tiny_sd3_path, prompts, *extra):
    return [
        "--config",
        CONFIG,
        "--prompts",
        str(prompts),
        "--no-progress",
        "--override",
        f"--model.backbone.init_args.directory={tiny_sd3_path}",
        *extra,
    ]


@pytest.fixture
def tiny_cli(tiny_sd3_path, quiet_trainer):
    """`build(root, *extra)`: the CLI of a quiet tiny `tdmr1 fit` in `root` without a logger (not run)."""

    def build(root, *extra):
        return build_cli(
            [
                "--config",
                CONFIG,
                f"--model.backbone.init_args.directory={tiny_sd3_path}",
                f"--data.train_prompts={ROOT / 'configs/prompts/tiny_train.txt'}",
                "--data.val_prompts=null",
                f"--trainer.default_root_dir={root}",
                "--trainer.logger=false",
                *quiet_trainer,
                *extra,
            ],
            run=False,
        )

    return build


def table_rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]


def read_pngs(out: Path) -> dict[str, torch.Tensor]:
    return {str(p.relative_to(out)): read_image(str(p)) for p in sorted((out / "images").rglob("*.png"))}


# ------------------------------------------------------------------------------------------ end to end


def test_generator_ema_writes_table_results_and_images(tmp_path, tiny_sd3_path, prompts, capsys):
    out = tmp_path / "out"
    assert (
        main(base_args(tiny_sd3_path, prompts, "--images-per-prompt", "2", "--out", str(out), "--save-images", "each"))
        == 0
    )
    printed = capsys.readouterr().out
    table = (out / "table.md").read_text()
    assert table.strip() in printed

    rows = table_rows(table)
    assert rows[0] == ["metric", "Single Obj.", "Counting", "Overall"]  # GenEval's column order and names
    assert rows[2] == ["samples", "4", "2", "6"]
    assert rows[3][0] == "jpeg_compressibility score" and len(rows) == 4  # the config's reward; no accuracy row

    results = json.loads((out / "results.json").read_text())
    assert (results["role"], results["steps"], results["guidance"], results["seed"]) == (GENERATOR_EMA, 4, 1.0, 0)
    assert (results["num_prompts"], results["images_per_prompt"], results["num_samples"]) == (3, 2, 6)
    assert results["checkpoint"] is None and results["prompts"] == str(prompts) and results["config"] == CONFIG
    assert results["rewards"] == [{"name": "jpeg_compressibility", "init_args": {"quality": 95}, "weight": 1.0}]
    assert set(results["timings"]) >= {"load_s", "sample_s", "score_s", "total_s"}
    summary = results["summary"]
    assert summary["tags"] == ["single_object", "counting"]
    assert summary["num_samples"] == {"single_object": 4, "counting": 2, "overall": 6}
    jpeg = summary["rewards"]["jpeg_compressibility"]
    assert [jpeg["per_tag"][t]["valid"] for t in summary["tags"]] == [4, 2] and jpeg["overall"]["valid"] == 6
    assert jpeg["overall"]["mean"] < 0 and jpeg["overall"]["se"] > 0 and "accuracy" not in jpeg

    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(s["prompt_index"], s["image_index"]) for s in lines] == [(p, k) for p in range(3) for k in range(2)]
    assert [s["tag"] for s in lines] == ["single_object"] * 4 + ["counting"] * 2
    pngs = read_pngs(out)
    assert len(pngs) == 6 and all(img.shape == (3, 32, 32) for img in pngs.values())
    assert not torch.equal(pngs["images/00000/samples/0000.png"], pngs["images/00000/samples/0001.png"])
    # GenEval's folder layout: each prompt folder's metadata.jsonl holds its record
    assert json.loads((out / "images/00002/metadata.jsonl").read_text()) == RECORDS[2]


@pytest.mark.slow
def test_teacher_at_n_steps_with_guidance(tmp_path, tiny_sd3_path, prompts, capsys):
    out = tmp_path / "out"
    args = [
        "--role",
        "teacher",
        "--steps",
        "2",
        "--guidance",
        "3",
        "--out",
        str(out),
        "--save-images",
        "grid",
        "--seed",
        "7",
    ]
    assert main(base_args(tiny_sd3_path, prompts, *args)) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["role"], results["steps"], results["guidance"], results["seed"], results["num_samples"]) == (
        TEACHER,
        2,
        3.0,
        7,
        3,
    )
    assert "**teacher**, 2 steps, guidance 3" in capsys.readouterr().out
    assert read_image(str(out / "grid.png")).shape[0] == 3

    # the default guidance is the config's guidance_scale, the default steps TEACHER_DEFAULT_STEPS
    assert main(base_args(tiny_sd3_path, prompts, "--role", "teacher", "--limit", "1", "--out", str(out))) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["steps"], results["guidance"], results["num_samples"]) == (evaluation.TEACHER_DEFAULT_STEPS, 4.5, 1)

    # the single counting prompt is sampled 3 times, the two single_object prompts twice each
    assert main(base_args(tiny_sd3_path, prompts, "--steps", "1", "--min-samples-per-tag", "3", "--out", str(out))) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["num_samples"] == {"single_object": 4, "counting": 3, "overall": 7}
    assert results["min_samples_per_tag"] == 3 and "at least 3 a tag" in capsys.readouterr().out


def test_fake_geneval_reward_gives_accuracy_columns(tmp_path, tiny_sd3_path, prompts, fake_reward, capsys):
    out = tmp_path / "out"
    rewards = f"[{{class_path: {fake_reward}}}, {{name: jpeg_compressibility, weight: 0.5}}]"
    assert (
        main(base_args(tiny_sd3_path, prompts, "--rewards", rewards, "--images-per-prompt", "2", "--out", str(out)))
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    fake = results["summary"]["rewards"]["FakeGenEval"]
    acc = fake["accuracy"]
    # single_object: the cat right twice, the dog wrong twice; counting: both samples invalid
    assert acc["per_tag"]["single_object"] == {
        "n": 4,
        "correct": 2,
        "fraction": 0.5,
        "ci95": pytest.approx(list(wilson_interval(2, 4))),
    }
    assert acc["per_tag"]["counting"]["n"] == 0 and acc["per_tag"]["counting"]["fraction"] is None
    assert acc["overall"]["value"] == 0.5 and acc["overall"]["num_images"] == {"single_object": 4}
    assert fake["per_tag"]["counting"]["valid"] == 0 and fake["overall"] == {
        "n": 6,
        "valid": 4,
        "mean": 0.25,
        "se": pytest.approx(0.5 / math.sqrt(12)),
    }
    assert (
        results["rewards"][0] == {"class_path": fake_reward}
        and results["summary"]["rewards"]["jpeg_compressibility"]["weight"] == 0.5
    )

    rows = table_rows(capsys.readouterr().out)
    assert rows[0] == ["metric", "Single Obj.", "Counting", "Overall"]
    labels = [r[0] for r in rows[2:]]
    assert labels == [
        "samples",
        "FakeGenEval accuracy",
        "FakeGenEval score",
        "FakeGenEval valid",
        "jpeg_compressibility score",
    ]
    assert rows[3] == ["FakeGenEval accuracy", "0.500 [0.150, 0.850]", "–", "0.500 [0.150, 0.850]"]
    assert rows[5] == ["FakeGenEval valid", "4/4", "0/2", "4/6"]
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["correct"]["FakeGenEval"] for s in lines] == [True, True, False, False, None, None]
    # the reward's reasons reach each line (None where invalid); jpeg gives none, so it has no entry
    assert [s["reasons"] for s in lines] == [
        {"FakeGenEval": r} for r in ["", "", "no single_object", "no single_object", None, None]
    ]


def test_geneval_overall_is_the_mean_over_tags():
    tags = ["single_object"] * 4 + ["counting"] * 2 + ["position"] * 2
    correct = [True, True, False, False, True, True, False, False]
    summary = summarise(tags, {"g": [float(c) for c in correct]}, {"g": correct})
    acc = summary["rewards"]["g"]["accuracy"]
    assert summary["tags"] == ["single_object", "counting", "position"]
    assert [acc["per_tag"][t]["fraction"] for t in summary["tags"]] == [0.5, 1.0, 0.0]
    assert acc["overall"]["value"] == pytest.approx(0.5) and acc["pooled"]["fraction"] == pytest.approx(4 / 8)
    lo, hi = acc["overall"]["ci95"]
    assert 0 < lo < 0.5 < hi < 1
    rows = table_rows(format_table(summary))
    assert rows[0] == ["metric", "Single Obj.", "Counting", "Position", "Overall"]
    # prompts without tags: one row "all", shown as the Overall column only
    untagged = summarise(["all"] * 3, {"r": [1.0, 2.0, None]}, {"r": None})
    rows = table_rows(format_table(untagged))
    assert rows[0] == ["metric", "Overall"] and rows[2] == ["samples", "3"] and rows[4] == ["r valid", "2/3"]
    assert rows[3] == ["r score", "1.500 ± 0.500"]  # to the standard error's second significant digit
    assert untagged["rewards"]["r"]["overall"] == {"n": 3, "valid": 2, "mean": 1.5, "se": pytest.approx(0.5)}


def test_statistics():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) is None
    assert mean_and_se([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(5 / 3 / 4)))
    assert mean_and_se([3.0]) == (3.0, None) and mean_and_se([]) == (None, None)


def test_small_tags_get_more_samples_per_prompt():
    tags = ["position"] * 10 + ["colors"] * 3 + ["two_object"]
    assert images_per_prompt_by_tag(tags, 2) == [2] * 14
    # at least 8 a tag: position keeps 2 a prompt (20 samples), colors 3 a prompt (9), two_object 8
    assert images_per_prompt_by_tag(tags, 2, 8) == [2] * 10 + [3] * 3 + [8]
    with pytest.raises(ValueError, match="min_samples_per_tag"):
        images_per_prompt_by_tag(tags, 1, -1)


# ------------------------------------------------------------------------------------------ sampling and checkpoints


@pytest.mark.slow
def test_sampler_matches_generate_and_ignores_batch_size(tmp_path, tiny_cli):
    module = tiny_cli(tmp_path).model
    module.configure_model()
    with torch.no_grad():  # a generator that differs from the teacher
        for p in module.backbone.roles.parameters_of(GENERATOR_EMA):
            p.add_(0.05 * torch.randn_like(p))
    prompts = ["a red circle", "a blue square", "two yellow circles"]
    shape = (len(prompts), *module.backbone.latent_shape)
    K = step_boundaries(module.schedule.num_steps, module.schedule.shift)
    for role in [GENERATOR_EMA, TEACHER]:  # at K steps, no guidance: exactly TDMR1Module.generate
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(3))
        assert torch.equal(sample_images(module, prompts, noise, role, K), module.generate(prompts, role, seed=3))
    noise = torch.stack([sample_noise(module.backbone.latent_shape, 0, p, 0) for p in range(3)])
    together = sample_images(module, prompts, noise, TEACHER, step_boundaries(2, 3.0), 4.5)
    alone = torch.cat(
        [
            sample_images(module, prompts[i : i + 1], noise[i : i + 1], TEACHER, step_boundaries(2, 3.0), 4.5)
            for i in range(3)
        ]
    )
    assert (together.int() - alone.int()).abs().max() <= 1
    assert not torch.equal(together, sample_images(module, prompts, noise, TEACHER, step_boundaries(2, 3.0), 1.0))


@pytest.mark.slow
def test_checkpoint_of_a_short_fit_is_loaded(tmp_path, tiny_sd3_path, tiny_cli, prompts):
    fit = tiny_cli(tmp_path / "fit", "--trainer.max_steps=2")
    fit.trainer.fit(fit.model, fit.datamodule)
    ckpt = next((tmp_path / "fit").rglob("last.ckpt"))
    out_loaded, out_fresh = tmp_path / "loaded", tmp_path / "fresh"
    assert (
        main(base_args(tiny_sd3_path, prompts, "--ckpt", str(ckpt), "--out", str(out_loaded), "--save-images", "each"))
        == 0
    )
    assert main(base_args(tiny_sd3_path, prompts, "--out", str(out_fresh), "--save-images", "each")) == 0
    loaded, fresh = read_pngs(out_loaded), read_pngs(out_fresh)
    assert loaded.keys() == fresh.keys() and any(not torch.equal(loaded[k], fresh[k]) for k in loaded)
    info = json.loads((out_loaded / "results.json").read_text())["checkpoint"]
    assert info["path"] == str(ckpt) and info["global_step"] == 2 and info["loaded"] > 0
    # exactly the fitted module's EMA generator, from the same per-sample noise
    module = fit.model
    noise = torch.stack([sample_noise(module.backbone.latent_shape, 0, p, 0) for p in range(3)])
    expected = sample_images(module, [r["prompt"] for r in RECORDS], noise, GENERATOR_EMA, module.boundaries)
    assert all(torch.equal(loaded[f"images/{p:05d}/samples/0000.png"], expected[p]) for p in range(3))


def test_a_checkpoint_of_another_model_is_refused(tmp_path, tiny_sd3_path, prompts, capsys):
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"backbone.something.else": torch.zeros(2)}}, bad)
    with pytest.raises(SystemExit) as exc:
        main(base_args(tiny_sd3_path, prompts, "--ckpt", str(bad)))
    assert exc.value.code == 2 and "none of its 1 tensors belongs to this config's model" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ errors before models load


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--prompts", "nope.txt"], "prompt file does not exist"),
        (["--role", "student"], "invalid choice: 'student'"),
        (["--steps", "0"], "expected an integer >= 1"),
        (["--steps", "two"], "expected an integer >= 1"),
        (["--guidance", "-1"], "expected a finite number >= 0"),
        (["--guidance", "nan"], "expected a finite number >= 0"),
        (["--guidance", "4.5"], "--guidance applies to --role teacher"),
        (["--ckpt", "missing.ckpt"], "--ckpt missing.ckpt: no such file"),
        (["--config", "missing.yaml"], "--config missing.yaml: no such file"),
        (["--images-per-prompt", "0"], "expected an integer >= 1"),
        (["--rewards", "[{name: no_such_reward}]"], "unknown reward 'no_such_reward'"),
        (["--rewards", "[{name: jpeg_compressibility, init_args: {size: 3}}]"], "bad init_args"),
        (["--rewards", "[a, : b"], "not valid YAML"),
        (["--save-images", "each"], "needs --out"),
        (["--device", "tpu"], "--device must be"),
    ],
)
def test_bad_arguments_fail_before_any_model_is_built(tiny_sd3_path, prompts, monkeypatch, capsys, extra, message):
    def no_build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr("tdmr1_lightning.cli.build_cli", no_build)
    with pytest.raises(SystemExit) as exc:
        main(base_args(tiny_sd3_path, prompts, *extra))
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_prompts_a_reward_refuses_fail_before_weights_load(tmp_path, tiny_sd3_path, fake_reward, monkeypatch, capsys):
    plain = tmp_path / "plain.txt"
    plain.write_text("a red circle\n")
    monkeypatch.setattr(
        "tdmr1_lightning.module.TDMR1Module.configure_model", lambda self: pytest.fail("weights loaded")
    )
    with pytest.raises(SystemExit):
        main(base_args(tiny_sd3_path, plain, "--rewards", f"[{{class_path: {fake_reward}}}]"))
    assert "prompt 'a red circle': missing field 'ok'" in capsys.readouterr().err


def test_passthrough_and_set_reach_the_config_parser(tmp_path, tiny_sd3_path, prompts):
    out = tmp_path / "out"
    args = base_args(
        tiny_sd3_path,
        prompts,
        "--set",
        "model.schedule.num_steps=2",
        "--out",
        str(out),
        "--",
        "--model.schedule.shift=1.0",
    )
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["steps"], results["shift"]) == (2, 1.0)
    assert results["overrides"] == [
        "--model.schedule.num_steps=2",
        f"--model.backbone.init_args.directory={tiny_sd3_path}",
        "--model.schedule.shift=1.0",
    ]


def test_help_documents_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for word in ["--role", "generator_ema", "--guidance", "--images-per-prompt", "--rewards", "--override", "GenEval"]:
        assert word in text


def test_evaluation_error_without_a_parser(tmp_path, prompts):
    options = evaluation.build_parser().parse_args(["--config", CONFIG, "--prompts", str(prompts), "--ckpt", "nope"])
    with pytest.raises(EvaluationError, match="no such file"):
        evaluation.run(options)


# ------------------------------------------------------------------------------------------ EvaluateOnFit


@pytest.mark.slow
def test_evaluate_on_fit_compares_start_end_and_teacher(tmp_path, tiny_cli, prompts, fake_reward, capsys):
    from tdmr1_lightning.evaluation import EvaluateOnFit

    rewards = [{"class_path": fake_reward}, {"name": "jpeg_compressibility"}]
    callback = EvaluateOnFit(
        str(prompts),
        rewards=rewards,
        teacher_steps=3,
        images_per_prompt=2,
        min_samples_per_tag=3,
        out_dir=str(tmp_path / "eval"),
    )
    fit = tiny_cli(tmp_path / "fit", "--trainer.max_steps=2")
    fit.trainer.callbacks.append(callback)
    fit.trainer.fit(fit.model, fit.datamodule)
    printed = capsys.readouterr().out
    table = (tmp_path / "eval" / "table.md").read_text()
    assert table.strip() in printed
    rows = table_rows(table)
    assert rows[0] == [
        "model",
        "Single Obj.",
        "Counting",
        "FakeGenEval Overall [95% CI]",
        "jpeg_compressibility (mean ± se)",
    ]
    assert [r[0] for r in rows[2:]] == [
        "generator at start (step 0)",
        "generator after training (step 2)",
        "teacher, 3 steps, guidance 4.5",
    ]
    # the fake reward's `correct` is the prompt's `ok`: single 1 of 2 prompts, counting invalid
    assert all(r[1] == "0.500" and r[2] == "–" for r in rows[2:])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["rows"]
    start, end = results["generator at start (step 0)"], results["generator after training (step 2)"]
    assert (start["steps"], end["global_step"], results["teacher, 3 steps, guidance 4.5"]["steps"]) == (4, 2, 3)
    assert start["summary"]["num_samples"] == {"single_object": 4, "counting": 3, "overall": 7}  # min_samples_per_tag
    # the generator changed in training, so the JPEG score of the same noise changed
    assert (
        start["summary"]["rewards"]["jpeg_compressibility"]["overall"]["mean"]
        != end["summary"]["rewards"]["jpeg_compressibility"]["overall"]["mean"]
    )


@pytest.mark.slow
def test_two_named_evaluations_keep_apart(tmp_path, tiny_cli, prompts, fake_reward, capsys):
    from tdmr1_lightning.evaluation import EvaluateOnFit

    with pytest.raises(ValueError, match="plain folder name"):
        EvaluateOnFit(str(prompts), name="a/b")
    rewards = [{"class_path": fake_reward}]
    callbacks = [
        EvaluateOnFit(str(prompts), rewards=rewards, teacher_steps=None, limit=limit, name=name)
        for name, limit in (("held_out", 1), ("seen", 2))
    ]
    fit = tiny_cli(tmp_path / "fit", "--trainer.max_steps=1")
    fit.trainer.callbacks.extend(callbacks)
    fit.trainer.fit(fit.model, fit.datamodule)
    printed = capsys.readouterr().out
    for name, n in (("held_out", 1), ("seen", 2)):
        out = Path(fit.trainer.log_dir) / "evaluation" / name
        results = json.loads((out / "results.json").read_text())
        assert results["name"] == name and f"Evaluation ({name}) on {prompts}: {n} prompts" in printed
        assert results["rows"]["generator at start (step 0)"]["summary"]["num_samples"]["overall"] == n


def test_evaluate_on_fit_refuses_bad_prompts_before_training(tmp_path, tiny_cli, fake_reward):
    from tdmr1_lightning.data import PromptFileError
    from tdmr1_lightning.evaluation import EvaluateOnFit

    with pytest.raises(PromptFileError):
        EvaluateOnFit(str(tmp_path / "missing.jsonl"))
    path = tmp_path / "no_ok.jsonl"
    path.write_text(json.dumps({"prompt": "a photo of a cat", "tag": "single_object"}) + "\n")
    callback = EvaluateOnFit(str(path), rewards=[{"class_path": fake_reward}])
    fit = tiny_cli(tmp_path / "fit", "--trainer.max_steps=1")
    fit.trainer.callbacks.append(callback)
    with pytest.raises(EvaluationError, match=r"no_ok.jsonl.*missing field 'ok'"):
        fit.trainer.fit(fit.model, fit.datamodule)
    assert fit.trainer.global_step == 0
