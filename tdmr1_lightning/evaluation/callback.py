"""``EvaluateOnFit``: evaluation at the start and end of training (a Lightning callback)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L

from ..data import split_records
from ..paths import ConfigPath
from ..registry import build_rewards
from .sampling import TEACHER_DEFAULT_STEPS, evaluate_samples, images_per_prompt_by_tag
from .stats import EvaluationError
from .tables import format_comparison


class EvaluateOnFit(L.Callback):
    """Evaluate a prompt set before and after ``fit`` and print one comparison table.

    Before training, the generator EMA as it starts (a TDM student when TDM-R1 starts from one); after
    training, the trained generator EMA; and, optionally, the teacher at ``teacher_steps`` with guidance
    (the many-step reference). Each run is :func:`evaluate_samples` with the same noise, so rows differ
    only by the model. The table (:func:`format_comparison`) is printed, written to
    ``<log dir>/evaluation[/<name>]/table.md`` with every number in ``results.json``, and each row's
    overall scores are logged as ``eval/[<name>/]<row>/<reward>``. A run may have several, each with
    its own ``name`` (e.g. held-out prompts and prompts it trains on). Runs on global rank 0; other
    ranks wait.

    Args:
        prompts: Prompt file (as ``tdmr1 evaluate --prompts``): JSON Lines with metadata, or text; in a
            config, relative to the config file's folder.
        rewards: Evaluation rewards (a list like ``model.rewards``); default: the model's eval rewards.
        images_per_prompt: Samples per prompt.
        min_samples_per_tag: Sample the prompts of small tags more often, so that every tag has at least
            this many samples (0: off; see :func:`images_per_prompt_by_tag`).
        seed: Noise seed (the same for every row).
        batch_size: Samples per forward batch (default: the model's rollout batch size).
        limit: Evaluate only the first N prompts.
        at_start: Also evaluate the generator EMA before the first training step.
        teacher_steps: Evaluate the teacher with this many steps (None: skip the teacher).
        teacher_guidance: The teacher's guidance (default: the model's ``guidance_scale``).
        out_dir: Where to write the table (default: ``<trainer.log_dir>/evaluation[/<name>]``).
        name: Label of this evaluation: its folder, metric keys and table title (needed when a run has several).
    """

    def __init__(
        self,
        prompts: ConfigPath,
        rewards: list[Any] | None = None,
        images_per_prompt: int = 1,
        min_samples_per_tag: int = 0,
        seed: int = 0,
        batch_size: int | None = None,
        limit: int | None = None,
        at_start: bool = True,
        teacher_steps: int | None = TEACHER_DEFAULT_STEPS,
        teacher_guidance: float | None = None,
        out_dir: str | None = None,
        name: str | None = None,
    ) -> None:
        from ..data import load_prompts

        if name is not None and (not name or "/" in name or name.startswith(".")):
            raise ValueError(f"EvaluateOnFit name must be a plain folder name, got {name!r}")
        if teacher_steps is not None and teacher_steps < 1:
            raise ValueError(f"teacher_steps must be >= 1 or null, got {teacher_steps}")
        self.records = load_prompts(prompts)[:limit]  # read now: a bad file fails before any model loads
        self.prompts, self.metadata, self.tags = split_records(self.records)
        self.prompts_path = os.fspath(prompts)
        self.reward_entries = rewards
        self.rewards = build_rewards(rewards, "rewards") if rewards is not None else None
        self.counts = images_per_prompt_by_tag(self.tags, images_per_prompt, min_samples_per_tag)
        self.images_per_prompt, self.min_samples_per_tag = images_per_prompt, min_samples_per_tag
        self.seed, self.batch_size = seed, batch_size
        self.at_start, self.teacher_steps, self.teacher_guidance = at_start, teacher_steps, teacher_guidance
        self.out_dir, self.name = out_dir, name
        self.rows: list[tuple[str, dict[str, Any]]] = []
        self.results: dict[str, Any] = {}

    def _rewards(self, module: Any) -> Any:
        rewards = self.rewards if self.rewards is not None else module.eval_rewards
        if rewards is None:
            raise EvaluationError("EvaluateOnFit: no rewards (pass rewards, or configure model.eval_rewards)")
        return rewards

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        try:
            self._rewards(pl_module).validate(self.prompts, self.metadata)
        except ValueError as err:
            raise EvaluationError(f"EvaluateOnFit prompts {self.prompts_path}: {err}") from err

    def _run(self, trainer: L.Trainer, module: Any, label: str, role: str, steps: int, guidance: float) -> None:
        from ..schedule import step_boundaries

        rewards = self._rewards(module).to(module.device)
        was_training = module.training
        module.eval()
        t0 = time.perf_counter()
        try:
            result = evaluate_samples(
                module,
                self.prompts,
                self.metadata,
                self.tags,
                role=role,
                boundaries=step_boundaries(steps, module.schedule.shift),
                guidance=guidance,
                rewards=rewards,
                images_per_prompt=self.counts,
                seed=self.seed,
                batch_size=self.batch_size or module.rollout_batch_size,
                forward_context=trainer.precision_plugin.forward_context,
                progress=trainer.progress_bar_callback is not None,
            )
        finally:
            module.train(was_training)
        summary = result["summary"]
        self.rows.append((label, summary))
        self.results[label] = {
            "role": role,
            "steps": steps,
            "guidance": guidance,
            "summary": summary,
            "seconds": time.perf_counter() - t0,
            "global_step": trainer.global_step,
        }
        for reward, entry in summary["rewards"].items():
            acc = entry.get("accuracy")
            value = acc["overall"]["value"] if acc and acc["overall"] else entry["overall"]["mean"]
            if value is not None and trainer.logger is not None:
                key = "/".join(part for part in ("eval", self.name, label, reward) if part)
                trainer.logger.log_metrics({key: float(value)}, step=trainer.global_step)

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.at_start and trainer.is_global_zero:
            self._run(
                trainer,
                pl_module,
                f"generator at start (step {trainer.global_step})",
                "generator_ema",
                pl_module.schedule.num_steps,
                1.0,
            )
        trainer.strategy.barrier("EvaluateOnFit.start")

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.is_global_zero:  # sampling runs under no_grad (sample_images)
            self._run(
                trainer,
                pl_module,
                f"generator after training (step {trainer.global_step})",
                "generator_ema",
                pl_module.schedule.num_steps,
                1.0,
            )
            if self.teacher_steps is not None:
                guidance = (
                    self.teacher_guidance
                    if self.teacher_guidance is not None
                    else float(pl_module.generator_loss.guidance_scale)
                )
                self._run(
                    trainer,
                    pl_module,
                    f"teacher, {self.teacher_steps} steps, guidance {guidance:g}",
                    "teacher",
                    self.teacher_steps,
                    guidance,
                )
            at_least = f" (at least {self.min_samples_per_tag} a tag)" if self.min_samples_per_tag else ""
            title = (
                f"Evaluation{f' ({self.name})' if self.name else ''} on {self.prompts_path}: "
                f"{len(self.records)} prompts x {self.images_per_prompt}{at_least}, "
                f"{sum(self.counts)} samples, seed {self.seed}; generator rows at {pl_module.schedule.num_steps} steps "
                "without guidance"
            )
            table = format_comparison(self.rows, title)
            print("\n" + table + "\n", flush=True)
            out = (
                Path(self.out_dir)
                if self.out_dir
                else Path(trainer.log_dir or trainer.default_root_dir) / "evaluation" / (self.name or "")
            )
            out.mkdir(parents=True, exist_ok=True)
            (out / "table.md").write_text(table + "\n", encoding="utf-8")
            (out / "results.json").write_text(
                json.dumps(
                    {
                        "name": self.name,
                        "prompts": self.prompts_path,
                        "images_per_prompt": self.images_per_prompt,
                        "min_samples_per_tag": self.min_samples_per_tag,
                        "seed": self.seed,
                        "rewards": self.reward_entries,
                        "rows": self.results,
                        "table": table,
                    },
                    indent=2,
                    default=str,
                )
                + "\n",
                encoding="utf-8",
            )
        trainer.strategy.barrier("EvaluateOnFit.end")
