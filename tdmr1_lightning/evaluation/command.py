"""``tdmr1 evaluate``: the command line (arguments, loading a checkpoint, running, writing outputs)."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor

from ..data import split_records
from ..files import write_png
from ..registry import build_rewards
from .sampling import TEACHER_DEFAULT_STEPS, _sync, evaluate_samples, images_per_prompt_by_tag
from .stats import EvaluationError
from .tables import format_table

ROLES = ("generator_ema", "generator", "teacher")
GRID_MAX_PROMPTS = 64
"""``--save-images grid`` shows at most this many prompts."""


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------

_EPILOG = f"""\
roles and defaults:
  generator_ema, generator: K steps (model.schedule.num_steps) without guidance; --steps samples the same
      generator at another step count; --guidance is refused (the generator distilled the teacher's
      guidance), except 1.0 (= none).
  teacher: {TEACHER_DEFAULT_STEPS} steps with guidance model.generator_loss.guidance_scale; --ckpt does not change it.
  All roles step over the boundaries S(1 - j / N) with the model's shift, as in training.

rewards (--rewards, or a config's model.eval_rewards / model.rewards): a YAML or JSON list, or a file
  holding one, e.g. '[{{name: geneval, init_args: {{mode: strict}}}}]' or
  '[{{class_path: my_pkg.rewards.MyReward, weight: 1.0}}]' ('tdmr1 rewards list' shows the names).

training-config overrides go to the same parser as 'tdmr1 fit' (the config's trainer settings are replaced
  by one device, no logger; data.train_prompts by --prompts):
  --set model.backbone.init_args.pretrained_model=/models/sd35   (repeatable)
  --override --model.backbone.init_args.directory=/tmp/tiny      (repeatable; the value may start with --)
  -- --model.backbone.init_args.lora_rank 64 ...                 (everything after a bare --)
  e.g. --override --trainer.precision=32-true to sample without bf16 autocast.

outputs (with --out DIR): results.json (all numbers, the resolved config, checkpoint, role, steps,
  guidance, seed, prompt file, counts, timings), table.md, samples.jsonl (one line a sample: scores,
  correct, and a reward's reasons for a failure where it gives them, as GenEval's does), and with
  --save-images: 'each' writes DIR/images/<prompt:05d>/samples/<image:04d>.png plus that folder's
  metadata.jsonl (GenEval's layout: the official evaluator runs on it); 'grid' writes DIR/grid.png
  (a row of --images-per-prompt images for each of the first {GRID_MAX_PROMPTS} prompts).

examples (GenEval's own evaluation_metadata.jsonl, 553 prompts, is a valid --prompts file):
  tdmr1 evaluate --config configs/sd35_geneval.yaml --ckpt runs/sd35_geneval/checkpoints/last.ckpt \\
      --prompts evaluation_metadata.jsonl --images-per-prompt 4 --out eval/geneval_step1000
  tdmr1 evaluate --config configs/sd35_geneval.yaml --role teacher --steps 40 --guidance 4.5 \\
      --prompts evaluation_metadata.jsonl --images-per-prompt 4 --out eval/geneval_teacher
"""


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _guidance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 (1 = no guidance), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tdmr1 evaluate``."""
    parser = argparse.ArgumentParser(
        prog="tdmr1 evaluate",
        description=(
            "Sample a prompt set from a checkpoint's generator (its EMA by default) at K steps, or from the\n"
            "teacher at N steps with classifier-free guidance; score the images with the evaluation rewards;\n"
            "print a per-tag Markdown table (GenEval's layout: one column per prompt tag plus Overall) and\n"
            "write it with every number to --out."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    what = parser.add_argument_group("what to evaluate")
    what.add_argument(
        "--config",
        required=True,
        metavar="YAML",
        help="training config (as for 'tdmr1 fit'): the backbone, K, shift, guidance and, by default, "
        "the evaluation rewards (model.eval_rewards, else model.rewards)",
    )
    what.add_argument(
        "--ckpt",
        metavar="PATH",
        help="Lightning checkpoint of the module (role weights); without it the roles are as "
        "initialised, e.g. the generator from the backbone's generator_checkpoint; read with "
        "weights_only=True, so no pickled code runs",
    )
    what.add_argument(
        "--prompts",
        required=True,
        metavar="FILE",
        help="prompt file: text (one a line) or JSON Lines / JSON with 'prompt' plus metadata; "
        "the metadata reaches the rewards and its 'tag' groups the table",
    )
    what.add_argument(
        "--role", default="generator_ema", choices=ROLES, help="which network samples (default: %(default)s)"
    )
    what.add_argument("--limit", type=_positive_int, metavar="N", help="evaluate only the first N prompts")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument(
        "--steps",
        type=_positive_int,
        metavar="N",
        help=f"sampling steps (default: the model's K for a generator, {TEACHER_DEFAULT_STEPS} for the teacher)",
    )
    sampling.add_argument(
        "--guidance",
        type=_guidance,
        metavar="W",
        help="classifier-free guidance of the teacher (default: model.generator_loss.guidance_scale; 1 = none); "
        "a generator role accepts only 1",
    )
    sampling.add_argument(
        "--images-per-prompt",
        type=_positive_int,
        default=1,
        metavar="M",
        help="samples per prompt (default: %(default)s; GenEval's protocol uses 4)",
    )
    sampling.add_argument(
        "--min-samples-per-tag",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="sample the prompts of a tag with few prompts more often, so that every tag has at "
        "least N samples (default: %(default)s = off); the overall over tags then rests on "
        "enough images in every tag",
    )
    sampling.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="B",
        help="samples per forward batch (default: the model's rollout_batch_size); the images do not depend on it",
    )
    sampling.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of the per-sample noise (default: %(default)s)"
    )
    sampling.add_argument(
        "--device",
        default="auto",
        metavar="DEV",
        help="auto (a GPU when there is one), cpu, cuda or cuda:N (default: %(default)s)",
    )
    scoring = parser.add_argument_group("scoring and output")
    scoring.add_argument(
        "--rewards",
        metavar="LIST",
        help="evaluation rewards replacing the config's: a YAML/JSON list like model.rewards, or a file",
    )
    scoring.add_argument(
        "--out",
        metavar="DIR",
        help="write results.json, table.md and samples.jsonl here (default: only print the table)",
    )
    scoring.add_argument(
        "--save-images",
        choices=("none", "each", "grid"),
        default="none",
        help="also write the images to --out: 'each' one PNG a sample (GenEval's folder layout), "
        "'grid' one grid.png (default: %(default)s)",
    )
    scoring.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show a progress bar over the batches on stderr (default: on)",
    )
    overrides = parser.add_argument_group("training-config overrides")
    overrides.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. model.backbone.init_args.dtype=float32 (repeatable)",
    )
    overrides.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="ARG",
        help="pass one argument to the config parser verbatim, e.g. "
        "--override --model.backbone.init_args.directory=/tmp/tiny (repeatable)",
    )
    return parser


