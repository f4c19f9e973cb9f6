"""``tdmr1 shapes prompts``: write the world's prompt sets, its held-out combinations and a preview."""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tdmr1_rewards.geneval import TAGS

from .prompts import scene_for
from .scenes import render
from .splits import SPLITS, make_prompt_sets, seen_prompts, write_jsonl
from .world import PALETTE, SHAPES, World

# ------------------------------------------------------------------------------------------------ CLI


def _preview(
    records: Sequence[Mapping[str, Any]],
    world: World,
    seed: int,
    path: Path,
    avoid: Iterable[tuple[str, str]] = (),
    columns: int = 8,
) -> None:
    from PIL import Image

    scale = max(1, 128 // world.resolution)
    res, pad = world.resolution * scale, 2
    rows = (len(records) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (res + pad) + pad, rows * (res + pad) + pad), (128, 128, 128))
    for i, record in enumerate(records):
        scene = scene_for(record, random.Random(f"shapes-preview:{seed}:{i}"), world, avoid=avoid)
        tile = Image.fromarray(render(scene, None, world).permute(1, 2, 0).numpy()).resize((res, res), Image.NEAREST)
        sheet.paste(tile, (pad + (i % columns) * (res + pad), pad + (i // columns) * (res + pad)))
    sheet.save(path)
    lines = [f"{i // columns} {i % columns}  {r['prompt']}" for i, r in enumerate(records)]
    path.with_suffix(".txt").write_text("row col  prompt\n" + "\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tdmr1 shapes prompts",
        description="Write train / test prompt sets (GenEval metadata) of the shapes world, and a preview.",
    )
    parser.add_argument("--out-dir", required=True, help="output folder")
    parser.add_argument("--train", type=int, default=5000, help="training records (default: 5000)")
    parser.add_argument("--test", type=int, default=256, help="test records, distinct held-out prompts (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the draws (default: 0)")
    parser.add_argument(
        "--seen-per-tag",
        type=int,
        default=0,
        metavar="N",
        help="also write seen.jsonl: up to N distinct training prompts a tag (default: 0 = none)",
    )
    parser.add_argument(
        "--held-out-fraction", type=float, default=0.25, help="fraction of each kind of combination held out (0.25)"
    )
    parser.add_argument(
        "--split",
        default="bindings",
        choices=SPLITS,
        help="what is held out besides counts, shape pairs and relations: (colour, shape) bindings, or pairs "
        "of coloured objects named together (compositions; every binding stays in training) (default: bindings)",
    )
    parser.add_argument(
        "--count-partners",
        type=int,
        default=1,
        metavar="N",
        help="shapes each count keeps in training: with 1, one count may be trained with one shape only (default: 1)",
    )
    parser.add_argument(
        "--count-triples",
        action="store_true",
        help="hold out (count, colour, shape) triples of counting prompts, every pair of them trained, instead "
        "of (count, shape) pairs",
    )
    defaults = World()
    parser.add_argument("--shapes", nargs="+", default=list(defaults.shapes), choices=SHAPES)
    parser.add_argument("--colors", nargs="+", default=list(defaults.colors), choices=list(PALETTE))
    parser.add_argument("--max-objects", type=int, default=defaults.max_objects)
    parser.add_argument("--counts", nargs="+", type=int, default=list(defaults.counts))
    parser.add_argument("--resolution", type=int, default=defaults.resolution)
    parser.add_argument("--grid", type=int, default=defaults.grid)
    parser.add_argument("--tags", nargs="+", default=list(defaults.tags), choices=TAGS)
    parser.add_argument("--preview", type=int, default=64, help="training prompts rendered into preview.png (0: none)")
    args = parser.parse_args(argv)
    try:
        world = World(
            shapes=args.shapes,
            colors=args.colors,
            max_objects=args.max_objects,
            counts=args.counts,
            resolution=args.resolution,
            grid=args.grid,
            tags=args.tags,
        )
        train, test, held = make_prompt_sets(
            world,
            args.train,
            args.test,
            args.seed,
            args.held_out_fraction,
            args.out_dir,
            args.split,
            args.count_partners,
            args.count_triples,
        )
        seen = seen_prompts(train, args.seen_per_tag, args.seed)
    except ValueError as err:
        parser.error(str(err))
    out = Path(args.out_dir)
    if seen:
        write_jsonl(seen, out / "seen.jsonl")
    if args.preview > 0 and train:
        _preview(train[: args.preview], world, args.seed, out / "preview.png", avoid=held.color_shape)
    shares = lambda rs: ", ".join(f"{t} {n}" for t, n in Counter(r["tag"] for r in rs).items())  # noqa: E731
    print(
        f"wrote {len(train)} training prompts ({shares(train)}) and {len(test)} test prompts ({shares(test)}) to {out}",
        file=sys.stderr,
    )
    if seen:
        print(f"wrote {len(seen)} seen prompts (distinct training prompts: {shares(seen)})", file=sys.stderr)
    print(f"held out: {json.dumps(held.to_dict())}", file=sys.stderr)
    return 0
