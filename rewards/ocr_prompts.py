"""OCR prompt sets: a deterministic generator, and a loader for the field's published OCR prompt files.

Generate (JSON Lines ``{"prompt", "text"}`` for ``.jsonl``, else plain text, one prompt a line)::

    python -m tdmr1_rewards.ocr_prompts --out prompts/ocr_train.jsonl --n 20000 --seed 0

Every prompt puts its target text in double quotes (``A sign that says "OPEN 24 HOURS"``), so the
OCR reward (:mod:`tdmr1_rewards.ocr`) finds it with or without the ``text`` field. The same seed,
count and options always give the same file.

Load a published file (Flow-GRPO's ``dataset/ocr/{train,test}.txt``: plain text, one prompt a line,
the target in double quotes) with :func:`load_ocr_prompts`; lines without a quoted target are
reported as ``file:line``.
"""

from __future__ import annotations

import argparse
import json
import random
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path

from .ocr import extract_target, normalise_text, target_problem

__all__ = [
    "ADJECTIVES",
    "NOUNS",
    "OCRPromptFileError",
    "PHRASES",
    "TEMPLATES",
    "generate_ocr_prompts",
    "load_ocr_prompts",
    "main",
    "random_text",
    "write_prompts",
]


class OCRPromptFileError(ValueError):
    """An OCR prompt file is missing, malformed, or has prompts without a target text.

    (A ``ValueError`` like :class:`tdmr1_lightning.data.PromptFileError`; not that class, so that this
    module and its command line do not import Lightning.)
    """


TEMPLATES: tuple[str, ...] = (
    'A sign that says "{text}"',
    'A storefront with a banner reading "{text}"',
    'A neon sign glowing with the words "{text}" on a brick wall at night',
    'A chalkboard menu with "{text}" written in white chalk',
    'A coffee mug printed with "{text}"',
    'A vintage travel poster with the title "{text}"',
    'A T-shirt with "{text}" printed across the chest',
    'A green street sign reading "{text}"',
    'A birthday cake with "{text}" written in icing',
    'A hardcover book with the title "{text}" on its cover',
    'A handwritten note on lined paper that says "{text}"',
    'A wooden signpost in a forest carved with "{text}"',
    'A billboard beside a highway advertising "{text}"',
    'A graffiti mural on a concrete wall spelling "{text}"',
    'A protester holding a cardboard placard reading "{text}"',
    'A greeting card with "{text}" in gold letters',
    'A canvas tote bag with the slogan "{text}"',
    'A movie poster titled "{text}"',
    'A shop window with "{text}" painted on the glass',
    'A doormat in front of a blue door that says "{text}"',
    'A yellow sticky note on a computer monitor that says "{text}"',
    'A cereal box on a kitchen table with the brand name "{text}"',
    'A train station platform sign showing "{text}"',
    'A sandy beach with "{text}" written in the sand',
    'A glass bottle with a paper label reading "{text}"',
    'A food truck with "{text}" painted on its side',
    'A football jersey with "{text}" printed on the back',
    'A lit-up marquee above a theatre entrance showing "{text}"',
    'A hand-painted wooden sign at a farm stand reading "{text}"',
    'A laptop with a sticker that reads "{text}"',
)
"""Prompt templates; each holds ``"{text}"`` once and no other double quote."""

NOUNS: tuple[str, ...] = (
    "coffee", "bakery", "books", "pizza", "garden", "music", "hotel", "market", "studio", "library",
    "station", "cinema", "harbor", "river", "mountain", "forest", "ocean", "city", "dream", "love",
    "hope", "peace", "summer", "winter", "spring", "autumn", "morning", "night", "sunset", "star",
    "moon", "rain", "snow", "fire", "water", "stone", "tea", "bread", "cake", "candy",
    "flowers", "home", "family", "friends", "garage", "pharmacy", "salon", "park", "museum", "gallery",
    "theater", "school", "office", "diner", "burger", "noodles", "tacos", "donuts", "juice", "cookies",
    "pets", "bikes", "records", "vintage", "travel", "club", "farm", "honey", "apples", "lemonade",
    "planet", "rocket", "robot", "castle", "island", "village", "bridge", "tower", "lighthouse", "valley",
    "tiger", "eagle", "wolf", "bear", "fox", "owl", "dragon", "whale", "panda", "lion",
    "kitchen", "workshop", "academy", "arcade", "bistro", "brewery", "cafe", "deli", "lounge", "bar",
)  # fmt: skip
"""Nouns for generated targets (lower case; a style is applied when they are drawn)."""

