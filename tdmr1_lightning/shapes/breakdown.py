"""Where an evaluation's accuracy comes from: by held-out kind, and why the failures failed.

``tdmr1 evaluate --out DIR`` writes one line a sample to ``DIR/samples.jsonl`` (prompt, tag, whether
each reward counted it correct, and the GenEval scorer's reasons). This module reads one or more such
evaluations of the same prompt set and prints two Markdown tables:

* **accuracy by held-out kind**: the prompts grouped by the kinds of held-out combination they contain
  (:func:`~tdmr1_lightning.shapes.splits.prompt_combinations` against the ``held_out`` of a prompt
  set's ``world.json``: coloured pair, relation triple, (count, shape), shape pair, (colour, shape)),
  the strict accuracy of each group with its 95% Wilson interval, and a pooled row over chosen tags;
* **failures by tag**: the fraction of samples of each tag that were correct or failed first for
  a missing object, a wrong colour, a wrong relation, a missing relation target, or an extra object.

With ``--drawn`` it also reads the images an evaluation saved (``tdmr1 evaluate --save-images each``),
runs the world's detector on them and prints a third table, **shapes drawn by tag**: whether each
sample drew the shapes its prompt names in the numbers it names (colours and places aside), a wrong
shape among the right number of objects, or too few or too many objects; and, overlapping these,
how many images hold a shape the prompt does not name. GenEval's "expected
triangle>=3, found 1" reads the same for one triangle and for a triangle between two squares; this
table tells them apart.

CLI (the tables in docs/shapes.md)::

    tdmr1 shapes breakdown --prompts configs/prompts/shapes/test.jsonl \\
        teacher=runs/eval/teacher tdm=runs/eval/tdm tdmr1=runs/eval/tdmr1_seed1
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tdmr1_rewards.human_csv import read_image

from ..data import load_prompts
from ..evaluation import wilson_interval
from .detector import ShapesDetector
from .splits import HeldOut, prompt_combinations
from .world import World

KIND_NAMES: dict[str, str] = {
    "colors": "coloured pair",
    "relation": "relation triple",
    "count": "(count, shape)",
    "counted": "(count, colour, shape)",
    "pair": "shape pair",
    "color": "(colour, shape)",
}
"""Display names of the kinds of held-out combination (the tags of :func:`prompt_combinations`), in
table order."""

FAILURES: tuple[str, ...] = (
    "correct",
    "missing object",
    "wrong colour",
    "wrong relation",
    "no relation target",
    "extra object",
    "other",
)
"""Failure categories of :func:`failure_kind`, in table order."""

DRAWN: tuple[str, ...] = ("as asked", "a wrong shape", "too few objects", "too many objects")
"""Outcomes of :func:`drawn_outcome`, in table order."""

UNNAMED = "a shape not named"
"""The column of :func:`drawn_by_tag` that overlaps the others: images with an object of a shape
the prompt does not name (a square for "three circles")."""

_MISSING = re.compile(r"^expected [a-z ]+>=\d+, found \d+$")
_COLOUR = re.compile(r"^expected [a-z]+ [a-z ]+>=\d+, found \d+ [a-z]+$")
_RELATION = re.compile(r"^expected [a-z ]+ (left of|right of|above|below) target, found .* target$")
_EXTRA = re.compile(r"^expected [a-z ]+<\d+, found \d+$")


def failure_kind(reason: str) -> str:
    """The category (:data:`FAILURES`) of a sample's first GenEval failure reason; ``""`` is correct.

    The scorer joins a sample's reasons with ``"; "`` and a colour reason has its own ``"; and ..."``
    tail, so only the text before the first ``";"`` is read.
    """
    first = reason.split(";")[0].strip()
    if not first:
        return "correct"
    if first.startswith("no target for "):
        return "no relation target"
    if _RELATION.match(first):
        return "wrong relation"
    if _COLOUR.match(first):
        return "wrong colour"
    if _MISSING.match(first):
        return "missing object"
    if _EXTRA.match(first):
        return "extra object"
    return "other"


def held_out_kinds(record: Mapping[str, Any], held_out: HeldOut) -> tuple[str, ...]:
    """The kinds (keys of :data:`KIND_NAMES`, in its order) of the held-out combinations a record contains."""
    found = {combo[0] for combo in prompt_combinations(record) & held_out.combinations()}
    return tuple(kind for kind in KIND_NAMES if kind in found)


def load_held_out(world_json: str | Path) -> HeldOut:
    """The held-out combinations of a prompt set's ``world.json`` (as written by ``tdmr1 shapes
    prompts``)."""
    path = Path(world_json)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["held_out"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a world.json with a 'held_out' entry ({exc})") from exc
    return HeldOut.from_dict(data)


def load_world(world_json: str | Path) -> World:
    """The world of a prompt set's ``world.json`` (its ``world`` entry; the default world without one),
    so that ``--drawn`` detects the shapes that world draws."""
    path = Path(world_json)
    try:
        data = json.loads(path.read_text(encoding="utf-8")).get("world") or {}
        return World(**data)
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"{path}: not a world.json with a readable 'world' entry ({exc})") from exc


def load_samples(path: str | Path) -> list[dict[str, Any]]:
    """The samples of an evaluation: ``samples.jsonl`` itself or the ``--out`` folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / "samples.jsonl"
    if not path.is_file():
        raise ValueError(
            f"{path}: no such file (an evaluation's samples.jsonl, or the folder 'tdmr1 evaluate --out' wrote)"
        )
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
            sample["prompt"], sample["tag"], sample["correct"]  # noqa: B018 -- the keys read below
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}, line {number}: not a sample of 'tdmr1 evaluate' ({exc!r})") from exc
        samples.append(sample)
    if not samples:
        raise ValueError(f"{path}: no samples")
    return samples