def _split_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Own arguments and the passthrough after a bare ``--``.

    ``--override X`` keeps ``X`` even if it starts with ``-``."""
    own: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return own, list(args[i + 1 :])
        if a == "--override" and i + 1 < len(args):
            own.append(f"--override={args[i + 1]}")
            i += 2
            continue
        own.append(a)
        i += 1
    return own, []


def _device_args(device: str) -> list[str]:
    if device == "auto":
        return ["--trainer.accelerator=auto", "--trainer.devices=1"]
    if device == "cpu":
        return ["--trainer.accelerator=cpu", "--trainer.devices=1"]
    if device in ("cuda", "gpu"):
        return ["--trainer.accelerator=gpu", "--trainer.devices=1"]
    match = re.fullmatch(r"cuda:(\d+)", device)
    if match:
        return ["--trainer.accelerator=gpu", f"--trainer.devices=[{match.group(1)}]"]
    raise EvaluationError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")


def _parse_rewards(text: str) -> list[Any]:
    import yaml

    path = Path(text)
    try:
        source = path.read_text(encoding="utf-8") if len(text) < 4096 and path.is_file() else text
    except OSError:
        source = text
    try:
        entries = yaml.safe_load(source)
    except yaml.YAMLError as err:
        raise EvaluationError(f"--rewards is not valid YAML/JSON: {err}") from None
    if isinstance(entries, (dict, str)):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise EvaluationError(f"--rewards must be a non-empty list of rewards, got {entries!r}")
    return entries


def _load_checkpoint(module: Any, path: str, role: str) -> dict[str, Any]:
    """Load the role weights of ``path`` (a Lightning checkpoint or a bare state dict) into ``module``."""
    from ..sharding import is_sharded_checkpoint, read_checkpoint

    try:
        if is_sharded_checkpoint(path):  # a checkpoint folder saved under fsdp2
            ckpt = read_checkpoint(path)
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling problem
        raise EvaluationError(f"--ckpt {path}: cannot be read as a checkpoint ({type(err).__name__}: {err})") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise EvaluationError(f"--ckpt {path}: holds no state_dict of tensors")
    own = module.state_dict()
    matching = [k for k in state if k in own]
    if not matching:
        raise EvaluationError(
            f"--ckpt {path}: none of its {len(state)} tensors belongs to this config's model "
            f"(e.g. {list(state)[:2]}); is it a checkpoint of this config?"
        )
    if role != "teacher" and not any(f".{role}." in k for k in matching):
        raise EvaluationError(f"--ckpt {path}: holds no weights of role {role!r}")
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise EvaluationError(
            f"--ckpt {path}: does not fit this config's model (lora_rank? roles_as?): {err}"
        ) from None
    if role == "teacher":
        warnings.warn("--ckpt has no effect on --role teacher: the teacher is frozen and not checkpointed", UserWarning)
    info = {
        "path": str(path),
        "tensors": len(state),
        "loaded": len(matching),
        "unexpected": len(result.unexpected_keys),
    }
    if isinstance(ckpt, dict):
        info.update({k: ckpt[k] for k in ("epoch", "global_step") if isinstance(ckpt.get(k), int)})
    return info


def _resolved_config(cli: Any) -> Any:
    try:
        import yaml

        return yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    except Exception:  # noqa: BLE001 - provenance only
        return None


def _reward_entries(config: Any) -> Any:
    model = (config or {}).get("model") or {}
    model = model.get("init_args", model)
    return model.get("eval_rewards") if model.get("eval_rewards") is not None else model.get("rewards")


@dataclass
class _Checked:
    """What :func:`run` checks before any model loads."""

    records: list[dict[str, Any]]
    device_args: list[str]
    sets: list[str]
    override_rewards: tuple[Any, Any] | None  # (entries, built rewards) of --rewards


def _check_options(options: argparse.Namespace, fail: Callable[[str], NoReturn]) -> _Checked:
    """The checks that need no model: files, flags that contradict each other, --rewards and --set."""
    from ..data import PromptFileError, load_prompts
    from ..registry import RewardRegistryError

    if not Path(options.config).is_file():
        fail(f"--config {options.config}: no such file")
    if options.ckpt is not None and not Path(options.ckpt).is_file():
        fail(f"--ckpt {options.ckpt}: no such file")
    try:
        records = load_prompts(options.prompts)
    except PromptFileError as err:
        fail(f"--prompts: {err}")
    if options.limit is not None:
        records = records[: options.limit]
    if options.role != "teacher" and options.guidance is not None and options.guidance != 1.0:
        fail(
            f"--guidance {options.guidance} with --role {options.role}: the generator distilled the teacher's guidance "
            "and samples without it; --guidance applies to --role teacher (or pass 1 = none)"
        )
    if options.save_images != "none" and options.out is None:
        fail(f"--save-images {options.save_images} needs --out")
    try:
        device_args = _device_args(options.device)
    except EvaluationError as err:
        fail(str(err))
    override_rewards = None
    if options.rewards is not None:
        try:
            entries = _parse_rewards(options.rewards)
            override_rewards = (entries, build_rewards(entries, "--rewards"))
        except (EvaluationError, RewardRegistryError) as err:
            fail(str(err))
    sets = []
    for item in options.set:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            fail(f"--set expects KEY=VALUE, got {item!r}")
        sets.append(f"--{key.strip().lstrip('-')}={value}")
    return _Checked(records, device_args, sets, override_rewards)


def _build_model_cli(options: argparse.Namespace, checked: _Checked, passthrough: Sequence[str]) -> Any:
    """The training config's LightningCLI (not run, weights not loaded): one device, no logger, the prompts given."""
    from ..cli import build_cli

    cli_args = [
        "--config",
        str(options.config),
        *checked.device_args,
        "--trainer.num_nodes=1",
        "--trainer.strategy=auto",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--data.train_prompts={options.prompts}",
        "--data.val_prompts=null",
        *checked.sets,
        *options.override,
        *passthrough,
    ]
    return build_cli(cli_args, run=False)


