"""Markdown tables of evaluation summaries: one model, or several side by side."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..data import ALL_TAG
from .stats import GENEVAL_COLUMNS

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
                cells += [
                    _fmt_fraction(acc["per_tag"][t]["fraction"], None) if t in acc["per_tag"] else "–" for t in tags
                ]
                overall = acc["overall"]
                cells.append(_fmt_fraction(overall["value"], overall["ci95"]) if overall else "–")
            else:
                cells.append(_fmt_mean(entry["overall"]["mean"], entry["overall"]["se"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