def _correct(sample: Mapping[str, Any], reward: str) -> bool | None:
    """The sample's strict verdict; ``None`` for a sample the reward masked out (invalid metadata)."""
    if reward not in sample["correct"]:
        raise ValueError(f"sample of {sample['prompt']!r} has no strict verdict of reward {reward!r}")
    value = sample["correct"][reward]
    return None if value is None else bool(value)


def _accuracy(flags: Sequence[bool]) -> dict[str, Any]:
    n, k = len(flags), sum(flags)
    return {"samples": n, "correct": k, "accuracy": k / n if n else None, "interval": wilson_interval(k, n)}


def accuracy_by_kind(
    samples: Iterable[Mapping[str, Any]],
    records: Mapping[str, Mapping[str, Any]],
    held_out: HeldOut,
    reward: str = "shapes_geneval",
    pool_tags: Sequence[str] = ("position", "color_attr"),
) -> dict[str, dict[str, Any]]:
    """Strict accuracy of the samples grouped by the held-out kinds of their prompts.

    Args:
        samples: Samples of ``tdmr1 evaluate`` (``prompt``, ``tag``, ``correct``).
        records: The prompt set's records by prompt text (GenEval metadata).
        held_out: The set's held-out combinations.
        reward: Whose strict verdict counts.
        pool_tags: Tags pooled into one more group, ``"pooled: <tags>"`` (none when empty).

    Returns:
        ``{group: {"prompts", "samples", "correct", "accuracy", "interval"}}``, a group per combination of
        kinds (``"coloured pair + relation triple"``; ``"none"`` for prompts without a held-out
        combination), in :data:`KIND_NAMES` order, then the pooled group. Samples the reward masked
        out (verdict ``None``) are left out.
    """
    flags: dict[tuple[str, ...], list[bool]] = defaultdict(list)
    prompts: dict[tuple[str, ...], set[str]] = defaultdict(set)
    pooled: list[bool] = []
    pooled_prompts: set[str] = set()
    for sample in samples:
        record = records.get(sample["prompt"])
        if record is None:
            raise ValueError(f"sample prompt {sample['prompt']!r} is not in the prompt set")
        ok = _correct(sample, reward)
        if ok is None:
            continue
        kinds = held_out_kinds(record, held_out)
        flags[kinds].append(ok)
        prompts[kinds].add(sample["prompt"])
        if sample["tag"] in pool_tags:
            pooled.append(ok)
            pooled_prompts.add(sample["prompt"])
    order = {kind: i for i, kind in enumerate(KIND_NAMES)}
    groups: dict[str, dict[str, Any]] = {}
    for kinds in sorted(flags, key=lambda ks: (len(ks), [order[k] for k in ks])):
        name = " + ".join(KIND_NAMES[k] for k in kinds) or "none"
        groups[name] = {"prompts": len(prompts[kinds]), **_accuracy(flags[kinds])}
    if pool_tags:
        groups["pooled: " + ", ".join(pool_tags)] = {"prompts": len(pooled_prompts), **_accuracy(pooled)}
    return groups