ADJECTIVES: tuple[str, ...] = (
    "fresh", "hot", "cold", "happy", "lucky", "golden", "silent", "wild", "sweet", "grand",
    "little", "big", "old", "new", "best", "first", "last", "blue", "red", "green",
    "secret", "magic", "royal", "urban", "cozy", "bright", "dark", "quiet", "daily", "local",
    "free", "fast", "slow", "simple", "pure", "brave", "lazy", "crazy", "cosmic", "electric",
    "northern", "southern", "hidden", "tiny", "giant", "famous", "modern", "classic", "sunny", "rainy",
)  # fmt: skip
"""Adjectives for generated targets."""

PHRASES: tuple[str, ...] = (
    "OPEN 24 HOURS", "NO PARKING", "KEEP OUT", "SALE", "EXIT", "WELCOME HOME", "HAPPY BIRTHDAY",
    "GOOD MORNING", "THINK BIG", "STAY HUMBLE", "PUSH", "PULL", "STOP", "CLOSED", "FREE WIFI",
    "HELLO WORLD", "BE KIND", "DO NOT DISTURB", "PLEASE WAIT", "THANK YOU", "SOLD OUT", "NOW OPEN",
    "BACK SOON", "NO ENTRY", "STAFF ONLY", "LIVE MUSIC", "HOT COFFEE", "BEST IN TOWN", "GAME OVER",
    "JUST MARRIED", "HOME SWEET HOME", "DREAM BIG", "SLOW DOWN", "ONE WAY", "FOR RENT", "LOST CAT",
)  # fmt: skip
"""Fixed sign texts (upper case, as signs write them)."""


def _style(text: str, rng: random.Random) -> str:
    r = rng.random()
    return text.upper() if r < 0.45 else text.title() if r < 0.85 else text


def random_text(rng: random.Random, max_words: int = 3) -> str:
    """One target text of 1 to ``max_words`` words: a fixed phrase, nouns and adjectives, or a number."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    words = rng.randint(1, max_words)
    kind = rng.random()
    if kind < 0.2:
        fitting = [p for p in PHRASES if len(p.split()) <= max_words]
        return rng.choice(fitting)
    noun, adj = rng.choice(NOUNS), rng.choice(ADJECTIVES)
    if words == 1:
        return _style(noun, rng)
    if kind < 0.35:
        return _style(f"{noun} {rng.randint(1, 999)}", rng)
    if words == 2:
        return _style(f"{adj} {noun}" if kind < 0.8 else f"{noun} {rng.choice(NOUNS)}", rng)
    if kind < 0.6:
        return _style(f"the {adj} {noun}", rng)
    if kind < 0.8:
        return _style(f"{adj} {noun} {rng.choice(NOUNS)}", rng)
    return _style(f"{adj} {rng.choice(ADJECTIVES)} {noun}", rng)


def generate_ocr_prompts(
    n: int,
    seed: int = 0,
    max_words: int = 3,
    templates: Sequence[str] = TEMPLATES,
    exclude_texts: Collection[str] = (),
) -> list[dict[str, str]]:
    """``n`` distinct OCR prompts ``{"prompt", "text"}``, the same for the same arguments.

    Args:
        n: How many prompts.
        seed: Seed of the generator.
        max_words: Most words in a target text.
        templates: Prompt templates, each holding ``"{text}"`` once and no other double quote.
        exclude_texts: Target texts not to draw (compared by :func:`normalise_text`): a held-out set
            whose targets no training prompt has.

    Raises:
        ValueError: on a bad template, or if ``n`` distinct prompts cannot be drawn.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for template in templates:
        if template.count('"{text}"') != 1 or template.count('"') != 2:
            raise ValueError(f'template {template!r} must hold "{{text}}" exactly once and no other double quote')
    rng = random.Random(seed)
    seen: set[str] = set()
    excluded = {normalise_text(t) for t in exclude_texts}
    records: list[dict[str, str]] = []
    attempts = 0
    while len(records) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not draw {n} distinct prompts (got {len(records)}); allow more words or templates")
        text = random_text(rng, max_words)
        prompt = rng.choice(templates).format(text=text)
        if prompt not in seen and normalise_text(text) not in excluded:
            seen.add(prompt)
            records.append({"prompt": prompt, "text": text})
    return records