class _ImageKeeper:
    """Saves sampled images as ``--save-images`` says: each as a PNG in GenEval's layout, or a grid's worth."""

    def __init__(self, mode: str, out_dir: Path | None, records: list[dict[str, Any]]) -> None:
        self.mode, self.out_dir, self.records = mode, out_dir, records
        self.grid: list[Tensor] = []

    def __call__(self, batch: list[tuple[int, int]], images: Tensor) -> None:
        if self.mode == "each":
            for (p, k), image in zip(batch, images):
                folder = self.out_dir / "images" / f"{p:05d}"
                if k == 0:
                    folder.mkdir(parents=True, exist_ok=True)
                    metadata = json.dumps(self.records[p], default=str) + "\n"
                    (folder / "metadata.jsonl").write_text(metadata, encoding="utf-8")
                write_png(image, folder / "samples" / f"{k:04d}.png")
        elif self.mode == "grid":
            self.grid.extend(image for (p, _), image in zip(batch, images) if p < GRID_MAX_PROMPTS)

    def write_grid(self, images_per_prompt: int) -> None:
        if self.mode == "grid" and self.grid:
            from torchvision.utils import make_grid

            nrow = images_per_prompt if images_per_prompt > 1 else math.ceil(math.sqrt(len(self.grid)))
            write_png(make_grid(torch.stack(self.grid), nrow=nrow, padding=2), self.out_dir / "grid.png")


