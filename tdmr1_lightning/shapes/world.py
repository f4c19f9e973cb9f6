"""A synthetic composition world: coloured shapes in fixed slots, GenEval-style prompts, exact scenes.

The world is small enough for a tiny diffusion model to learn on a CPU and exact enough to be scored
without a learned model (:class:`~tdmr1_lightning.shapes.detector.ShapesDetector` behind the GenEval
scorer, :class:`tdmr1_rewards.geneval.GenEvalReward`).

Vocabulary (:class:`World`, every field can be narrowed by a config)::

    shapes     circle, square, triangle (pointing up); rectangle (lying flat, about twice as wide as
               tall) is drawn and detected too, but not in the default world (World(shapes=SHAPES))
    colours    red, green, blue, yellow (exact RGB in PALETTE; GenEval colour names), white background
    counts     two, three (counting prompts; at most max_objects = 3 objects a scene)
    relations  left of, right of, above, below

Scenes (whole pixels of the world's resolution): objects sit in the cells of a ``grid x grid`` layout,
one object a cell, each inside its cell with a margin and a little jitter of position and size, so
objects never touch. By default (32 px, 2 x 2) the cells span pixels 0-16 and 16-32 in each
direction, objects are 10 to 12 px, at least 2 px from their cell's border (neighbours >= 4 px apart)
and their top-left corner jitters by up to 2 px. (A 3 x 3 grid, 7-8 px objects, is the denser
variant: a tiny teacher draws those shapes much less reliably; docs/shapes.md.) Each shape is a
fixed pixel template of its size (:func:`shape_template`: inscribed disc, full square, upward
triangle, a flat rectangle in the middle of its slot) without anti-aliasing, so
every object pixel has its palette colour exactly. "A left of B" puts A and B in the same row, A's
column before B's ("above": same column, A's row first), which makes GenEval's
:func:`~tdmr1_rewards.geneval.relative_position` give exactly that relation and no other.

Prompts and metadata follow GenEval (:mod:`tdmr1_rewards.geneval_prompts`), with colours where the
tag asks for them and, by default, also in counting and position prompts (``World.colored_tags``)::

    single_object  a photo of a circle                 include [{circle, 1}]
    two_object     a photo of a circle and a square    include [{circle, 1}, {square, 1}]
    counting       a photo of two blue squares         include [{square, 2, blue}], exclude [{square, 3}]
    colors         a photo of a red circle             include [{circle, 1, red}]
    position       a photo of a red circle left of a blue square
                       include [{square, 1, blue}, {circle, 1, red, position: [left of, 0]}]
    color_attr     a photo of a red square and a green circle
                       include [{square, 1, red}, {circle, 1, green}]

(the prompt names A first; a position clause sits on A and points at B's clause, index 0, as in
:mod:`tdmr1_rewards.geneval_prompts`). Counting prompts say "one" / "two" / ... and carry an exclude
clause of ``n + 1``, which makes them exact.

Held-out split (:func:`held_out_combinations`, :func:`split_prompts`, :func:`make_prompt_sets`): whole
combinations are held out -- (count, shape) pairs of counting prompts, shape pairs of two_object
prompts and (shape, relation, shape) triples of position prompts ("A left of B" and "B right of A" are
the same triple), and either (colour, shape) pairs in any prompt (split ``bindings``) or pairs of
coloured objects named in one prompt (split ``compositions``: every (colour, shape) pair stays in
training) -- so no training prompt contains any of them. ``count_partners=2`` keeps every count with
two shapes in training (with 1, a count may be trained with one shape only, which a reward turns into
a shortcut: "three" comes to mean that shape); ``count_triples`` holds out (count, colour, shape)
triples instead of (count, shape) pairs, every pair of the three trained.

:class:`ShapesDataset` yields freshly drawn ``(image, prompt, metadata)`` triples (deterministic per
seed and index) for pretraining a teacher, from the training prompts only when given the split.

The command (:mod:`~tdmr1_lightning.shapes.command`)::

    tdmr1 shapes prompts --out-dir data/shapes --train 5000 --test 229 --seed 0 \
        --split compositions --held-out-fraction 0.3 --count-triples

writes ``train.jsonl``, ``test.jsonl`` (GenEval records, readable by the data module and by
:func:`tdmr1_rewards.geneval_prompts.load_geneval_metadata`), ``world.json`` (the world and its
held-out combinations) and ``preview.png`` / ``preview.txt`` (rendered training prompts).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tdmr1_rewards.geneval import RELATIONS, TAGS
from tdmr1_rewards.geneval_prompts import NUMBERS

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "rectangle")
"""Every shape the renderer draws and the detector recognises (a world uses a subset of them)."""

DEFAULT_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
"""The default world's shapes (the shipped teacher's)."""

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 125, 0),
    "yellow": (240, 225, 0),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
    "purple": (140, 40, 190),
    "pink": (250, 140, 210),
    "brown": (120, 70, 20),
    "black": (20, 20, 20),
    "white": (255, 255, 255),
}
"""Exact RGB of each GenEval colour (:data:`tdmr1_rewards.detectors.COLORS`) when drawn in this world;
every two are at least :data:`MIN_COLOR_DISTANCE` apart (white needs a background other than white)."""

MIN_COLOR_DISTANCE = 100.0
"""Smallest RGB (Euclidean) distance allowed between two colours of a world, the background included."""

MIN_OBJECT_PX = 5
"""Smallest object size (side or diameter) in pixels at which the detector tells the three shapes apart."""

_RELATION_SIGN = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}
"""(row, column) direction of A relative to B for "A <relation> B"."""


def _distance(a: Sequence[int], b: Sequence[int]) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


# -------------------------------------------------------------------------------------------- world


@dataclass(frozen=True)
class World:
    """The vocabulary and geometry of a shapes world (frozen; lists given by a config become tuples).

    Args:
        shapes: Shape names, a subset of :data:`SHAPES`.
        colors: Colour names, a subset of GenEval's colours (:data:`PALETTE` gives their RGB); every two
            of them, and each of them and the background, are at least :data:`MIN_COLOR_DISTANCE` apart.
        max_objects: At most this many objects in a scene (and in a prompt).
        resolution: Image side in pixels (scenes are laid out, and the detector is exact, at this size).
        grid: Scenes use a ``grid x grid`` layout of cells, one object a cell.
        counts: The numbers counting prompts ask for (each in ``1..max_objects``).
        relations: Relations of position prompts (GenEval's).
        tags: GenEval tags the prompts are drawn from (in equal shares).
        colored_tags: Tags besides ``colors`` and ``color_attr`` whose prompts name the colours
            (``counting``: "two blue squares"; ``position``: "a red circle left of a blue square";
            ``single_object`` / ``two_object`` would turn them into ``colors`` / ``color_attr``, so they
            are not allowed). Objects whose colour a prompt does not name get a random colour.
        background: Background RGB.
        size_range: Object size (side, diameter) as a fraction of the cell: a whole number of pixels
            drawn uniformly from ``round(lo * cell) .. int(hi * cell)``, the top capped so that an object
            fits the narrowest cell within the margin (:meth:`size_px`; 10-12 px by default).
        margin: Smallest gap between an object and its cell's border, as a fraction of the cell, at
            least 1 px (:meth:`margin_px`); neighbouring objects are at least twice this apart.
    """

    shapes: tuple[str, ...] = DEFAULT_SHAPES
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    max_objects: int = 3
    resolution: int = 32
    grid: int = 2
    counts: tuple[int, ...] = (2, 3)
    relations: tuple[str, ...] = RELATIONS
    tags: tuple[str, ...] = TAGS
    colored_tags: tuple[str, ...] = ("counting", "position")
    background: tuple[int, int, int] = (255, 255, 255)
    size_range: tuple[float, float] = (0.65, 0.8)
    margin: float = 0.1

    def __post_init__(self) -> None:
        for name in ("shapes", "colors", "counts", "relations", "tags", "colored_tags", "background", "size_range"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise ValueError(f"World.{name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "background", tuple(int(v) for v in self.background))
        object.__setattr__(self, "size_range", tuple(float(v) for v in self.size_range))
        problem = self._problem()
        if problem is not None:
            raise ValueError(f"World: {problem}")

    def _problem(self) -> str | None:
        for name, known in (("shapes", SHAPES), ("colors", tuple(PALETTE)), ("relations", RELATIONS), ("tags", TAGS)):
            values = getattr(self, name)
            if not values and name != "relations":
                return f"{name} is empty"
            unknown = [v for v in values if v not in known]
            if unknown:
                return f"unknown {name} {unknown}; known: {', '.join(known)}"
            if len(set(values)) != len(values):
                return f"{name} has duplicates: {list(values)}"
        bad = [t for t in self.colored_tags if t not in ("counting", "position")]
        if bad:
            return f"colored_tags may hold 'counting' and 'position' only, got {bad}"
        if len(self.background) != 3 or not all(0 <= v <= 255 for v in self.background):
            return f"background must be an RGB triple in 0..255, got {self.background}"
        rgb = {"background": self.background, **{c: PALETTE[c] for c in self.colors}}
        names = list(rgb)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if _distance(rgb[a], rgb[b]) < MIN_COLOR_DISTANCE:
                    return f"colours {a} {rgb[a]} and {b} {rgb[b]} are closer than {MIN_COLOR_DISTANCE:g} in RGB"
        if self.grid < 1:
            return f"grid must be >= 1, got {self.grid}"
        if not 1 <= self.max_objects <= self.grid**2:
            return f"max_objects must be in 1..{self.grid**2} (one object a cell), got {self.max_objects}"
        if len(self.size_range) != 2 or not 0 < self.size_range[0] <= self.size_range[1]:
            return f"size_range must be (lo, hi) with 0 < lo <= hi, got {self.size_range}"
        if self.margin < 0:
            return f"margin must be >= 0, got {self.margin}"
        if self.resolution < self.grid:
            return f"resolution {self.resolution} is smaller than the grid {self.grid}"
        lo, hi = self.size_px()
        if lo < MIN_OBJECT_PX:
            return (
                f"objects of {lo} px (resolution {self.resolution}, grid {self.grid}, size_range {self.size_range}) "
                f"are too small to tell the shapes apart (>= {MIN_OBJECT_PX} px); raise resolution or size_range, "
                "or lower grid"
            )
        if hi < lo:
            narrowest = min(b - a for a, b in zip(self.cell_bounds(), self.cell_bounds()[1:]))
            return (
                f"objects of {lo} px do not fit a cell of {narrowest} px with a margin of {self.margin_px()} px; "
                "lower size_range or margin, or raise resolution"
            )
        if "counting" in self.tags:
            if not self.counts:
                return "counts is empty but tags has 'counting'"
            bad_counts = [
                n
                for n in self.counts
                if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.max_objects
            ]
            if bad_counts:
                return f"counts must be integers in 1..{self.max_objects}, got {list(self.counts)}"
            if max(self.counts) >= len(NUMBERS):
                return f"counts above {len(NUMBERS) - 1} have no number word, got {list(self.counts)}"
        pairs = {"two_object", "position", "color_attr"} & set(self.tags)
        if pairs and (len(self.shapes) < 2 or self.max_objects < 2):
            return f"tags {sorted(pairs)} need at least 2 shapes and max_objects >= 2"
        if "color_attr" in self.tags and len(self.colors) < 2:
            return "tag 'color_attr' needs at least 2 colours"
        if "position" in self.tags:
            if not self.relations:
                return "relations is empty but tags has 'position'"
            if self.grid < 2:
                return "tag 'position' needs grid >= 2"
        return None

    # -- helpers

    def cell_bounds(self) -> list[int]:
        """Pixel boundaries of the grid's rows and columns: cell ``i`` spans ``[b[i], b[i + 1])``."""
        return [round(i * self.resolution / self.grid) for i in range(self.grid + 1)]

    def margin_px(self) -> int:
        """Smallest gap in pixels between an object and its cell's border (at least 1, so objects never
        touch: neighbours are at least 2 px apart)."""
        return max(1, round(self.margin * self.resolution / self.grid))

    def size_px(self) -> tuple[int, int]:
        """Smallest and largest object size in pixels (the largest capped to fit the narrowest cell)."""
        cell = self.resolution / self.grid
        narrowest = min(b - a for a, b in zip(self.cell_bounds(), self.cell_bounds()[1:]))
        lo = max(1, round(self.size_range[0] * cell))
        hi = min(int(self.size_range[1] * cell), narrowest - 2 * self.margin_px())
        return lo, hi

    def rgb(self, color: str) -> tuple[int, int, int]:
        """RGB of one of the world's colours."""
        if color not in self.colors:
            raise ValueError(f"colour {color!r} is not in this world (colours: {', '.join(self.colors)})")
        return PALETTE[color]

    def number_words(self) -> dict[str, int]:
        """Number word -> count, for the world's counting prompts."""
        return {NUMBERS[n]: n for n in self.counts}

    def vocabulary(self) -> str:
        """The world's words, for error messages."""
        parts = [f"shapes: {', '.join(self.shapes)}", f"colours: {', '.join(self.colors)}"]
        if "counting" in self.tags:
            parts.append(f"counts: {', '.join(NUMBERS[n] for n in self.counts)}")
        if "position" in self.tags:
            parts.append(f"relations: {', '.join(self.relations)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-friendly values (``World(**world.to_dict())`` rebuilds it)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def _rng(rng: random.Random | int | None) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    return random.Random(rng)
