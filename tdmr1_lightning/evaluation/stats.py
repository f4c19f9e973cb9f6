"""Statistics of an evaluation: Wilson intervals, means with standard errors, per-tag summaries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Z95 = 1.959963984540054
"""The standard normal's 97.5% quantile: 95% two-sided intervals."""
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


def mean_over_tags(tags: Sequence[str], correct: Sequence[bool]) -> dict[str, Any]:
    """GenEval's benchmark number from per-image results: each tag's fraction correct and their unweighted mean.

    Returns ``{"overall": float, "per_tag": {tag: accuracy}, "num_images": {tag: int}}`` (tags in first-seen order).
    """
    flags = [bool(c) for c in correct]
    if len(tags) != len(flags):
        raise ValueError(f"mean_over_tags: {len(tags)} tags but {len(flags)} results")
    if not flags:
        raise ValueError("mean_over_tags: no results")
    hits: dict[str, list[int]] = {}
    for tag, ok in zip(tags, flags):
        hits.setdefault(tag, []).append(int(ok))
    per_tag = {tag: sum(v) / len(v) for tag, v in hits.items()}
    return {
        "overall": sum(per_tag.values()) / len(per_tag),
        "per_tag": per_tag,
        "num_images": {tag: len(v) for tag, v in hits.items()},
    }


def _accuracy(tags: Sequence[str], order: list[str], flags: Sequence[bool | None]) -> dict[str, Any]:
    per_tag = {t: _fraction([f for x, f in zip(tags, flags) if x == t and f is not None]) for t in order}
    valid_tags = [x for x, f in zip(tags, flags) if f is not None]
    valid_flags = [bool(f) for f in flags if f is not None]
    pooled = _fraction(valid_flags)
    if not valid_flags:
        return {"per_tag": per_tag, "overall": None, "pooled": pooled}
    table = mean_over_tags(valid_tags, valid_flags)
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
