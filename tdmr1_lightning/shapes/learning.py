"""Does TDM-R1 learn on the shapes world? A seeded run on a fixed prompt set, its reward before and after.

The measurement behind ``benchmarks/shapes_learning.py`` and the learning test: the main config
(``configs/shapes/tdmr1.yaml``, the shipped TDM student) trained for a few epochs on the first ``n``
distinct training prompts; the mean soft GenEval score of the generator EMA on those prompts (fixed
noise, several images a prompt) before and after training, by :class:`~tdmr1_lightning.evaluation.EvaluateOnFit`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "shapes" / "tdmr1.yaml"
TRAIN_PROMPTS = ROOT / "configs" / "prompts" / "shapes" / "train.jsonl"


def fixed_prompts(path: Path, n: int, train_prompts: Path = TRAIN_PROMPTS, tags: tuple[str, ...] = ()) -> Path:
    """Write the first ``n`` distinct prompts of a training file (the shipped one cycles through the tags) to
    ``path``; with ``tags``, only prompts of those tags."""
    seen: dict[str, dict] = {}
    for line in Path(train_prompts).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if tags and record["tag"] not in tags:
            continue
        seen.setdefault(record["prompt"], record)
        if len(seen) == n:
            break
    path.write_text("".join(json.dumps(r) + "\n" for r in seen.values()), encoding="utf-8")
    return path


def _prompts_and_world(config: Path) -> tuple[Path, dict[str, Any]]:
    """A TDM-R1 config's training prompt file and the ``world`` its ``shapes_geneval`` reward scores
    (a relative path is relative to the config's folder, as ``tdmr1 fit`` reads it)."""
    data = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    train = data.get("data", {}).get("train_prompts")
    if not train:
        raise ValueError(f"{config}: data.train_prompts is not set")
    train = Path(config).parent / train  # an absolute path stays as it is
    for spec in data.get("model", {}).get("rewards") or []:
        if spec.get("name") == "shapes_geneval":
            return train, dict((spec.get("init_args") or {}).get("world") or {})
    raise ValueError(f"{config}: model.rewards has no shapes_geneval reward")


def reward_before_and_after(
    workdir: Path,
    seed: int = 0,
    num_prompts: int = 16,
    prompts_per_step: int = 4,
    epochs: int = 2,
    images_per_prompt: int = 4,
    overrides: list[str] | tuple[str, ...] = (),
    config: Path = CONFIG,
    tags: tuple[str, ...] = (),
) -> tuple[float, float]:
    """``(mean soft score before, after)`` of one seeded run in ``workdir`` (no logger, no checkpoints).

    ``seed`` is the run's ``seed_everything``: its rollout noise, drawn levels and prompt order.
    ``overrides`` go to the config parser after the run's own settings, e.g. ``["--model.surrogate_loss.beta=5"]``.
    ``config`` is a TDM-R1 config with a ``shapes_geneval`` training reward (the quick start's by
    default); the prompts are the first ``num_prompts`` of its training file (of ``tags`` only, if
    given), scored in its world.
    """
    from ..cli import build_cli
    from ..evaluation import EvaluateOnFit

    workdir = Path(workdir)
    train_prompts, world = _prompts_and_world(config)
    prompts = fixed_prompts(workdir / "prompts.jsonl", num_prompts, train_prompts, tuple(tags))
    evaluation = EvaluateOnFit(
        str(prompts),
        rewards=[{"name": "shapes_geneval", "init_args": {"mode": "soft", "world": world}}],
        images_per_prompt=images_per_prompt,
        teacher_steps=None,
        out_dir=str(workdir / "eval"),
    )
    cli = build_cli(
        [
            "--config",
            str(config),
            f"--seed_everything={seed}",
            f"--data.train_prompts={prompts}",
            f"--data.prompts_per_step={prompts_per_step}",
            f"--trainer.max_epochs={epochs}",
            "--trainer.max_steps=-1",
            "--trainer.callbacks=null",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.enable_checkpointing=false",
            f"--trainer.default_root_dir={workdir}",
            "--model.log_images_every_n_steps=0",
            *overrides,
        ],
        run=False,
    )
    cli.trainer.callbacks.append(evaluation)
    cli.trainer.fit(cli.model, cli.datamodule)
    start, end = (row["summary"]["rewards"]["shapes_geneval"]["overall"]["mean"] for row in evaluation.results.values())
    return start, end