def write_prompts(records: Sequence[dict[str, str]], path: str | Path, fmt: str = "auto") -> Path:
    """Write ``records`` as JSON Lines (``fmt="jsonl"``, or ``auto`` with a ``.jsonl`` name) or plain
    text, one prompt a line (``txt``). Returns the path."""
    path = Path(path)
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() == ".jsonl" else "txt"
    if fmt not in ("jsonl", "txt"):
        raise ValueError(f"fmt must be auto, jsonl or txt, got {fmt!r}")
    if fmt == "jsonl":
        lines = [json.dumps({"prompt": r["prompt"], "text": r["text"]}, ensure_ascii=False) for r in records]
    else:
        lines = [r["prompt"] for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def load_ocr_prompts(path: str | Path, strict: bool = True) -> list[dict[str, str]]:
    """Read an OCR prompt file into records ``{"prompt", "text"}`` (``text``: the target).

    * plain text (Flow-GRPO's ``train.txt`` / ``test.txt``): one prompt a line, the target in double
      quotes; blank lines and lines starting with ``#`` are skipped, as the project's prompt loader
      does (:func:`tdmr1_lightning.data.load_prompts`);
    * ``.jsonl``: objects with a string ``prompt`` and optionally ``text`` (which overrides the quotes);
      other keys are kept.

    Args:
        path: The file.
        strict: Raise on lines without a usable target; otherwise skip them with a warning.

    Raises:
        OCRPromptFileError: naming ``file:line`` of every line without a usable target (strict), or of
            a malformed JSON line, or when the file is missing or holds no prompts.
    """
    path = Path(path)
    if not path.is_file():
        raise OCRPromptFileError(f"{path}: OCR prompt file does not exist")
    records: list[dict[str, str]] = []
    bad: list[str] = []
    is_jsonl = path.suffix.lower() == ".jsonl"
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or (not is_jsonl and line.startswith("#")):
            continue
        where = f"{path}:{lineno}"
        if is_jsonl:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise OCRPromptFileError(f"{where}: invalid JSON: {err.msg}") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise OCRPromptFileError(f"{where}: expected an object with a string 'prompt'")
        else:
            record = {"prompt": line}
        problem = target_problem(record["prompt"], record)
        if problem:
            bad.append(f"{where}: {problem}: {record['prompt']!r}")
            continue
        records.append({**record, "text": extract_target(record["prompt"], record)})
    if bad:
        shown = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        message = f"{len(bad)} OCR prompt(s) without a usable target text:\n  {shown}"
        if strict:
            raise OCRPromptFileError(message)
        warnings.warn(message + "\n(skipped)", UserWarning, stacklevel=2)
    if not records:
        raise OCRPromptFileError(f"{path}: no OCR prompts")
    return records


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write a generated OCR prompt file."""
    parser = argparse.ArgumentParser(
        prog="python -m tdmr1_rewards.ocr_prompts",
        description="Write OCR prompts with their target text in double quotes (deterministic from the seed).",
    )
    parser.add_argument(
        "--out", required=True, help="output file: .jsonl gives {prompt, text} lines, else one prompt a line"
    )
    parser.add_argument("--n", type=int, default=1000, help="number of prompts (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--max-words", type=int, default=3, help="most words in a target text (default: 3)")
    parser.add_argument(
        "--format", choices=("auto", "jsonl", "txt"), default="auto", help="file format (default: from the name)"
    )
    parser.add_argument(
        "--exclude", metavar="FILE", help="an OCR prompt file whose target texts are not drawn (a held-out set)"
    )
    args = parser.parse_args(argv)
    try:
        exclude = [r["text"] for r in load_ocr_prompts(args.exclude)] if args.exclude else []
        records = generate_ocr_prompts(args.n, seed=args.seed, max_words=args.max_words, exclude_texts=exclude)
    except (ValueError, OCRPromptFileError) as err:
        parser.error(str(err))
    out = write_prompts(records, args.out, args.format)
    distinct = len({normalise_text(r["text"]) for r in records})
    print(f"wrote {len(records)} OCR prompts ({distinct} distinct targets) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
