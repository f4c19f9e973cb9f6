"""Does TDM-R1 learn on the shapes world? A seeded run on a fixed prompt set, its reward before and after.

The measurement behind ``benchmarks/shapes_learning.py`` and the learning test: the main config
(``configs/shapes/tdmr1.yaml``, the shipped TDM student) trained for a few epochs on the first ``n``
distinct training prompts; the mean soft GenEval score of the generator EMA on those prompts (fixed
noise, several images a prompt) before and after training, by :class:`~tdmr1_lightning.evaluate.EvaluateOnFit`.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "shapes" / "tdmr1.yaml"
TRAIN_PROMPTS = ROOT / "configs" / "prompts" / "shapes" / "train.jsonl"


def fixed_prompts(path: Path, n: int) -> Path:
    """Write the first ``n`` distinct prompts of the shipped training file (it cycles through the tags) to ``path``."""
    seen: dict[str, dict] = {}
    for line in TRAIN_PROMPTS.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        seen.setdefault(record["prompt"], record)
        if len(seen) == n:
            break
    path.write_text("".join(json.dumps(r) + "\n" for r in seen.values()), encoding="utf-8")
    return path


def reward_before_and_after(
    workdir: Path,
    seed: int = 0,
    num_prompts: int = 16,
    prompts_per_step: int = 4,
    epochs: int = 2,
    images_per_prompt: int = 4,
    overrides: list[str] | tuple[str, ...] = (),
) -> tuple[float, float]:
    """``(mean soft score before, after)`` of one seeded run in ``workdir`` (no logger, no checkpoints).

    ``seed`` is the run's ``seed_everything``: its rollout noise, drawn levels and prompt order.
    ``overrides`` go to the config parser after the run's own settings, e.g. ``["--model.beta=5"]``.
    """
    from ..cli import build_cli
    from ..evaluate import EvaluateOnFit

    workdir = Path(workdir)
    prompts = fixed_prompts(workdir / "prompts.jsonl", num_prompts)
    evaluation = EvaluateOnFit(
        str(prompts), rewards=[{"name": "shapes_geneval", "init_args": {"mode": "soft"}}],
        images_per_prompt=images_per_prompt, teacher_steps=None, out_dir=str(workdir / "eval"),
    )
    cli = build_cli([
        "--config", str(CONFIG), f"--seed_everything={seed}",
        f"--data.train_prompts={prompts}", f"--data.prompts_per_step={prompts_per_step}",
        f"--trainer.max_epochs={epochs}", "--trainer.max_steps=-1", "--trainer.callbacks=null",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.enable_checkpointing=false", f"--trainer.default_root_dir={workdir}",
        "--model.log_images_every_n_steps=0", *overrides,
    ], run=False)
    cli.trainer.callbacks.append(evaluation)
    cli.trainer.fit(cli.model, cli.datamodule)
    start, end = (row["summary"]["rewards"]["shapes_geneval"]["overall"]["mean"] for row in evaluation.results.values())
    return start, end