def _write_outputs(
    out_dir: Path, results: dict[str, Any], result: dict[str, Any], prompts, prompt_tags, labels
) -> None:
    """``results.json``, ``table.md`` and ``samples.jsonl`` (one line a sample) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    (out_dir / "table.md").write_text(results["table"] + "\n", encoding="utf-8")
    scores, correct, reasons = result["scores"], result["correct"], result["reasons"]
    with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as f:
        for i, (p, k) in enumerate(result["samples"]):
            line = {
                "prompt_index": p,
                "image_index": k,
                "prompt": prompts[p],
                "tag": prompt_tags[p],
                "scores": {label: scores[label][i] for label in labels},
                "correct": {label: correct[label][i] for label in labels if correct[label] is not None},
            }
            if reasons:
                line["reasons"] = {label: why[i] for label, why in reasons.items()}
            f.write(json.dumps(line, default=str) + "\n")


def _title(options: argparse.Namespace, steps: int, guidance: float, num_samples: int, num_prompts: int) -> str:
    return (
        f"**{options.role}**, {steps} steps, "
        + (f"guidance {guidance:g}" if guidance != 1.0 else "no guidance")
        + f", seed {options.seed}: {num_samples} samples ({num_prompts} prompts x {options.images_per_prompt}"
        + (f", at least {options.min_samples_per_tag} a tag)" if options.min_samples_per_tag else ")")
        + (f", checkpoint `{options.ckpt}`" if options.ckpt else "")
    )


def run(options: argparse.Namespace, passthrough: Sequence[str] = (), fail=None) -> dict[str, Any]:
    """Evaluate as ``options`` (parsed by :func:`build_parser`) say; returns the results (``results.json``).

    ``fail(message)`` reports a problem found before the models load (default: raise EvaluationError).
    """
    from ..module import TDMR1Module
    from ..schedule import step_boundaries

    def _fail(message: str) -> NoReturn:
        if fail is not None:
            fail(message)
        raise EvaluationError(message)

    t_start = time.perf_counter()
    checked = _check_options(options, _fail)
    records = checked.records
    cli = _build_model_cli(options, checked, passthrough)
    module = cli.model
    if not isinstance(module, TDMR1Module):
        _fail(f"--config {options.config}: configures {type(module).__name__}, not a TDMR1Module")
    schedule = module.schedule
    config = _resolved_config(cli)
    if checked.override_rewards is not None:
        reward_entries, rewards = checked.override_rewards
    else:
        reward_entries, rewards = _reward_entries(config), module.eval_rewards
    if rewards is None and options.save_images == "none":
        _fail(
            "no evaluation rewards: the config has neither model.eval_rewards nor model.rewards; pass --rewards "
            "(or --save-images to only sample)"
        )
    is_generator = options.role != "teacher"
    steps = options.steps or (schedule.num_steps if is_generator else TEACHER_DEFAULT_STEPS)
    guidance = (
        1.0
        if is_generator
        else (options.guidance if options.guidance is not None else float(module.generator_loss.guidance_scale))
    )
    try:
        boundaries = step_boundaries(steps, schedule.shift)
    except ValueError as err:
        _fail(str(err))
    prompts, metadata, prompt_tags = split_records(records)
    if rewards is not None:
        try:
            rewards.validate(prompts, metadata)
        except ValueError as err:
            _fail(f"--prompts {options.prompts}: {err}")

    # -- load
    module.configure_model()
    ckpt_info = _load_checkpoint(module, options.ckpt, options.role) if options.ckpt is not None else None
    device = cli.trainer.strategy.root_device
    module.to(device).eval()
    if rewards is not None:
        rewards.to(device)
    _sync(device)
    t_loaded = time.perf_counter()

    # -- sample and score
    ipp = options.images_per_prompt
    batch_size = options.batch_size or module.rollout_batch_size
    out_dir = Path(options.out) if options.out is not None else None
    keeper = _ImageKeeper(options.save_images, out_dir, records)
    result = evaluate_samples(
        module,
        prompts,
        metadata,
        prompt_tags,
        role=options.role,
        boundaries=boundaries,
        guidance=guidance,
        rewards=rewards,
        images_per_prompt=images_per_prompt_by_tag(prompt_tags, ipp, options.min_samples_per_tag),
        seed=options.seed,
        batch_size=batch_size,
        forward_context=cli.trainer.precision_plugin.forward_context,
        progress=options.progress,
        on_images=keeper if options.save_images != "none" else None,
    )
    num_samples, sample_s, score_s = len(result["samples"]), result["sample_s"], result["score_s"]

    # -- summarise and write
    summary = result["summary"]
    results = {
        "config": str(options.config),
        "checkpoint": ckpt_info,
        "prompts": str(options.prompts),
        "role": options.role,
        "steps": steps,
        "shift": float(schedule.shift),
        "guidance": guidance,
        "seed": options.seed,
        "num_prompts": len(records),
        "images_per_prompt": ipp,
        "min_samples_per_tag": options.min_samples_per_tag,
        "num_samples": num_samples,
        "batch_size": batch_size,
        "device": str(device),
        "precision": str(getattr(cli.trainer, "precision", "")),
        "rewards": reward_entries,
        "overrides": [*checked.sets, *options.override, *passthrough],
        "summary": summary,
        "timings": {
            "load_s": t_loaded - t_start,
            "sample_s": sample_s,
            "score_s": score_s,
            "total_s": time.perf_counter() - t_start,
            "samples_per_s": num_samples / sample_s if sample_s > 0 else None,
        },
        "resolved_config": config,
        "table": format_table(summary, _title(options, steps, guidance, num_samples, len(records))),
    }
    if out_dir is not None:
        labels = [label for label, _, _ in rewards.items] if rewards is not None else []
        _write_outputs(out_dir, results, result, prompts, prompt_tags, labels)
        keeper.write_grid(ipp)
    return results


def main(args: list[str] | None = None) -> int:
    """Entry point of ``tdmr1 evaluate``: prints the table; 0 on success, 2 (with a message) on a usage error."""
    parser = build_parser()
    own, passthrough = _split_args(sys.argv[1:] if args is None else args)
    options = parser.parse_args(own)
    try:
        results = run(options, passthrough, fail=parser.error)
    except EvaluationError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(results["table"])
    return 0
