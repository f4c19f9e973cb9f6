"""GenEval-style prompts with their metadata, and a loader for GenEval metadata files.

Six tags, in GenEval's style (80 COCO classes, 10 colours, counts 2-4, 4 relations)::

    single_object  a photo of a dog                    include [{dog, 1}]
    two_object     a photo of a dog and a cup          include [{dog, 1}, {cup, 1}]
    counting       a photo of three dogs               include [{dog, 3}], exclude [{dog, 4}]
    colors         a photo of a red car                include [{car, 1, red}]
    position       a photo of a cat left of a dog      include [{dog, 1}, {cat, 1, position: [left of, 0]}]
    color_attr     a photo of a red car and a blue cup include [{car, 1, red}, {cup, 1, blue}]

In a position prompt "A left of B", A is left of B: the clause on A points at B's clause (index 0).
No colour is asked of ``person``. Records are written as JSON Lines, ``{"tag", "include", "exclude"?,
"prompt"}`` (``exclude`` only where there is one, as in GenEval's published ``evaluation_metadata.jsonl``),
which the data module reads as ``{"prompt", **metadata}``. Tags are interleaved in equal shares;
the output depends only on ``n`` and ``seed``.

CLI::

    python -m tdmr1_rewards.geneval_prompts --out prompts/geneval_train.jsonl --n 20000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any

from tdmr1_lightning.files import write_jsonl

from .detectors import COCO_CLASSES, COLORS
from .geneval import RELATIONS, TAGS, metadata_problem

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_IRREGULAR_PLURALS = {
    "person": "people",
    "sheep": "sheep",
    "knife": "knives",
    "computer mouse": "computer mice",
    "skis": "pairs of skis",
    "scissors": "pairs of scissors",
}


def with_article(phrase: str) -> str:
    """``a dog``, ``an apple``, ``an orange car``."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def plural(name: str) -> str:
    """English plural of a class name (``buses``, ``wine glasses``, ``people``, ``pairs of skis``)."""
    if name in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[name]
    if name.endswith(("s", "x", "z", "ch", "sh")):
        return name + "es"
    if name.endswith("y") and name[-2:-1] not in "aeiou":
        return name[:-1] + "ies"
    return name + "s"


def _no_person(rng: random.Random, k: int) -> list[str]:
    return rng.sample([c for c in COCO_CLASSES if c != "person"], k)


def make_prompt(tag: str, rng: random.Random, max_count: int = 4) -> dict[str, Any]:
    """One GenEval record ``{"tag", "include", "exclude"?, "prompt"}`` of ``tag``, drawn with ``rng``."""
    if tag == "single_object":
        (a,) = rng.sample(COCO_CLASSES, 1)
        return {"tag": tag, "include": [{"class": a, "count": 1}], "prompt": f"a photo of {with_article(a)}"}
    if tag == "two_object":
        a, b = rng.sample(COCO_CLASSES, 2)
        return {
            "tag": tag,
            "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {with_article(a)} and {with_article(b)}",
        }
    if tag == "counting":
        (a,) = rng.sample(COCO_CLASSES, 1)
        n = rng.randint(2, max_count)
        return {
            "tag": tag,
            "include": [{"class": a, "count": n}],
            "exclude": [{"class": a, "count": n + 1}],
            "prompt": f"a photo of {NUMBERS[n] if n < len(NUMBERS) else n} {plural(a)}",
        }
    if tag == "colors":
        (a,) = _no_person(rng, 1)
        color = rng.choice(COLORS)
        return {
            "tag": tag,
            "include": [{"class": a, "count": 1, "color": color}],
            "prompt": f"a photo of {with_article(f'{color} {a}')}",
        }
    if tag == "position":
        a, b = rng.sample(COCO_CLASSES, 2)
        relation = rng.choice(RELATIONS)
        return {
            "tag": tag,
            "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}],
            "prompt": f"a photo of {with_article(a)} {relation} {with_article(b)}",
        }
    if tag == "color_attr":
        a, b = _no_person(rng, 2)
        ca, cb = rng.sample(COLORS, 2)
        return {
            "tag": tag,
            "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
            "prompt": f"a photo of {with_article(f'{ca} {a}')} and {with_article(f'{cb} {b}')}",
        }
    raise ValueError(f"unknown tag {tag!r}; known: {', '.join(TAGS)}")


def generate_prompts(
    n: int, seed: int = 0, tags: tuple[str, ...] = TAGS, max_count: int = 4, exclude: Collection[str] = ()
) -> list[dict[str, Any]]:
    """``n`` records, the ``tags`` interleaved in equal shares (record ``i`` has tag ``tags[i % len(tags)]``).

    ``exclude``: prompts not to draw (a held-out set that shares no prompt with a training set).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not tags:
        raise ValueError("no tags")
    if max_count < 2:
        raise ValueError(f"max_count must be >= 2, got {max_count}")
    rng = random.Random(seed)
    excluded = set(exclude)
    records = []
    for i in range(n):
        for _ in range(1000):
            record = make_prompt(tags[i % len(tags)], rng, max_count)
            if record["prompt"] not in excluded:
                break
        else:
            raise ValueError(f"could not draw a {tags[i % len(tags)]} prompt outside the {len(excluded)} excluded ones")
        records.append(record)
    return records


def load_geneval_metadata(path: str | Path) -> list[dict[str, Any]]:
    """Read a GenEval metadata file (``evaluation_metadata.jsonl``: one JSON object a line).

    Returns records ``{"prompt": str, **metadata}`` in file order (blank lines skipped). Raises
    ``ValueError`` naming ``file:line`` for invalid JSON, a missing or empty ``prompt``, or metadata
    that is not GenEval's schema (missing ``tag`` / ``include`` / ``class`` / ``count``, unknown colour
    or relation, a position index that is not an earlier clause).
    """
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {err.msg}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            if not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
                raise ValueError(f"{path}:{lineno}: missing field 'prompt' (a non-empty string)")
            meta = {k: v for k, v in obj.items() if k != "prompt"}
            problem = metadata_problem(meta)
            if problem is not None:
                raise ValueError(f"{path}:{lineno}: {problem}")
            records.append({"prompt": obj["prompt"], **meta})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tdmr1_rewards.geneval_prompts",
        description="Write GenEval-style prompts with their metadata as JSON Lines.",
    )
    parser.add_argument("--out", required=True, help="output .jsonl file")
    parser.add_argument("--n", type=int, default=500, help="number of prompts (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--tags", nargs="+", choices=TAGS, default=list(TAGS), help="tags to generate (default: all six)"
    )
    parser.add_argument("--max-count", type=int, default=4, help="largest count of counting prompts (default: 4)")
    parser.add_argument("--exclude", metavar="FILE", help="a prompt file whose prompts are not drawn (a held-out set)")
    args = parser.parse_args(argv)
    try:
        exclude = [r["prompt"] for r in load_geneval_metadata(args.exclude)] if args.exclude else []
        records = generate_prompts(args.n, args.seed, tuple(args.tags), args.max_count, exclude)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    path = write_jsonl(records, args.out)
    shares = ", ".join(f"{tag} {count}" for tag, count in Counter(r["tag"] for r in records).items())
    print(f"wrote {len(records)} prompts to {path} ({shares})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
