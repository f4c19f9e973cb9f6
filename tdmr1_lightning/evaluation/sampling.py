"""Sampling a prompt set for evaluation: per-sample noise, images per prompt by tag, scoring."""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor

from ..data import keyed_generator
from .stats import EvaluationError, summarise

TEACHER_DEFAULT_STEPS = 50
"""Default sampling steps of the teacher (the generator's default is the model's K)."""


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
    The sampler is training's (:func:`~tdmr1_lightning.sampler.sample`, the rollouts' update rule
    without storing the trajectory).
    """
    from ..sampler import sample

    backbone = module.backbone
    cond = backbone.encode_prompts(prompts)
    with backbone.roles.merged(role):
        x = sample(
            lambda x, s: backbone.guided_velocity(role, x, s, cond, guidance), noise.to(module.device), boundaries
        )
    return module.decode(x)


def images_per_prompt_by_tag(tags: Sequence[str], images_per_prompt: int, min_samples_per_tag: int = 0) -> list[int]:
    """Samples of each prompt: ``images_per_prompt``, more for the prompts of a tag with few prompts.

    A tag with ``n`` prompts gets ``max(images_per_prompt, ceil(min_samples_per_tag / n))`` samples a
    prompt, so every tag's accuracy rests on at least ``min_samples_per_tag`` images. GenEval's overall
    is the mean over tags: a tag of two prompts weighs as much as one of two hundred, and four images
    each would make its share of the overall mostly noise.
    """
    if images_per_prompt < 1 or min_samples_per_tag < 0:
        raise ValueError(
            "images_per_prompt must be >= 1 and min_samples_per_tag >= 0, "
            f"got {images_per_prompt}, {min_samples_per_tag}"
        )
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
                    raise EvaluationError(
                        f"reward {label!r}: details['correct'] has {len(flags)} entries for {len(batch)} images"
                    )
                correct[label] += [bool(f) if v else None for f, v in zip(flags, valid)]
            score_s += time.perf_counter() - t1
        if on_images is not None:
            on_images(batch, images.cpu())
    bar.close()
    weights = {label: weight for label, _, weight in rewards.items} if rewards is not None else {}
    summary = summarise([tags[p] for p, _ in samples], scores, correct, weights)
    reasons = {label: why for label, why in reasons.items() if any(r is not None for r in why)}
    return {
        "samples": samples,
        "scores": scores,
        "correct": correct,
        "reasons": reasons,
        "summary": summary,
        "sample_s": sample_s,
        "score_s": score_s,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
