"""Held-out splits of the world's prompts: whole combinations kept out of training, and prompt sets."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdmr1_rewards.geneval import TAGS

from .. import files
from .prompts import enumerate_prompts
from .world import World

# ------------------------------------------------------------------------------------------- held out


@dataclass(frozen=True)
class HeldOut:
    """Combinations no training prompt may contain (see :func:`prompt_combinations`)."""

    color_shape: frozenset = frozenset()
    """(colour, shape) pairs, in any prompt that names colours."""
    count_shape: frozenset = frozenset()
    """(count, shape) pairs of counting prompts."""
    shape_pair: frozenset = frozenset()
    """Sorted (shape, shape) pairs of two_object prompts."""
    relation: frozenset = frozenset()
    """(A, relation, B) of position prompts, canonical: relation "left of" or "above" ("B right of A" is
    held out with "A left of B", as ``(A, "left of", B)``)."""
    color_pair: frozenset = frozenset()
    """Two coloured objects named in one prompt, ``(colour, shape, colour, shape)`` with the two
    ``(colour, shape)`` pairs sorted (color_attr and position prompts)."""
    count_binding: frozenset = frozenset()
    """(count, colour, shape) of coloured counting prompts."""

    def combinations(self) -> set[tuple]:
        """Every held-out combination, tagged as :func:`prompt_combinations` tags them."""
        return (
            {("color", *k) for k in self.color_shape}
            | {("count", *k) for k in self.count_shape}
            | {("pair", *k) for k in self.shape_pair}
            | {("relation", *k) for k in self.relation}
            | {("colors", *k) for k in self.color_pair}
            | {("counted", *k) for k in self.count_binding}
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeldOut:
        """The inverse of :meth:`to_dict` (the ``held_out`` entry of a ``world.json``)."""
        return cls(**{key: frozenset(tuple(v) for v in data.get(key, [])) for key in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, list]:
        return {
            "color_shape": sorted(list(k) for k in self.color_shape),
            "count_shape": sorted(list(k) for k in self.count_shape),
            "shape_pair": sorted(list(k) for k in self.shape_pair),
            "relation": sorted(list(k) for k in self.relation),
            "color_pair": sorted(list(k) for k in self.color_pair),
            "count_binding": sorted(list(k) for k in self.count_binding),
        }


_MIRROR = {"right of": "left of", "below": "above"}


def _canonical_relation(a: str, relation: str, b: str) -> tuple[str, str, str]:
    if relation in _MIRROR:
        return (b, _MIRROR[relation], a)
    return (a, relation, b)


def prompt_combinations(record: Mapping[str, Any]) -> set[tuple]:
    """The combinations a record contains: ``("color", colour, shape)`` for each coloured clause,
    ``("count", n, shape)`` of a counting prompt, ``("pair", shape, shape)`` (sorted) of a two_object
    prompt, ``("relation", A, rel, B)`` (canonical, rel "left of" or "above") of a position prompt,
    ``("colors", colour, shape, colour, shape)`` (the two pairs sorted) of a prompt with two coloured
    clauses, ``("counted", n, colour, shape)`` of a coloured counting prompt."""
    include = record["include"]
    bindings = [(req["color"], req["class"]) for req in include if "color" in req]
    combos: set[tuple] = {("color", *b) for b in bindings}
    combos |= {("colors", *a, *b) for a, b in itertools.combinations(sorted(bindings), 2)}
    tag = record.get("tag")
    if tag == "counting":
        combos.add(("count", int(include[0]["count"]), include[0]["class"]))
        if "color" in include[0]:
            combos.add(("counted", int(include[0]["count"]), include[0]["color"], include[0]["class"]))
    elif tag == "two_object":
        combos.add(("pair", *sorted(req["class"] for req in include)))
    elif tag == "position":
        for req in include:
            if "position" in req:
                relation, target = req["position"]
                combos.add(("relation", *_canonical_relation(req["class"], relation, include[target]["class"])))
    return combos


def is_held_out(record: Mapping[str, Any], held_out: HeldOut) -> bool:
    """Whether a record contains a held-out combination."""
    return bool(prompt_combinations(record) & held_out.combinations())


def _pick(rng: random.Random, candidates: list[tuple], fraction: float, ok: Callable[[list[tuple]], bool]) -> frozenset:
    """About ``fraction`` of the candidates (at least one), drawn in a random order, skipping any whose
    removal would leave training candidates ``rest`` with ``ok(rest)`` false."""
    if not candidates or fraction <= 0:
        return frozenset()
    k = max(1, round(fraction * len(candidates)))
    order = list(candidates)
    rng.shuffle(order)
    picked: set[tuple] = set()
    for cand in order:
        if len(picked) >= k:
            break
        if ok([c for c in candidates if c not in picked and c != cand]):
            picked.add(cand)
    return frozenset(picked)


def _covers(values: Iterable, *positions: int) -> Callable[[list[tuple]], bool]:
    """``ok`` for :func:`_pick`: every value still appears, at one of ``positions``, in a training candidate."""
    wanted = set(values)
    return lambda rest: wanted <= {c[i] for c in rest for i in positions}


SPLITS: tuple[str, ...] = ("bindings", "compositions")
"""Kinds of held-out split (:func:`held_out_combinations`)."""


def held_out_combinations(
    world: World = World(),
    fraction: float = 0.25,
    seed: int = 0,
    split: str = "bindings",
    count_partners: int = 1,
    count_triples: bool = False,
) -> HeldOut:
    """About ``fraction`` of each kind of combination, chosen by ``seed``, held out for testing.

    Both splits hold out (count, shape) pairs of counting prompts, shape pairs of two_object prompts and
    (shape, relation, shape) triples of position prompts. ``split="bindings"`` also holds out
    (colour, shape) pairs: a held-out prompt may ask for a binding no training image showed (a test of
    attribute binding the teacher itself cannot pass). ``split="compositions"`` keeps every (colour,
    shape) pair in training and holds out pairs of coloured objects named together instead: held-out
    prompts compose known objects in new ways.

    Every colour, shape, count and (for compositions) (colour, shape) pair keeps a training partner,
    so held-out prompts test composition of known words. ``count_partners`` is how many shapes each
    count keeps in training (at most the world's shapes): with 1, a split may leave "three" with one
    shape alone, and reward on "three squares" then teaches "three" to mean squares. With two counts
    and three shapes, holding out any (count, shape) pair leaves a count with one shape or a shape with
    one count, and a model trained on it learns that instead (docs/experiments/shapes.md, "Holding out counts").
    ``count_triples`` holds out (count, colour, shape) triples of coloured
    counting prompts instead, keeping every (count, shape), (count, colour) and (colour, shape) pair of
    the counting prompts in training: "three red circles" is held out while "three red squares",
    "three blue circles" and "two red circles" are trained. The other kinds are the same draw either way.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    if split not in SPLITS:
        raise ValueError(f"unknown held-out split {split!r}; choose one of {', '.join(SPLITS)}")
    if count_partners < 1:
        raise ValueError(f"count_partners must be >= 1, got {count_partners}")
    if count_triples and not ("counting" in world.tags and "counting" in world.colored_tags):
        raise ValueError(
            "count_triples needs coloured counting prompts (counting in the world's tags and colored_tags)"
        )
    rng = random.Random(f"shapes-held-out:{seed}")
    shapes = world.shapes
    color_shape = frozenset()
    if split == "bindings" and len(world.colors) > 1 and len(shapes) > 1:
        color_shape = _pick(
            rng,
            [(c, s) for c in world.colors for s in shapes],
            fraction,
            lambda rest: _covers(world.colors, 0)(rest) and _covers(shapes, 1)(rest),
        )
    count_shape = frozenset()
    if "counting" in world.tags and len(world.counts) > 1 and len(shapes) > 1:
        partners = min(count_partners, len(shapes))
        count_shape = _pick(
            rng,
            [(n, s) for n in world.counts for s in shapes],
            fraction,
            lambda rest: (
                _covers(shapes, 1)(rest) and all(sum(c[0] == n for c in rest) >= partners for n in world.counts)
            ),
        )
    shape_pair = frozenset()
    if "two_object" in world.tags and len(shapes) > 2:
        pairs = [tuple(sorted((a, b))) for i, a in enumerate(shapes) for b in shapes[i + 1 :]]
        shape_pair = _pick(rng, pairs, fraction, _covers(shapes, 0, 1))
    relation = frozenset()
    if "position" in world.tags:
        canon = sorted(
            {_canonical_relation(a, r, b) for a in shapes for b in shapes if a != b for r in world.relations}
        )
        relations = {t[1] for t in canon}
        relation = _pick(rng, canon, fraction, lambda rest: _covers(shapes, 0, 2)(rest) and _covers(relations, 1)(rest))
    color_pair = frozenset()
    if split == "compositions":
        candidates = sorted(
            {c[1:] for r in enumerate_prompts(world) for c in prompt_combinations(r) if c[0] == "colors"}
        )
        bindings = {c[:2] for c in candidates} | {c[2:] for c in candidates}
        color_pair = _pick(
            rng, candidates, fraction, lambda rest: bindings <= {c[:2] for c in rest} | {c[2:] for c in rest}
        )
    count_binding = frozenset()
    if count_triples:
        count_shape = frozenset()  # drawn all the same, so that the other kinds do not depend on this choice
        triples = [(n, c, s) for n in world.counts for c in world.colors for s in shapes]
        pairs = [(0, 2), (0, 1), (1, 2)]  # (count, shape), (count, colour), (colour, shape)
        wanted = [{(t[i], t[j]) for t in triples} for i, j in pairs]
        count_binding = _pick(
            random.Random(f"shapes-held-out-counted:{seed}"),
            triples,
            fraction,
            lambda rest: all(w <= {(t[i], t[j]) for t in rest} for w, (i, j) in zip(wanted, pairs)),
        )
    return HeldOut(color_shape, count_shape, shape_pair, relation, color_pair, count_binding)


def split_prompts(
    records: Iterable[Mapping[str, Any]], held_out: HeldOut | float = 0.25, seed: int = 0, world: World = World()
) -> tuple[list[dict], list[dict]]:
    """``(train, test)``: records without any held-out combination, and records with one.

    ``held_out`` is a :class:`HeldOut`, or a fraction for :func:`held_out_combinations` of ``world``
    with ``seed``.
    """
    if not isinstance(held_out, HeldOut):
        held_out = held_out_combinations(world, float(held_out), seed)
    train, test = [], []
    for record in records:
        (test if is_held_out(record, held_out) else train).append(dict(record))
    return train, test


def _by_tag(records: Iterable[dict[str, Any]], tags: Sequence[str]) -> dict[str, list[dict]]:
    pools: dict[str, list[dict]] = {t: [] for t in tags}
    for r in records:
        pools.setdefault(r["tag"], []).append(r)
    return pools


def make_prompt_sets(
    world: World = World(),
    n_train: int = 5000,
    n_test: int = 256,
    seed: int = 0,
    held_out_fraction: float = 0.25,
    out_dir: str | Path | None = None,
    split: str = "bindings",
    count_partners: int = 1,
    count_triples: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], HeldOut]:
    """Training and test prompt records of the world, split by held-out combinations.

    Training records: the world's tags in turn (record ``i`` has the ``i % T``-th tag that has training
    prompts), each a uniform draw among that tag's training prompts (repeats allowed). Test records:
    distinct held-out prompts, tags in turn (a tag's share ends when its held-out prompts run out).
    ``split``, ``count_partners`` and ``count_triples`` choose the held-out combinations
    (:func:`held_out_combinations`).
    Raises ``ValueError`` if fewer than ``n_test`` distinct held-out prompts exist. With ``out_dir``,
    writes ``train.jsonl``, ``test.jsonl`` and ``world.json`` there. Returns ``(train, test, held_out)``.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train}, {n_test}")
    held = held_out_combinations(world, held_out_fraction, seed, split, count_partners, count_triples)
    train_pool, test_pool = split_prompts(enumerate_prompts(world), held)
    if len(test_pool) < n_test:
        counts = Counter(r["tag"] for r in test_pool)
        raise ValueError(
            f"this world has {len(test_pool)} distinct held-out prompts ({dict(counts)}), fewer than n_test={n_test}; "
            "ask for fewer, raise held_out_fraction or widen the world"
        )
    rng = random.Random(f"shapes-prompts:{seed}")
    pools = _by_tag(train_pool, world.tags)
    tags = [t for t in world.tags if pools.get(t)]
    if n_train and not tags:
        raise ValueError("no training prompts left after holding out combinations")
    train = [dict(rng.choice(pools[tags[i % len(tags)]])) for i in range(n_train)]
    test_pools = _by_tag(test_pool, world.tags)
    for pool in test_pools.values():
        rng.shuffle(pool)
    test: list[dict[str, Any]] = []
    while len(test) < n_test:
        for tag in world.tags:
            if test_pools.get(tag) and len(test) < n_test:
                test.append(dict(test_pools[tag].pop()))
    overlap = set().union(set(), *(prompt_combinations(r) for r in train)) & held.combinations()
    if overlap:  # cannot happen (split_prompts); checked all the same
        raise AssertionError(f"training prompts contain held-out combinations {sorted(overlap)}")
    if {r["prompt"] for r in train} & {r["prompt"] for r in test}:
        raise AssertionError("a prompt is in both the training and the test set")
    if out_dir is not None:
        out = Path(out_dir)
        write_jsonl(train, out / "train.jsonl")
        write_jsonl(test, out / "test.jsonl")
        (out / "world.json").write_text(
            json.dumps(
                {
                    "world": world.to_dict(),
                    "held_out": held.to_dict(),
                    "split": split,
                    "seed": seed,
                    "held_out_fraction": held_out_fraction,
                    "count_partners": count_partners,
                    "count_triples": count_triples,
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    return train, test, held


def seen_prompts(train: Sequence[Mapping[str, Any]], per_tag: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``per_tag`` distinct training prompts of each tag (a seeded draw, tags in GenEval's order).

    The "seen" evaluation set: prompts that RL trains on, next to the held-out test prompts, to tell what
    training learnt from what it generalised to combinations it never saw.
    """
    if per_tag < 0:
        raise ValueError(f"per_tag must be >= 0, got {per_tag}")
    rng = random.Random(seed)
    distinct: dict[str, dict[str, dict[str, Any]]] = {}
    for r in train:
        distinct.setdefault(r["tag"], {}).setdefault(r["prompt"], dict(r))
    seen: list[dict[str, Any]] = []
    for tag in [t for t in TAGS if t in distinct]:
        prompts = sorted(distinct[tag])
        rng.shuffle(prompts)
        seen += [distinct[tag][q] for q in prompts[:per_tag]]
    return seen


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Records as JSON Lines, ``{"tag", "include", "exclude"?, "prompt"}`` each (creating the folder)."""
    keys = ("tag", "include", "exclude", "prompt")
    return files.write_jsonl(({k: r[k] for k in keys if k in r} for r in records), path)