def failures_by_tag(samples: Iterable[Mapping[str, Any]], reward: str = "shapes_geneval") -> dict[str, Counter]:
    """For each tag, how many samples were correct or failed first for each :data:`FAILURES` category
    (samples the reward masked out are left out)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for sample in samples:
        ok = _correct(sample, reward)
        if ok is None:
            continue
        if ok:
            kind = "correct"
        else:  # a failure without a reason (GenEvalReward always gives one) counts as "other"
            kind = failure_kind((sample.get("reasons") or {}).get(reward) or "")
            kind = "other" if kind == "correct" else kind
        counts[sample["tag"]][kind] += 1
    return dict(counts)


def drawn_outcome(metadata: Mapping[str, Any], labels: Sequence[str]) -> str:
    """What one image drew against what its prompt names, by shape and number only (:data:`DRAWN`).

    ``labels`` are the classes of the objects detected. The prompt asks for ``sum(count)`` objects of
    its include clauses; an image with that many objects drew them ``as asked`` when every clause's
    class has at least its count, and ``a wrong shape`` otherwise. Colours and relations are not
    looked at (the failure table has them), and an object of a shape the prompt does not name counts
    as one too many (GenEval accepts it: its include and exclude clauses look at the named classes).
    """
    asked: Counter = Counter()
    for req in metadata.get("include", []):
        asked[req["class"]] += int(req["count"])
    got = Counter(labels)
    total, wanted = sum(got.values()), sum(asked.values())
    if total < wanted:
        return "too few objects"
    if total > wanted:
        return "too many objects"
    return "as asked" if all(got[name] >= n for name, n in asked.items()) else "a wrong shape"


def drawn_by_tag(folder: str | Path, detector: ShapesDetector | None = None) -> dict[str, Counter]:
    """:func:`drawn_outcome` of every image an evaluation saved, counted by prompt tag.

    ``folder`` is a ``tdmr1 evaluate --out`` folder written with ``--save-images each``
    (``images/<prompt>/metadata.jsonl`` and ``images/<prompt>/samples/*.png``, GenEval's layout).
    Each tag's counter also holds :data:`UNNAMED`, which overlaps the outcomes.
    """
    images = Path(folder) / "images"
    prompts = sorted(p for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
    if not prompts:
        raise ValueError(f"{images}: no saved images (run 'tdmr1 evaluate' with --save-images each)")
    detector = detector or ShapesDetector()
    counts: dict[str, Counter] = defaultdict(Counter)
    for prompt in prompts:
        meta_path = prompt / "metadata.jsonl"
        try:
            metadata = json.loads(meta_path.read_text(encoding="utf-8").splitlines()[0])
            metadata["include"]  # noqa: B018 -- read below
        except (OSError, ValueError, IndexError, KeyError, TypeError) as exc:
            raise ValueError(f"{meta_path}: not the metadata of a saved prompt ({exc!r})") from exc
        files = sorted((prompt / "samples").glob("*.png"))
        if not files:
            raise ValueError(f"{prompt / 'samples'}: no images")
        named = {req["class"] for req in metadata["include"]}
        counter = counts[metadata.get("tag", "")]
        for detections in detector.detect(torch.stack([read_image(f) for f in files])):
            labels = [d.label for d in detections]
            counter[drawn_outcome(metadata, labels)] += 1
            counter[UNNAMED] += any(label not in named for label in labels)
    return dict(counts)


def _fmt(group: Mapping[str, Any]) -> str:
    if group["accuracy"] is None:
        return "-"
    lo, hi = group["interval"]
    return f"{group['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"


def format_kinds(names: Sequence[str], tables: Sequence[Mapping[str, Mapping[str, Any]]]) -> str:
    """Markdown: a row per group (with its prompts and samples), a column per evaluation."""
    groups: list[str] = []
    for table in tables:
        groups += [g for g in table if g not in groups]
    lines = ["| held-out kind (prompts, samples) | " + " | ".join(names) + " |", "|:--|" + "--:|" * len(names)]
    for group in groups:
        first = next(t[group] for t in tables if group in t)
        cells = [_fmt(t[group]) if group in t else "-" for t in tables]
        lines.append(f"| {group} ({first['prompts']}, {first['samples']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_failures(
    name: str, counts: Mapping[str, Counter], categories: Sequence[str] = FAILURES, also: Sequence[str] = ()
) -> str:
    """Markdown: a row per tag, the fraction of its samples in each category (those that occur).

    ``categories`` split the samples; ``also`` are columns that overlap them (not in the total).
    """
    used = [f for f in categories if any(c[f] for c in counts.values())] + list(also)
    lines = [f"| {name}: tag (samples) | " + " | ".join(used) + " |", "|:--|" + "--:|" * len(used)]
    for tag, counter in counts.items():
        n = sum(counter[f] for f in categories)
        lines.append(f"| {tag} ({n}) | " + " | ".join(f"{counter[f] / n:.3f}" for f in used) + " |")
    return "\n".join(lines)


def _named(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    return (name, path) if sep and name else (Path(text).name or text, text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdmr1 shapes breakdown",
        description="Accuracy of 'tdmr1 evaluate' runs on a shapes prompt set by held-out kind, and their "
        "failures by tag (Markdown tables).",
    )
    parser.add_argument(
        "evaluations",
        nargs="+",
        metavar="[NAME=]DIR",
        help="'tdmr1 evaluate --out' folders (or their samples.jsonl) of the same prompt set; NAME heads the "
        "column (default: the folder's name)",
    )
    parser.add_argument(
        "--prompts", required=True, help="the prompt set the evaluations sampled (JSON Lines with GenEval metadata)"
    )
    parser.add_argument(
        "--world",
        default=None,
        help="world.json with the world and its held-out combinations (default: world.json next to --prompts)",
    )
    parser.add_argument(
        "--reward", default="shapes_geneval", help="reward whose strict verdicts count (default: shapes_geneval)"
    )
    parser.add_argument(
        "--pool-tags",
        default="position,color_attr",
        help="comma-separated tags pooled into one more row (default: position,color_attr; '' for none)",
    )
    parser.add_argument("--no-failures", action="store_true", help="print only the table by held-out kind")
    parser.add_argument(
        "--drawn",
        action="store_true",
        help="also detect the shapes in the images each evaluation saved (tdmr1 evaluate --save-images each) "
        "and print what was drawn by tag: as asked, a wrong shape, too few or too many objects",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prompts = Path(args.prompts)
        records = {r["prompt"]: r for r in load_prompts(prompts)}
        world_json = args.world or prompts.parent / "world.json"
        held_out = load_held_out(world_json)
        detector = ShapesDetector(load_world(world_json)) if args.drawn else None
        pool = [tag.strip() for tag in args.pool_tags.split(",") if tag.strip()]
        names, kinds, failures, drawn = [], [], [], []
        for text in args.evaluations:
            name, path = _named(text)
            samples = load_samples(path)
            names.append(name)
            kinds.append(accuracy_by_kind(samples, records, held_out, args.reward, pool))
            if not args.no_failures:
                failures.append(failures_by_tag(samples, args.reward))
            if args.drawn:
                drawn.append(drawn_by_tag(Path(path).parent if Path(path).is_file() else path, detector))
    except ValueError as exc:  # PromptFileError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_kinds(names, kinds))
    for name, counts in zip(names, failures):
        print()
        print(format_failures(name, counts))
    for name, counts in zip(names, drawn):
        print()
        print(format_failures(f"{name}, shapes drawn", counts, DRAWN, also=(UNNAMED,)))
    return 0
