"""``tdmr1 evaluate``: sample a prompt set from a checkpoint (or the teacher), score it, print a per-tag table.

The generator (its EMA by default) samples at K steps without guidance, exactly as in validation and
``predict``; the teacher samples at N steps (default :data:`TEACHER_DEFAULT_STEPS`) with
classifier-free guidance (default: the config's ``model.guidance_scale``). Every sample is scored by
the evaluation rewards (the config's ``model.eval_rewards``, else ``model.rewards``, or ``--rewards``),
and the scores are summarised per tag (the prompt metadata's ``tag``, e.g. GenEval's, else one row
``all``):

* every reward: the mean score of the valid samples with its standard error;
* rewards whose ``details`` carry a per-sample ``correct`` (GenEval): the fraction correct with a 95%
  Wilson interval, and GenEval's overall score, the unweighted mean over tags (``geneval_table``).

The intervals treat every image as independent; with several images a prompt they are somewhat
optimistic. Outputs: the Markdown table on stdout, and with ``--out``: ``results.json`` (every number
plus what produced it), ``table.md``, ``samples.jsonl`` (one line a sample) and, on request, images.

Sampling noise is drawn per sample from ``(seed, prompt index, image index)`` on the CPU, so the images
do not depend on ``--batch-size`` or the device's random number generator.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from .data import ALL_TAG, keyed_generator, split_records
from .paths import ConfigPath
from .registry import build_rewards

__all__ = [
    "EvaluateOnFit",
    "EvaluationError",
    "TEACHER_DEFAULT_STEPS",
    "build_parser",
    "evaluate_samples",
    "format_comparison",
    "format_table",
    "images_per_prompt_by_tag",
    "main",
    "mean_and_se",
    "sample_images",
    "summarise",
    "wilson_interval",
]

ROLES = ("generator_ema", "generator", "teacher")
TEACHER_DEFAULT_STEPS = 50
"""Default sampling steps of the teacher (the generator's default is the model's K)."""
Z95 = 1.959963984540054
"""The standard normal's 97.5% quantile: 95% two-sided intervals."""
GRID_MAX_PROMPTS = 64
"""``--save-images grid`` shows at most this many prompts."""
# GenEval's tags in the order of its published tables, with the column names those tables use.
GENEVAL_COLUMNS = {
    "single_object": "Single Obj.",
    "two_object": "Two Obj.",
    "counting": "Counting",
    "colors": "Colors",
    "position": "Position",
    "color_attr": "Color Attri.",
}


class EvaluationError(ValueError):
    """A problem found while evaluating (a checkpoint that does not fit the model, ...)."""


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial fraction ``successes / n`` (None when ``n == 0``)."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_and_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    """The mean and its standard error ``std (n - 1) / sqrt(n)`` (None where undefined)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _fraction(flags: Sequence[bool]) -> dict[str, Any]:
    n, k = len(flags), sum(bool(f) for f in flags)
    ci = wilson_interval(k, n)
    return {"n": n, "correct": k, "fraction": k / n if n else None, "ci95": list(ci) if ci else None}


def _ordered_tags(tags: Sequence[str]) -> list[str]:
    """Tags in first-seen order, or in GenEval's table order when they are all GenEval tags."""
    seen = list(dict.fromkeys(tags))
    if seen and all(t in GENEVAL_COLUMNS for t in seen):
        return [t for t in GENEVAL_COLUMNS if t in seen]
    return seen


