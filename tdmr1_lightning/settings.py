"""TDM-R1's settings, grouped as the algorithm's sections (``../docs/architecture.md`` maps them to the spec).

Each group is a frozen dataclass that jsonargparse reads as a nested block of ``model``::

    model:
      schedule: {num_steps: 4, shift: 3.0}
      surrogate_loss: {beta: 1.0, s_min_reward: 0.55}

or on the command line ``--model.surrogate_loss.beta 1.0``; a block names only the settings it changes.
Every setting has one source: its field here (defaults are the reference's SD3.5 OCR recipe, algorithm.md
section 6). Checks that need one group only run when it is built; those across groups in ``TDMR1Module``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from .schedule import check_schedule


def _in_unit_interval(group: str, **values: float) -> None:
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{group}.{name} must be in [0, 1), got {value}")


def _at_least_one(group: str, **values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{group}.{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class Schedule:
    """The generator's steps and the levels every loss queries (sections 1, 3 and 8.3).

    Args:
        num_steps: K, the generator's sampling steps.
        shift: k, the time shift S of the step boundaries and of the loss levels.
        level_margin: Margin added to ``S^-1(lower)`` when drawing every query level (sections 5.1, 8.3).
    """

    num_steps: int = 4
    shift: float = 3.0
    level_margin: float = 0.02

    def __post_init__(self) -> None:
        try:
            check_schedule(self.num_steps, self.shift)
        except ValueError as err:
            raise ValueError(f"schedule.{err}") from None


@dataclass(frozen=True)
class FakeLoss:
    """The fake score's loss (section 5.1).

    Args:
        teacher_weight: Weight of the fake score's pull towards the teacher.
    """

    teacher_weight: float = 0.02


@dataclass(frozen=True)
class SurrogateLoss:
    """The surrogate reward's loss, DGPO (section 5.2).

    Args:
        beta: DGPO's beta: the surrogate's implied reward is ``beta * (l_ref - l)``.
        s_min_reward: s_min_reward, the lowest level of the surrogate's training points.
        clip_range: eps, the PPO clip range.
        trust_threshold: The trust clip acts when ``mean ||v_R - v_T||^2`` exceeds this.
        lambda_kl: lambda_kl, the weight of the surrogate's pull towards the teacher.
        reference: Reference of the implied reward: the frozen ``teacher`` (the public script) or an
            ``ema`` of the surrogate (the paper's "dynamic reference").
        reference_ema_decay: Decay of the EMA reference (with ``reference: ema``).
        freeze_after: Stop training the surrogate after this many generator updates (the paper's
            frozen-surrogate ablation); ``None`` keeps it online, re-trained every step.
    """

    beta: float = 10.0
    s_min_reward: float = 0.3
    clip_range: float = 1e-3
    trust_threshold: float = 0.05
    lambda_kl: float = 1e-3
    reference: Literal["teacher", "ema"] = "teacher"
    reference_ema_decay: float = 0.95
    freeze_after: int | None = None

    def __post_init__(self) -> None:
        _in_unit_interval("surrogate_loss", s_min_reward=self.s_min_reward)


@dataclass(frozen=True)
class GeneratorLoss:
    """The generator's loss (sections 5.3, 8.1 and 8.2).

    Args:
        guidance_scale: w, the teacher's classifier-free guidance distilled into the generator.
        rl_guidance_scale: rl_cfg, the surrogate's own guidance in the reward term:
            ``Phi = R_u + rl_cfg (R_c - R_u)``.
        s_min_gen: s_min_gen (t_min_dgpo / 1000), the lowest level of the surrogate's query point.
        trunc_steps: The reward term applies to boundaries ``j < trunc_steps``.
        cfg_weight: lambda_cfg (tdm_weight), the weight of the guidance term; without the reward term
            (plain TDM, and ``j >= trunc_steps``) the weight of the guidance and KL terms together.
        reward_weight: lambda_r, the weight of the surrogate-reward term.
    """

    guidance_scale: float = 4.5
    rl_guidance_scale: float = 4.5
    s_min_gen: float = 0.3
    trunc_steps: int = 4
    cfg_weight: float = 0.3
    reward_weight: float = 0.7

    def __post_init__(self) -> None:
        _in_unit_interval("generator_loss", s_min_gen=self.s_min_gen)


@dataclass(frozen=True)
class Advantages:
    """From rewards to advantages (section 4, 8.4).

    Args:
        reward_combination: ``sum``: advantages of the weighted sum of the rewards; ``advantages``: the
            weighted sum of each reward's own advantages.
        clip: Clip of the advantages.
        std: ``global``: divide by the std of all rewards of the step (all processes); ``group``: per group.
        binarize: Use ``sign(A) - mean_g(sign(A))`` with ``sign(0) = +1`` (like / dislike rewards).
    """

    reward_combination: Literal["sum", "advantages"] = "sum"
    clip: float = 5.0
    std: Literal["global", "group"] = "global"
    binarize: bool = False


@dataclass(frozen=True)
class Batching:
    """How a step's samples are split (sections 4, 5.3 and 8.5).

    Args:
        micro_batch_size: Samples per micro-batch per process: whole groups, or whole shares of groups
            held across processes.
        boundaries_per_batch: M, the boundaries drawn per micro-batch (the same on every process).
        rollout_batch_size: Samples per rollout / decoding chunk (default: ``micro_batch_size``).
        updates_per_step: Optimizer updates per step (the step's micro-batches are split between them).
    """

    micro_batch_size: int = 24
    boundaries_per_batch: int = 2
    rollout_batch_size: int | None = None
    updates_per_step: int = 1

    def __post_init__(self) -> None:
        _at_least_one(
            "batching",
            micro_batch_size=self.micro_batch_size,
            boundaries_per_batch=self.boundaries_per_batch,
            updates_per_step=self.updates_per_step,
        )
        if self.rollout_batch_size is not None:
            _at_least_one("batching", rollout_batch_size=self.rollout_batch_size)


@dataclass(frozen=True)
class Stepping:
    """Each update: clipping, the generator EMA and non-finite losses (sections 4 and 8.6).

    Args:
        gradient_clip: Gradient-norm clip of each optimizer (0 disables it).
        generator_ema_max_decay: Cap of the generator EMA's decay ``min((1 + n) / (10 + n), cap)``.
        max_nonfinite_steps: Stop with an error after this many consecutive steps with a non-finite loss.
    """

    gradient_clip: float = 1.0
    generator_ema_max_decay: float = 0.9
    max_nonfinite_steps: int = 3

    def __post_init__(self) -> None:
        _at_least_one("stepping", max_nonfinite_steps=self.max_nonfinite_steps)


# The groups of TDMR1Module, by argument name.
GROUPS: dict[str, type] = {
    "schedule": Schedule,
    "fake_loss": FakeLoss,
    "surrogate_loss": SurrogateLoss,
    "generator_loss": GeneratorLoss,
    "advantages": Advantages,
    "batching": Batching,
    "stepping": Stepping,
}


def as_group(name: str, value: Any) -> Any:
    """The group ``name`` from its dataclass or a mapping of its fields (a checkpoint's hyperparameters,
    a Python caller's dict); an unknown field is an error naming it."""
    cls = GROUPS[name]
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise TypeError(f"model.{name} must be a {cls.__name__} or a mapping of its fields, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"model.{name} has no setting {unknown[0]!r} (its settings: {', '.join(sorted(known))})")
    return cls(**value)


# Where each setting of the flat layout (before the groups) now lives, for the error that names it.
MOVED: dict[str, str] = {
    **{key: f"schedule.{key}" for key in ("num_steps", "shift", "level_margin")},
    "fake_teacher_weight": "fake_loss.teacher_weight",
    **{
        key: f"surrogate_loss.{key}"
        for key in ("beta", "s_min_reward", "clip_range", "trust_threshold", "lambda_kl", "reference")
    },
    "reference_ema_decay": "surrogate_loss.reference_ema_decay",
    "freeze_surrogate_after": "surrogate_loss.freeze_after",
    **{
        key: f"generator_loss.{key}"
        for key in ("guidance_scale", "rl_guidance_scale", "s_min_gen", "trunc_steps", "cfg_weight", "reward_weight")
    },
    "reward_combination": "advantages.reward_combination",
    "advantage_clip": "advantages.clip",
    "advantage_std": "advantages.std",
    "binarize_advantages": "advantages.binarize",
    **{
        key: f"batching.{key}"
        for key in ("micro_batch_size", "boundaries_per_batch", "rollout_batch_size", "updates_per_step")
    },
    **{key: f"stepping.{key}" for key in ("gradient_clip", "generator_ema_max_decay", "max_nonfinite_steps")},
}


def _config_paths(args: list[str]) -> list[Path]:
    paths = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            paths.append(Path(args[i + 1]))
        elif arg.startswith("--config="):
            paths.append(Path(arg.split("=", 1)[1]))
    return [path for path in paths if path.is_file()]


def _configures_another_module(section: Any) -> bool:
    class_path = section.get("class_path") if isinstance(section, dict) else None
    return bool(class_path) and not str(class_path).endswith("TDMR1Module")


def _flat_keys_of_model(section: Any) -> list[str]:
    if not isinstance(section, dict) or _configures_another_module(section):
        return []  # another module (e.g. the teacher's pretraining) has its own flat settings
    keys = [key for key in section if key in MOVED]
    return keys + _flat_keys_of_model(section.get("init_args"))


def flat_settings(args: list[str]) -> list[str]:
    """One message for each setting of the flat layout (``model.num_steps``, before the groups) in command-line
    ``args`` and in the YAML files their ``--config`` options name, each saying where it moved."""
    messages = []
    other_module = any(re.match(r"^--model(\.class_path)?=", arg) and not arg.endswith("TDMR1Module") for arg in args)
    for path in _config_paths(args):
        try:
            text = path.read_text(encoding="utf-8")
            data = yaml.safe_load(text)
        except (OSError, yaml.YAMLError):
            continue  # the config parser reports it
        if isinstance(data, dict) and _configures_another_module(data.get("model")):
            other_module = True
        lines = text.splitlines()
        for key in _flat_keys_of_model((data or {}).get("model") if isinstance(data, dict) else None):
            number = next((n for n, line in enumerate(lines, 1) if re.match(rf"^\s+{key}\s*:", line)), None)
            where = f"{path}, line {number}" if number else str(path)
            messages.append(f"{where}: model.{key} is now model.{MOVED[key]}")
    for arg in [] if other_module else args:
        match = re.match(r"^--model\.(?:init_args\.)?([a-z_]+)(=.*)?$", arg)
        if match and match.group(1) in MOVED:
            messages.append(f"--model.{match.group(1)} is now --model.{MOVED[match.group(1)]}")
    return messages