def summarise(
    tags: Sequence[str],
    scores: dict[str, Sequence[float | None]],
    correct: dict[str, Sequence[bool | None] | None],
    weights: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Per-tag statistics of per-sample results.

    Args:
        tags: Each sample's tag.
        scores: Per reward label, each sample's score, ``None`` where the sample is invalid.
        correct: Per reward label, each sample's ``correct`` (``None`` where invalid), or ``None`` for a
            reward without a ``correct`` detail.
        weights: The rewards' weights (recorded only).

    Returns:
        ``{"tags", "num_samples": {tag: n, "overall": n}, "rewards": {label: {...}}}`` where each reward
        has ``per_tag`` / ``overall`` means (``n``, ``valid``, ``mean``, ``se``) and, with ``correct``,
        an ``accuracy`` block: per-tag fractions with Wilson intervals and GenEval's overall (the mean
        over tags; its interval combines the tags' intervals as independent normal errors).
    """
    order = _ordered_tags(tags)
    per_tag_n = {t: sum(1 for x in tags if x == t) for t in order}
    out: dict[str, Any] = {"tags": order, "num_samples": {**per_tag_n, "overall": len(tags)}, "rewards": {}}
    for label, values in scores.items():
        entry: dict[str, Any] = {"weight": (weights or {}).get(label), "per_tag": {}}
        for t in order:
            vals = [v for x, v in zip(tags, values) if x == t and v is not None]
            mean, se = mean_and_se(vals)
            entry["per_tag"][t] = {"n": per_tag_n[t], "valid": len(vals), "mean": mean, "se": se}
        vals = [v for v in values if v is not None]
        mean, se = mean_and_se(vals)
        entry["overall"] = {"n": len(values), "valid": len(vals), "mean": mean, "se": se}
        flags = correct.get(label)
        if flags is not None:
            entry["accuracy"] = _accuracy(tags, order, flags)
        out["rewards"][label] = entry
    return out


def _accuracy(tags: Sequence[str], order: list[str], flags: Sequence[bool | None]) -> dict[str, Any]:
    per_tag = {t: _fraction([f for x, f in zip(tags, flags) if x == t and f is not None]) for t in order}
    valid_tags = [x for x, f in zip(tags, flags) if f is not None]
    valid_flags = [bool(f) for f in flags if f is not None]
    pooled = _fraction(valid_flags)
    if not valid_flags:
        return {"per_tag": per_tag, "overall": None, "pooled": pooled}
    from tdmr1_rewards.geneval import geneval_table

    table = geneval_table(valid_tags, valid_flags)
    scored = [t for t in order if per_tag[t]["n"]]
    if len(scored) == 1:
        ci, se, method = per_tag[scored[0]]["ci95"], None, "Wilson (a single tag)"
    else:
        # each tag's standard error read off its Wilson interval (never 0, unlike p (1 - p) / n)
        ses = [(per_tag[t]["ci95"][1] - per_tag[t]["ci95"][0]) / (2 * Z95) for t in scored]
        se = math.sqrt(math.fsum(s * s for s in ses)) / len(scored)
        ci = [max(0.0, table["overall"] - Z95 * se), min(1.0, table["overall"] + Z95 * se)]
        method = "mean over tags; normal interval from the tags' Wilson intervals"
    overall = {"value": table["overall"], "se": se, "ci95": ci, "num_images": table["num_images"], "method": method}
    return {"per_tag": per_tag, "overall": overall, "pooled": pooled}


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


def _fmt_fraction(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def _fmt_mean(mean: float | None, se: float | None) -> str:
    """``mean ± se`` to the standard error's second significant digit (at least 3 decimals)."""
    if mean is None:
        return "–"
    if se is None or not se > 0:
        return f"{mean:.3f}" if se is None else f"{mean:.3f} ± 0"
    decimals = min(8, max(3, 1 - math.floor(math.log10(se))))
    return f"{mean:.{decimals}f} ± {se:.{decimals}f}"


def format_table(summary: dict[str, Any], title: str | None = None) -> str:
    """The Markdown table of :func:`summarise`'s result: one column per tag plus Overall.

    Rows: the number of samples; per reward with a ``correct`` detail, its accuracy (GenEval: the
    fraction correct [95% Wilson interval]; Overall = mean over tags); per reward, the mean score ±
    standard error (Overall = mean over all samples); and the valid counts where some sample was invalid.
    A single tag ``all`` shows only the Overall column.
    """
    tags = summary["tags"]
    columns = [] if tags == [ALL_TAG] else tags
    header = ["metric", *[GENEVAL_COLUMNS.get(t, t) for t in columns], "Overall"]
    rows = [["samples", *[str(summary["num_samples"][t]) for t in columns], str(summary["num_samples"]["overall"])]]
    notes = []
    for label, entry in summary["rewards"].items():
        acc = entry.get("accuracy")
        if acc is not None:
            cells = [_fmt_fraction(acc["per_tag"][t]["fraction"], acc["per_tag"][t]["ci95"]) for t in columns]
            overall = acc["overall"]
            cells.append(_fmt_fraction(overall["value"], overall["ci95"]) if overall else "–")
            rows.append([f"{label} accuracy", *cells])
            if "accuracy" not in " ".join(notes):
                notes.append(
                    "accuracy: fraction correct [95% Wilson interval]; Overall = mean over tags (GenEval's overall) "
                    "[95% normal interval]."
                )
        cells = [_fmt_mean(entry["per_tag"][t]["mean"], entry["per_tag"][t]["se"]) for t in columns]
        cells.append(_fmt_mean(entry["overall"]["mean"], entry["overall"]["se"]))
        rows.append([f"{label} score", *cells])
        if entry["overall"]["valid"] < entry["overall"]["n"]:
            cells = [f"{entry['per_tag'][t]['valid']}/{entry['per_tag'][t]['n']}" for t in columns]
            rows.append([f"{label} valid", *cells, f"{entry['overall']['valid']}/{entry['overall']['n']}"])
    if summary["rewards"]:
        notes.append("score: mean of the valid samples ± standard error; Overall = mean over all samples.")
    lines = [] if title is None else [title, ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|:--" + "|--:" * (len(header) - 1) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if notes:
        lines += [""] + [f"_{n}_" for n in notes]
    return "\n".join(lines)


def format_comparison(rows: Sequence[tuple[str, dict[str, Any]]], title: str | None = None) -> str:
    """One Markdown row per evaluated model (``(label, summarise(...))`` pairs over one prompt set).

    Columns: for each reward with a ``correct`` detail, the per-tag accuracies and the Overall (mean over
    tags) with its 95% interval; for every other reward, its mean score ± standard error over all samples.
    """
    if not rows:
        return ""
    first = rows[0][1]
    tags = [t for t in first["tags"] if t != ALL_TAG]
    header, kinds = ["model"], []
    for label, entry in first["rewards"].items():
        if entry.get("accuracy") is not None:
            header += [GENEVAL_COLUMNS.get(t, t) for t in tags] + [f"{label} Overall [95% CI]"]
            kinds.append((label, "accuracy"))
        else:
            header.append(f"{label} (mean ± se)")
            kinds.append((label, "mean"))
    lines = [] if title is None else [title, ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|:--" + "|--:" * (len(header) - 1) + "|")
    for name, summary in rows:
        cells = [name]
        for label, kind in kinds:
            entry = summary["rewards"].get(label)
            if entry is None:
                cells += ["–"] * (len(tags) + 1 if kind == "accuracy" else 1)
            elif kind == "accuracy":
                acc = entry["accuracy"]
                cells += [_fmt_fraction(acc["per_tag"][t]["fraction"], None) if t in acc["per_tag"] else "–" for t in tags]
                overall = acc["overall"]
                cells.append(_fmt_fraction(overall["value"], overall["ci95"]) if overall else "–")
            else:
                cells.append(_fmt_mean(entry["overall"]["mean"], entry["overall"]["se"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def sample_noise(shape: Sequence[int], seed: int, prompt_index: int, image_index: int) -> Tensor:
    """One sample's initial noise, from ``(seed, prompt index, image index)`` on the CPU."""
    generator = keyed_generator(seed, prompt_index, image_index)
    return torch.randn(tuple(shape), generator=generator)


@torch.no_grad()
def sample_images(
    module: Any, prompts: list[str], noise: Tensor, role: str, boundaries: list[float], guidance: float = 1.0
) -> Tensor:
    """``uint8`` images of ``prompts`` from ``role``, Euler steps over ``boundaries`` from ``noise``.

    ``guidance`` is the classifier-free guidance scale (1: none; otherwise one batched forward of the
    conditional and unconditional inputs per step). An adapter role is merged into the weights while
    sampling, as in :meth:`TDMR1Module.generate`, which this reproduces at K steps without guidance.
    The update rule is :func:`~tdmr1_lightning.sampler.sample_trajectory`'s, without storing the
    trajectory (N steps of a teacher would hold N latents a sample).
    """
    from .schedule import euler_step

    backbone = module.backbone
    cond = backbone.encode_prompts(prompts)
    x = noise.to(module.device)
    with backbone.roles.merged(role):
        for s, s_next in zip(boundaries[:-1], boundaries[1:]):
            x = euler_step(x, s, s_next, backbone.guided_velocity(role, x, s, cond, guidance))
    return module.decode(x)


def images_per_prompt_by_tag(tags: Sequence[str], images_per_prompt: int, min_samples_per_tag: int = 0) -> list[int]:
    """Samples of each prompt: ``images_per_prompt``, more for the prompts of a tag with few prompts.

    A tag with ``n`` prompts gets ``max(images_per_prompt, ceil(min_samples_per_tag / n))`` samples a
    prompt, so every tag's accuracy rests on at least ``min_samples_per_tag`` images. GenEval's overall
    is the mean over tags: a tag of two prompts weighs as much as one of two hundred, and four images
    each would make its share of the overall mostly noise.
    """
    if images_per_prompt < 1 or min_samples_per_tag < 0:
        raise ValueError(f"images_per_prompt must be >= 1 and min_samples_per_tag >= 0, got {images_per_prompt}, {min_samples_per_tag}")
    prompts_of = Counter(tags)
    return [max(images_per_prompt, math.ceil(min_samples_per_tag / prompts_of[t])) for t in tags]


def evaluate_samples(
    module: Any,
    prompts: list[str],
    metadata: list[dict],
    tags: list[str],
    *,
    role: str,
    boundaries: list[float],
    guidance: float,
    rewards: Any,
    images_per_prompt: int | Sequence[int] = 1,
    seed: int = 0,
    batch_size: int = 64,
    forward_context: Any = nullcontext,
    progress: bool = True,
    on_images: Any = None,
) -> dict[str, Any]:
    """Sample every prompt ``images_per_prompt`` times from ``role`` and score the images.

    Args:
        module: A loaded :class:`~tdmr1_lightning.module.TDMR1Module` (in eval mode, on its device).
        prompts, metadata, tags: The prompt records and each one's table tag.
        role, boundaries, guidance: What samples, over which step boundaries, with which guidance.
        rewards: A :class:`~tdmr1_lightning.reward.WeightedRewards`, or None to only sample.
        images_per_prompt, seed, batch_size: Samples per prompt (one number, or one a prompt, see
            :func:`images_per_prompt_by_tag`); the noise seed (per sample, see :func:`sample_noise`);
            samples per forward batch.
        forward_context: Context manager factory wrapped around each sampling call (mixed precision).
        progress: Show a progress bar on stderr.
        on_images: Called as ``on_images(batch, images)`` with each batch's ``(prompt, image)`` indices
            and its ``uint8`` images on the CPU.

    Returns:
        ``samples`` (the ``(prompt, image)`` indices), ``scores`` and ``correct`` per reward label (None
        where invalid; ``correct`` None for a reward without it), ``reasons`` per label of the rewards
        whose details give them (why a sample failed, e.g. GenEval's; "" where it passed),
        ``summary`` (:func:`summarise`), ``sample_s`` and ``score_s`` (seconds).
    """
    from tqdm import tqdm

    counts = [images_per_prompt] * len(prompts) if isinstance(images_per_prompt, int) else list(images_per_prompt)
    if len(counts) != len(prompts):
        raise ValueError(f"images_per_prompt: {len(counts)} counts for {len(prompts)} prompts")
    samples = [(p, k) for p in range(len(prompts)) for k in range(counts[p])]
    batches = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    labels = [label for label, _, _ in rewards.items] if rewards is not None else []
    scores: dict[str, list[float | None]] = {label: [] for label in labels}
    correct: dict[str, list[bool | None] | None] = {label: [] for label in labels}
    reasons: dict[str, list[str | None]] = {label: [] for label in labels}
    device = module.device
    sample_s = score_s = 0.0
    steps = len(boundaries) - 1
    bar = tqdm(batches, desc=f"{role} {steps} steps", unit="batch", disable=not progress, file=sys.stderr)
    for batch in bar:
        batch_prompts = [prompts[p] for p, _ in batch]
        batch_meta = [metadata[p] for p, _ in batch]
        noise = torch.stack([sample_noise(module.backbone.latent_shape, seed, p, k) for p, k in batch])
        t0 = time.perf_counter()
        with forward_context():
            images = sample_images(module, batch_prompts, noise, role, boundaries, guidance)
        _sync(device)
        t1 = time.perf_counter()
        sample_s += t1 - t0
        if rewards is not None:
            outputs = rewards(images, batch_prompts, batch_meta)
            for label, (out, _) in outputs.items():
                valid = out.valid.tolist()
                scores[label] += [float(s) if v else None for s, v in zip(out.scores.tolist(), valid)]
                why = out.details.get("reasons")
                if not (isinstance(why, (list, tuple)) and len(why) == len(batch)):
                    why = [None] * len(batch)
                reasons[label] += [str(r) if r is not None and v else None for r, v in zip(why, valid)]
                flags = out.details.get("correct")
                if flags is None or correct[label] is None:
                    correct[label] = None
                    continue
                flags = flags.tolist() if isinstance(flags, Tensor) else list(flags)
                if len(flags) != len(batch):
                    raise EvaluationError(f"reward {label!r}: details['correct'] has {len(flags)} entries for {len(batch)} images")
                correct[label] += [bool(f) if v else None for f, v in zip(flags, valid)]
            score_s += time.perf_counter() - t1
        if on_images is not None:
            on_images(batch, images.cpu())
    bar.close()
    weights = {label: weight for label, _, weight in rewards.items} if rewards is not None else {}
    summary = summarise([tags[p] for p, _ in samples], scores, correct, weights)
    reasons = {label: why for label, why in reasons.items() if any(r is not None for r in why)}
    return {"samples": samples, "scores": scores, "correct": correct, "reasons": reasons, "summary": summary,
            "sample_s": sample_s, "score_s": score_s}


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------

_EPILOG = f"""\
roles and defaults:
  generator_ema, generator: K steps (model.num_steps) without guidance; --steps samples the same
      generator at another step count; --guidance is refused (the generator distilled the teacher's
      guidance), except 1.0 (= none).
  teacher: {TEACHER_DEFAULT_STEPS} steps with guidance model.guidance_scale; --ckpt does not change it.
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
    what.add_argument("--config", required=True, metavar="YAML",
                      help="training config (as for 'tdmr1 fit'): the backbone, K, shift, guidance and, by default, "
                           "the evaluation rewards (model.eval_rewards, else model.rewards)")
    what.add_argument("--ckpt", metavar="PATH",
                      help="Lightning checkpoint of the module (role weights); without it the roles are as "
                           "initialised, e.g. the generator from the backbone's generator_checkpoint; read with "
                           "weights_only=True, so no pickled code runs")
    what.add_argument("--prompts", required=True, metavar="FILE",
                      help="prompt file: text (one a line) or JSON Lines / JSON with 'prompt' plus metadata; "
                           "the metadata reaches the rewards and its 'tag' groups the table")
    what.add_argument("--role", default="generator_ema", choices=ROLES,
                      help="which network samples (default: %(default)s)")
    what.add_argument("--limit", type=_positive_int, metavar="N", help="evaluate only the first N prompts")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", type=_positive_int, metavar="N",
                          help=f"sampling steps (default: the model's K for a generator, {TEACHER_DEFAULT_STEPS} for the teacher)")
    sampling.add_argument("--guidance", type=_guidance, metavar="W",
                          help="classifier-free guidance of the teacher (default: model.guidance_scale; 1 = none); "
                               "a generator role accepts only 1")
    sampling.add_argument("--images-per-prompt", type=_positive_int, default=1, metavar="M",
                          help="samples per prompt (default: %(default)s; GenEval's protocol uses 4)")
    sampling.add_argument("--min-samples-per-tag", type=_non_negative_int, default=0, metavar="N",
                          help="sample the prompts of a tag with few prompts more often, so that every tag has at "
                               "least N samples (default: %(default)s = off); the overall over tags then rests on "
                               "enough images in every tag")
    sampling.add_argument("--batch-size", type=_positive_int, metavar="B",
                          help="samples per forward batch (default: the model's rollout_batch_size); "
                               "the images do not depend on it")
    sampling.add_argument("--seed", type=_non_negative_int, default=0,
                          help="seed of the per-sample noise (default: %(default)s)")
    sampling.add_argument("--device", default="auto", metavar="DEV",
                          help="auto (a GPU when there is one), cpu, cuda or cuda:N (default: %(default)s)")
    scoring = parser.add_argument_group("scoring and output")
    scoring.add_argument("--rewards", metavar="LIST",
                         help="evaluation rewards replacing the config's: a YAML/JSON list like model.rewards, or a file")
    scoring.add_argument("--out", metavar="DIR",
                         help="write results.json, table.md and samples.jsonl here (default: only print the table)")
    scoring.add_argument("--save-images", choices=("none", "each", "grid"), default="none",
                         help="also write the images to --out: 'each' one PNG a sample (GenEval's folder layout), "
                              "'grid' one grid.png (default: %(default)s)")
    scoring.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                         help="show a progress bar over the batches on stderr (default: on)")
    overrides = parser.add_argument_group("training-config overrides")
    overrides.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override a config value, e.g. model.backbone.init_args.dtype=float32 (repeatable)")
    overrides.add_argument("--override", action="append", default=[], metavar="ARG",
                           help="pass one argument to the config parser verbatim, e.g. "
                                "--override --model.backbone.init_args.directory=/tmp/tiny (repeatable)")
    return parser


def _split_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Own arguments and the passthrough after a bare ``--``; ``--override X`` keeps ``X`` even if it starts with ``-``."""
    own: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return own, list(args[i + 1:])
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
    try:
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
        raise EvaluationError(f"--ckpt {path}: does not fit this config's model (lora_rank? roles_as?): {err}") from None
    if role == "teacher":
        warnings.warn("--ckpt has no effect on --role teacher: the teacher is frozen and not checkpointed", UserWarning)
    info = {"path": str(path), "tensors": len(state), "loaded": len(matching), "unexpected": len(result.unexpected_keys)}
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _write_png(image: Tensor, path: Path) -> None:
    from torchvision.io import write_png

    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image.cpu(), str(path))


def run(options: argparse.Namespace, passthrough: Sequence[str] = (), fail=None) -> dict[str, Any]:
    """Evaluate as ``options`` (parsed by :func:`build_parser`) say; returns the results (``results.json``).

    ``fail(message)`` reports a problem found before the models load (default: raise EvaluationError).
    """
    from .data import PromptFileError, load_prompts
    from .registry import RewardRegistryError

    def _fail(message: str):
        if fail is not None:
            fail(message)
        raise EvaluationError(message)

    t_start = time.perf_counter()
    # -- checks that need no model
    if not Path(options.config).is_file():
        _fail(f"--config {options.config}: no such file")
    if options.ckpt is not None and not Path(options.ckpt).is_file():
        _fail(f"--ckpt {options.ckpt}: no such file")
    try:
        records = load_prompts(options.prompts)
    except PromptFileError as err:
        _fail(f"--prompts: {err}")
    if options.limit is not None:
        records = records[: options.limit]
    is_generator = options.role != "teacher"
    if is_generator and options.guidance is not None and options.guidance != 1.0:
        _fail(
            f"--guidance {options.guidance} with --role {options.role}: the generator distilled the teacher's guidance "
            "and samples without it; --guidance applies to --role teacher (or pass 1 = none)"
        )
    if options.save_images != "none" and options.out is None:
        _fail(f"--save-images {options.save_images} needs --out")
    try:
        device_args = _device_args(options.device)
    except EvaluationError as err:
        _fail(str(err))
    override_rewards = None
    if options.rewards is not None:
        try:
            entries = _parse_rewards(options.rewards)
            override_rewards = (entries, build_rewards(entries, "--rewards"))
        except (EvaluationError, RewardRegistryError) as err:
            _fail(str(err))
    sets = []
    for item in options.set:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            _fail(f"--set expects KEY=VALUE, got {item!r}")
        sets.append(f"--{key.strip().lstrip('-')}={value}")

    # -- the model, not loaded yet
    from .cli import build_cli

    cli_args = [
        "--config", str(options.config),
        *device_args, "--trainer.num_nodes=1", "--trainer.strategy=auto", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--data.train_prompts={options.prompts}", "--data.val_prompts=null",
        *sets, *options.override, *passthrough,
    ]
    cli = build_cli(cli_args, run=False)
    module = cli.model
    from .module import TDMR1Module

    if not isinstance(module, TDMR1Module):
        _fail(f"--config {options.config}: configures {type(module).__name__}, not a TDMR1Module")
    hp = module.hparams
    config = _resolved_config(cli)
    if override_rewards is not None:
        reward_entries, rewards = override_rewards
    else:
        reward_entries, rewards = _reward_entries(config), module.eval_rewards
    if rewards is None and options.save_images == "none":
        _fail("no evaluation rewards: the config has neither model.eval_rewards nor model.rewards; pass --rewards "
              "(or --save-images to only sample)")
    steps = options.steps or (hp.num_steps if is_generator else TEACHER_DEFAULT_STEPS)
    guidance = 1.0 if is_generator else (options.guidance if options.guidance is not None else float(hp.guidance_scale))
    from .schedule import step_boundaries

    try:
        boundaries = step_boundaries(steps, hp.shift)
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
    precision = cli.trainer.precision_plugin
    _sync(device)
    t_loaded = time.perf_counter()

    # -- sample and score
    ipp = options.images_per_prompt
    counts = images_per_prompt_by_tag(prompt_tags, ipp, options.min_samples_per_tag)
    batch_size = options.batch_size or module.rollout_batch_size
    labels = [label for label, _, _ in rewards.items] if rewards is not None else []
    out_dir = Path(options.out) if options.out is not None else None
    grid_images: list[Tensor] = []

    def keep_images(batch: list[tuple[int, int]], images: Tensor) -> None:
        if options.save_images == "each":
            for (p, k), image in zip(batch, images):
                folder = out_dir / "images" / f"{p:05d}"
                if k == 0:
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / "metadata.jsonl").write_text(json.dumps(records[p], default=str) + "\n", encoding="utf-8")
                _write_png(image, folder / "samples" / f"{k:04d}.png")
        elif options.save_images == "grid":
            grid_images.extend(image for (p, _), image in zip(batch, images) if p < GRID_MAX_PROMPTS)

    result = evaluate_samples(
        module, prompts, metadata, prompt_tags, role=options.role, boundaries=boundaries, guidance=guidance,
        rewards=rewards, images_per_prompt=counts, seed=options.seed, batch_size=batch_size,
        forward_context=precision.forward_context, progress=options.progress,
        on_images=keep_images if options.save_images != "none" else None,
    )
    samples, scores, correct, reasons = result["samples"], result["scores"], result["correct"], result["reasons"]
    sample_s, score_s = result["sample_s"], result["score_s"]

    # -- summarise and write
    summary = result["summary"]
    total_s = time.perf_counter() - t_start
    title = (
        f"**{options.role}**, {steps} steps, "
        + (f"guidance {guidance:g}" if guidance != 1.0 else "no guidance")
        + f", seed {options.seed}: {len(samples)} samples ({len(records)} prompts x {ipp}"
        + (f", at least {options.min_samples_per_tag} a tag)" if options.min_samples_per_tag else ")")
        + (f", checkpoint `{options.ckpt}`" if options.ckpt else "")
    )
    table = format_table(summary, title)
    results = {
        "config": str(options.config),
        "checkpoint": ckpt_info,
        "prompts": str(options.prompts),
        "role": options.role,
        "steps": steps,
        "shift": float(hp.shift),
        "guidance": guidance,
        "seed": options.seed,
        "num_prompts": len(records),
        "images_per_prompt": ipp,
        "min_samples_per_tag": options.min_samples_per_tag,
        "num_samples": len(samples),
        "batch_size": batch_size,
        "device": str(device),
        "precision": str(getattr(cli.trainer, "precision", "")),
        "rewards": reward_entries,
        "overrides": [*sets, *options.override, *passthrough],
        "summary": summary,
        "timings": {
            "load_s": t_loaded - t_start,
            "sample_s": sample_s,
            "score_s": score_s,
            "total_s": total_s,
            "samples_per_s": len(samples) / sample_s if sample_s > 0 else None,
        },
        "resolved_config": config,
        "table": table,
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
        (out_dir / "table.md").write_text(table + "\n", encoding="utf-8")
        with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as f:
            for i, (p, k) in enumerate(samples):
                line = {
                    "prompt_index": p, "image_index": k, "prompt": prompts[p], "tag": prompt_tags[p],
                    "scores": {label: scores[label][i] for label in labels},
                    "correct": {label: correct[label][i] for label in labels if correct[label] is not None},
                }
                if reasons:
                    line["reasons"] = {label: why[i] for label, why in reasons.items()}
                f.write(json.dumps(line, default=str) + "\n")
        if options.save_images == "grid" and grid_images:
            from torchvision.utils import make_grid

            nrow = ipp if ipp > 1 else math.ceil(math.sqrt(len(grid_images)))
            _write_png(make_grid(torch.stack(grid_images), nrow=nrow, padding=2), out_dir / "grid.png")
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


if __name__ == "__main__":
    sys.exit(main())


# --------------------------------------------------------------------------------------------------
# Evaluation at the start and end of training (a Lightning callback)
# --------------------------------------------------------------------------------------------------

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
        from .data import load_prompts

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
        from .schedule import step_boundaries

        rewards = self._rewards(module).to(module.device)
        was_training = module.training
        module.eval()
        t0 = time.perf_counter()
        try:
            result = evaluate_samples(
                module, self.prompts, self.metadata, self.tags, role=role, boundaries=step_boundaries(steps, module.hparams.shift),
                guidance=guidance, rewards=rewards, images_per_prompt=self.counts, seed=self.seed,
                batch_size=self.batch_size or module.rollout_batch_size,
                forward_context=trainer.precision_plugin.forward_context, progress=trainer.progress_bar_callback is not None,
            )
        finally:
            module.train(was_training)
        summary = result["summary"]
        self.rows.append((label, summary))
        self.results[label] = {"role": role, "steps": steps, "guidance": guidance, "summary": summary,
                               "seconds": time.perf_counter() - t0, "global_step": trainer.global_step}
        for reward, entry in summary["rewards"].items():
            acc = entry.get("accuracy")
            value = acc["overall"]["value"] if acc and acc["overall"] else entry["overall"]["mean"]
            if value is not None and trainer.logger is not None:
                key = "/".join(part for part in ("eval", self.name, label, reward) if part)
                trainer.logger.log_metrics({key: float(value)}, step=trainer.global_step)

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.at_start and trainer.is_global_zero:
            self._run(trainer, pl_module, f"generator at start (step {trainer.global_step})", "generator_ema",
                      pl_module.hparams.num_steps, 1.0)
        trainer.strategy.barrier("EvaluateOnFit.start")

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.is_global_zero:  # sampling runs under no_grad (sample_images)
            self._run(trainer, pl_module, f"generator after training (step {trainer.global_step})", "generator_ema",
                      pl_module.hparams.num_steps, 1.0)
            if self.teacher_steps is not None:
                guidance = self.teacher_guidance if self.teacher_guidance is not None else float(pl_module.hparams.guidance_scale)
                self._run(trainer, pl_module, f"teacher, {self.teacher_steps} steps, guidance {guidance:g}", "teacher",
                          self.teacher_steps, guidance)
            at_least = f" (at least {self.min_samples_per_tag} a tag)" if self.min_samples_per_tag else ""
            title = (f"Evaluation{f' ({self.name})' if self.name else ''} on {self.prompts_path}: {len(self.records)} prompts x {self.images_per_prompt}{at_least}, "
                     f"{sum(self.counts)} samples, seed {self.seed}; generator rows at {pl_module.hparams.num_steps} steps "
                     "without guidance")
            table = format_comparison(self.rows, title)
            print("\n" + table + "\n", flush=True)
            out = Path(self.out_dir) if self.out_dir else Path(trainer.log_dir or trainer.default_root_dir) / "evaluation" / (self.name or "")
            out.mkdir(parents=True, exist_ok=True)
            (out / "table.md").write_text(table + "\n", encoding="utf-8")
            (out / "results.json").write_text(
                json.dumps({"name": self.name, "prompts": self.prompts_path, "images_per_prompt": self.images_per_prompt,
                            "min_samples_per_tag": self.min_samples_per_tag, "seed": self.seed,
                            "rewards": self.reward_entries, "rows": self.results, "table": table}, indent=2, default=str) + "\n",
                encoding="utf-8",
            )
        trainer.strategy.barrier("EvaluateOnFit.end")
