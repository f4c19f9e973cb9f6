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

CLI::

    tdmr1 shapes prompts --out-dir data/shapes --train 5000 --test 229 --seed 0 \
        --split compositions --held-out-fraction 0.3 --count-triples

writes ``train.jsonl``, ``test.jsonl`` (GenEval records, readable by the data module and by
:func:`tdmr1_rewards.geneval_prompts.load_geneval_metadata`), ``world.json`` (the world and its
held-out combinations) and ``preview.png`` / ``preview.txt`` (rendered training prompts).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tdmr1_rewards.detectors import COLORS
from tdmr1_rewards.geneval import RELATIONS, TAGS, metadata_problem
from tdmr1_rewards.geneval_prompts import NUMBERS, plural, with_article
from torch import Tensor
from torch.utils.data import Dataset

from .. import files

__all__ = [
    "DEFAULT_SHAPES",
    "HeldOut",
    "MIN_COLOR_DISTANCE",
    "MIN_OBJECT_PX",
    "PALETTE",
    "SHAPES",
    "SPLITS",
    "Scene",
    "ShapeObject",
    "ShapesDataset",
    "World",
    "collate_shapes",
    "enumerate_prompts",
    "held_out_combinations",
    "is_held_out",
    "main",
    "make_prompt_sets",
    "make_record",
    "object_mask",
    "parse_prompt",
    "prompt_combinations",
    "random_scene",
    "render",
    "render_batch",
    "sample_prompt",
    "scene_for",
    "shape_template",
    "split_prompts",
    "write_jsonl",
]

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


# ------------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene, in whole pixels of the world's resolution (y grows downwards)."""

    shape: str
    color: str
    left: int
    """Column of the object's box's left edge."""
    top: int
    """Row of the object's box's top edge."""
    size: int
    """Width of the box (a square's side, a circle's diameter, a triangle's base and height, a
    rectangle's width: its height is about half, :func:`shape_template`)."""
    cell: tuple[int, int] | None = field(default=None, compare=False)
    """(row, column) of the grid cell it was placed in, when placed in a slot."""

    @property
    def height(self) -> int:
        """Height of the box in pixels (``size`` but for a rectangle)."""
        return shape_template(self.shape, self.size).shape[0]

    @property
    def center(self) -> tuple[float, float]:
        """``(x, y)`` centre in pixels."""
        return (self.left + self.size / 2, self.top + self.height / 2)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` in pixels, ends exclusive: the tight box of the rendered object."""
        return (self.left, self.top, self.left + self.size, self.top + self.height)


Scene = tuple[ShapeObject, ...]


@functools.cache
def shape_template(shape: str, size: int) -> np.ndarray:
    """``bool (height, size)`` pixels of a shape: those whose centre lies inside it (no anti-aliasing).

    A circle is the inscribed disc, a square the whole box, a triangle points up with its base on the
    bottom row (row ``i`` spans ``|x| <= (i + 1) / 2`` about the centre, so it is symmetric and its
    top row is one pixel wide for odd sizes, two for even); all three are ``size x size``. A rectangle
    lies flat, ``(size + 1) // 2`` rows of ``size`` (about twice as wide as tall, so its box tells it
    from a square under blur). Every template fills its box exactly (its tight box is the array).
    Read-only.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    c = np.arange(size, dtype=np.float64) + 0.5 - size / 2
    if shape == "circle":
        mask = c[:, None] ** 2 + c[None, :] ** 2 <= (size / 2) ** 2
    elif shape == "square":
        mask = np.ones((size, size), dtype=bool)
    elif shape == "triangle":
        mask = np.abs(c)[None, :] <= (np.arange(size)[:, None] + 1) / 2
    elif shape == "rectangle":
        mask = np.ones(((size + 1) // 2, size), dtype=bool)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    mask.setflags(write=False)
    return mask


def _place(rng: random.Random, world: World, row: int, col: int, size: int | None = None) -> tuple[int, int, int]:
    """``(left, top, size)`` of an object in cell ``(row, col)``: random size and position within the margin."""
    lo, hi = world.size_px()
    size = rng.randint(lo, hi) if size is None else int(size)
    bounds, m = world.cell_bounds(), world.margin_px()
    left = rng.randint(bounds[col] + m, bounds[col + 1] - m - size)
    top = rng.randint(bounds[row] + m, bounds[row + 1] - m - size)
    return left, top, size


def _make_object(rng: random.Random, world: World, shape: str, color: str, row: int, col: int) -> ShapeObject:
    left, top, size = _place(rng, world, row, col)
    top += (size - shape_template(shape, size).shape[0]) // 2  # a rectangle sits in the middle of its square slot
    return ShapeObject(shape, color, left, top, size, (row, col))


def random_scene(rng: random.Random | int | None, world: World = World(), num_objects: int | None = None) -> Scene:
    """A random scene: ``num_objects`` (default: uniform in ``1..max_objects``) objects of random shape and
    colour in distinct random cells."""
    rng = _rng(rng)
    k = rng.randint(1, world.max_objects) if num_objects is None else int(num_objects)
    if not 0 <= k <= world.grid**2:
        raise ValueError(f"num_objects must be in 0..{world.grid**2}, got {k}")
    cells = rng.sample(range(world.grid**2), k)
    return tuple(
        _make_object(rng, world, rng.choice(world.shapes), rng.choice(world.colors), c // world.grid, c % world.grid)
        for c in cells
    )


def object_mask(obj: ShapeObject, resolution: int) -> np.ndarray:
    """``bool (resolution, resolution)``: the object's pixels on a canvas (clipped to it)."""
    mask = np.zeros((resolution, resolution), dtype=bool)
    template = shape_template(obj.shape, obj.size)
    y0, x0 = max(obj.top, 0), max(obj.left, 0)
    y1, x1 = min(obj.top + template.shape[0], resolution), min(obj.left + obj.size, resolution)
    if y1 > y0 and x1 > x0:
        mask[y0:y1, x0:x1] = template[y0 - obj.top : y1 - obj.top, x0 - obj.left : x1 - obj.left]
    return mask


def render(scene: Iterable[ShapeObject], resolution: int | None = None, world: World = World()) -> Tensor:
    """``uint8 (3, H, W)`` image of a scene on the world's background: palette pixels only.

    Drawn at the world's resolution (objects in order, later ones on top); another ``resolution`` is
    a nearest-neighbour resize of it (crisp, for previews).
    """
    res = world.resolution
    image = np.empty((res, res, 3), dtype=np.uint8)
    image[:] = world.background
    for obj in scene:
        template = shape_template(obj.shape, obj.size)
        y0, x0 = max(obj.top, 0), max(obj.left, 0)
        y1, x1 = min(obj.top + template.shape[0], res), min(obj.left + obj.size, res)
        if y1 > y0 and x1 > x0:
            patch = image[y0:y1, x0:x1]
            patch[template[y0 - obj.top : y1 - obj.top, x0 - obj.left : x1 - obj.left]] = world.rgb(obj.color)
    out = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    if resolution is not None and int(resolution) != res:
        out = F.interpolate(out[None], size=(int(resolution), int(resolution)), mode="nearest-exact")[0]
    return out


def render_batch(
    scenes: Sequence[Iterable[ShapeObject]], resolution: int | None = None, world: World = World()
) -> Tensor:
    """``uint8 (N, 3, H, W)``: :func:`render` of each scene."""
    res = world.resolution if resolution is None else int(resolution)
    if not scenes:
        return torch.zeros(0, 3, res, res, dtype=torch.uint8)
    return torch.stack([render(s, resolution, world) for s in scenes])


# ----------------------------------------------------------------------------------- prompts / metadata


def _phrase(shape: str, color: str | None, count: int = 1, numbered: bool = False) -> str:
    """``a red circle``, ``an orange square``, ``two blue squares``, ``one circle`` (``numbered``)."""
    described = f"{color} {shape}" if color else shape
    if not numbered:
        return with_article(described)
    noun = shape if count == 1 else plural(shape)
    return f"{NUMBERS[count]} {color} {noun}" if color else f"{NUMBERS[count]} {noun}"


def _clause(shape: str, count: int = 1, color: str | None = None, position: list | None = None) -> dict[str, Any]:
    clause: dict[str, Any] = {"class": shape, "count": count}
    if color is not None:
        clause["color"] = color
    if position is not None:
        clause["position"] = list(position)
    return clause


def make_record(
    tag: str, shapes: Sequence[str], colors: Sequence[str | None] = (), count: int = 1, relation: str | None = None
) -> dict[str, Any]:
    """The GenEval record ``{"tag", "include", "exclude"?, "prompt"}`` of one prompt of this grammar.

    ``shapes`` (and ``colors``, None for no colour) are in the order the prompt names them: one for
    single_object / colors / counting, two for the others ("A and B", "A <relation> B").
    """
    colors = list(colors) + [None] * (len(shapes) - len(colors))
    if tag in ("single_object", "colors"):
        (a,), (ca,) = shapes, colors
        return {"tag": tag, "include": [_clause(a, 1, ca)], "prompt": f"a photo of {_phrase(a, ca)}"}
    if tag == "counting":
        (a,), (ca,) = shapes, colors
        return {
            "tag": tag,
            "include": [_clause(a, count, ca)],
            "exclude": [{"class": a, "count": count + 1}],
            "prompt": f"a photo of {_phrase(a, ca, count, numbered=True)}",
        }
    if tag in ("two_object", "color_attr"):
        (a, b), (ca, cb) = shapes, colors
        return {
            "tag": tag,
            "include": [_clause(a, 1, ca), _clause(b, 1, cb)],
            "prompt": f"a photo of {_phrase(a, ca)} and {_phrase(b, cb)}",
        }
    if tag == "position":
        (a, b), (ca, cb) = shapes, colors
        return {
            "tag": tag,
            "include": [_clause(b, 1, cb), _clause(a, 1, ca, [relation, 0])],
            "prompt": f"a photo of {_phrase(a, ca)} {relation} {_phrase(b, cb)}",
        }
    raise ValueError(f"unknown tag {tag!r}; known: {', '.join(TAGS)}")


def sample_prompt(rng: random.Random | int | None, world: World = World(), tag: str | None = None) -> dict[str, Any]:
    """One random record ``{"tag", "include", "exclude"?, "prompt"}`` (tag uniform over ``world.tags``
    unless given); shapes of two-object prompts differ, as do the colours of color_attr prompts."""
    rng = _rng(rng)
    tag = rng.choice(world.tags) if tag is None else tag
    if tag not in world.tags:
        raise ValueError(f"tag {tag!r} is not in this world (tags: {', '.join(world.tags)})")
    colored = tag in ("colors", "color_attr") or tag in world.colored_tags
    if tag in ("single_object", "colors", "counting"):
        shape = rng.choice(world.shapes)
        color = rng.choice(world.colors) if colored else None
        count = rng.choice(world.counts) if tag == "counting" else 1
        return make_record(tag, [shape], [color], count)
    a, b = rng.sample(world.shapes, 2)
    if tag == "color_attr":
        colors: list[str | None] = rng.sample(world.colors, 2)
    elif colored:
        colors = [rng.choice(world.colors), rng.choice(world.colors)]
    else:
        colors = [None, None]
    relation = rng.choice(world.relations) if tag == "position" else None
    return make_record(tag, [a, b], colors, 1, relation)


def enumerate_prompts(world: World = World(), tags: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every distinct prompt :func:`sample_prompt` can draw, as records, tag by tag in a fixed order."""
    records = []
    for tag in world.tags if tags is None else tags:
        colored = tag in ("colors", "color_attr") or tag in world.colored_tags
        colors_or_none: list[str | None] = list(world.colors) if colored else [None]
        if tag in ("single_object", "colors"):
            records += [make_record(tag, [s], [c]) for s in world.shapes for c in colors_or_none]
        elif tag == "counting":
            records += [
                make_record(tag, [s], [c], n) for n in world.counts for s in world.shapes for c in colors_or_none
            ]
        else:
            relations: list[str | None] = list(world.relations) if tag == "position" else [None]
            for a in world.shapes:
                for b in world.shapes:
                    if a == b:
                        continue
                    for ca in colors_or_none:
                        for cb in colors_or_none:
                            if tag == "color_attr" and ca == cb:
                                continue
                            records += [make_record(tag, [a, b], [ca, cb], 1, r) for r in relations]
    return records


_ARTICLES = ("a", "an")
_PREFIX = ("a", "photo", "of")


def parse_prompt(text: str, world: World = World()) -> dict[str, Any]:
    """The record ``{"tag", "include", "exclude"?, "prompt"}`` of a prompt of this world's grammar (the
    grammar :func:`sample_prompt` writes; case, a trailing full stop and "a" / "an" are forgiven, and
    ``prompt`` is the canonical text, so ``parse_prompt(r["prompt"]) == r`` for every record ``r``).

    Raises ``ValueError`` naming the words outside the world's vocabulary (and the vocabulary), or
    saying why a prompt of known words does not parse.
    """
    if not isinstance(text, str):
        raise ValueError(f"prompt must be a string, got {type(text).__name__}")
    prompt = text.strip()
    tokens = prompt.lower().rstrip(".").split()
    plurals = {plural(s): s for s in world.shapes}
    numbers = world.number_words() if "counting" in world.tags else {}
    relation_words = {w for r in world.relations for w in r.split()} if "position" in world.tags else set()
    known = set(_PREFIX) | set(_ARTICLES) | {"and", "of"} | set(world.shapes) | set(plurals) | set(world.colors)
    known |= set(numbers) | relation_words
    unknown = list(dict.fromkeys(t for t in tokens if t not in known))
    if unknown:
        notes = []
        for word in unknown:
            if word in COLORS:
                notes.append(f"{word!r} (a colour outside this world)")
            elif word in SHAPES or word in {plural(s) for s in SHAPES}:
                notes.append(f"{word!r} (a shape outside this world)")
            elif word in NUMBERS:
                notes.append(f"{word!r} (a count outside this world)")
            else:
                notes.append(repr(word))
        raise ValueError(
            f"prompt {text!r}: unknown word(s) {', '.join(notes)}; this world's vocabulary is {world.vocabulary()}"
        )

    def fail(why: str) -> ValueError:
        return ValueError(
            f"prompt {text!r} is not in this world's grammar ({why}); expected e.g. 'a photo of a red circle', "
            "'a photo of two blue squares', 'a photo of a circle and a square', "
            "'a photo of a red circle left of a blue square'"
        )

    if tuple(tokens[:3]) != _PREFIX:
        raise fail("it must start with 'a photo of'")
    pos = 3
    numbered = False

    def phrase() -> tuple[str, str | None, int]:
        nonlocal pos, numbered
        if pos >= len(tokens):
            raise fail("an object is missing")
        first = tokens[pos]
        if first in _ARTICLES:
            count = 1
        elif first in numbers:
            count = numbers[first]
            numbered = True
        else:
            raise fail(f"expected 'a', 'an' or a number before an object, got {first!r}")
        pos += 1
        color = None
        if pos < len(tokens) and tokens[pos] in world.colors:
            color = tokens[pos]
            pos += 1
        if pos >= len(tokens):
            raise fail("a shape is missing")
        noun = tokens[pos]
        pos += 1
        if count == 1 and noun in world.shapes:
            return noun, color, 1
        if count > 1 and noun in plurals:
            return plurals[noun], color, count
        raise fail(f"{noun!r} after {first!r}")

    shape_a, color_a, count_a = phrase()
    if pos == len(tokens):
        if numbered:
            if "counting" not in world.tags:
                raise fail("counting prompts are not in this world")
            return make_record("counting", [shape_a], [color_a], count_a)
        tag = "colors" if color_a else "single_object"
        if tag not in world.tags:
            raise fail(f"{tag} prompts are not in this world")
        return make_record(tag, [shape_a], [color_a])
    if numbered:
        raise fail("only single objects ('a ...') can be combined")
    joiner = tokens[pos]
    relation = None
    if joiner == "and":
        pos += 1
    else:
        for rel in world.relations:
            words = rel.split()
            if tuple(tokens[pos : pos + len(words)]) == tuple(words):
                relation = rel
                pos += len(words)
                break
        else:
            raise fail(f"expected 'and' or a relation after the first object, got {joiner!r}")
    shape_b, color_b, count_b = phrase()
    if pos != len(tokens):
        raise fail(f"unexpected words after the second object: {' '.join(tokens[pos:])!r}")
    if numbered:
        raise fail("only single objects ('a ...') can be combined")
    if shape_a == shape_b:
        raise fail("the two objects must be different shapes (GenEval cannot tell two clauses of one class apart)")
    if relation is not None:
        tag = "position"
        if (color_a is None) != (color_b is None):
            raise fail("name the colours of both objects or of neither")
    else:
        if (color_a is None) != (color_b is None):
            raise fail("name the colours of both objects or of neither")
        tag = "color_attr" if color_a else "two_object"
    if tag not in world.tags:
        raise fail(f"{tag} prompts are not in this world")
    return make_record(tag, [shape_a, shape_b], [color_a, color_b], 1, relation)


# ------------------------------------------------------------------------------------- scene for a prompt


def _check_metadata(metadata: Mapping[str, Any], world: World) -> None:
    problem = metadata_problem(dict(metadata) if isinstance(metadata, Mapping) else metadata, world.shapes)
    if problem is not None:
        raise ValueError(f"metadata {metadata!r}: {problem} (shapes of this world: {', '.join(world.shapes)})")
    include = metadata["include"]
    classes = [req.get("class") for req in include]
    for req in include:
        if req.get("class") not in world.shapes:
            raise ValueError(f"class {req.get('class')!r} is not a shape of this world ({', '.join(world.shapes)})")
        if "color" in req and req["color"] not in world.colors:
            raise ValueError(f"colour {req['color']!r} is not in this world ({', '.join(world.colors)})")
        if "position" in req and req["position"][0] not in _RELATION_SIGN:
            raise ValueError(f"unknown relation {req['position'][0]!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"include names a class twice ({classes}); GenEval cannot tell such clauses apart")
    total = sum(int(req["count"]) for req in include)
    if total > world.max_objects:
        raise ValueError(f"metadata asks for {total} objects; this world has at most {world.max_objects}")
    for req in metadata.get("exclude", []) or []:
        wanted = sum(int(r["count"]) for r in include if r["class"] == req["class"])
        if wanted >= int(req["count"]):
            raise ValueError(f"metadata asks for {wanted} {req['class']} but excludes {req['count']} or more")


def _cells_ok(groups: list[list[tuple[int, int]]], include: list[dict]) -> bool:
    """Every object of a clause with position ``[rel, t]`` is in line with, and on the right side of,
    every object of clause ``t`` (same row for left/right, same column for above/below)."""
    for j, req in enumerate(include):
        if "position" not in req:
            continue
        relation, target = req["position"][0], int(req["position"][1])
        drow, dcol = _RELATION_SIGN[relation]
        for ra, ca in groups[j]:
            for rb, cb in groups[target]:
                if drow == 0 and not (ra == rb and (ca - cb) * dcol > 0):
                    return False
                if dcol == 0 and not (ca == cb and (ra - rb) * drow > 0):
                    return False
    return True


def scene_for(
    metadata: Mapping[str, Any],
    rng: random.Random | int | None,
    world: World = World(),
    avoid: Iterable[tuple[str, str]] = (),
    max_tries: int = 10_000,
) -> Scene:
    """A random scene that satisfies GenEval ``metadata`` exactly: the included objects and nothing else.

    Clauses with a colour get it; the others a random colour (never a ``(colour, shape)`` pair in
    ``avoid``, e.g. the held-out pairs). Position clauses put their objects in line with the target's
    (same row for left / right of, same column for above / below), on the named side. Raises
    ``ValueError`` for metadata outside the world or that no scene of the world can satisfy.
    """
    rng = _rng(rng)
    _check_metadata(metadata, world)
    include = list(metadata["include"])
    avoid = set(avoid)
    sizes = [int(req["count"]) for req in include]
    total = sum(sizes)
    cells = world.grid**2
    for _ in range(max_tries):
        flat = rng.sample(range(cells), total)
        groups, start = [], 0
        for n in sizes:
            groups.append([(c // world.grid, c % world.grid) for c in flat[start : start + n]])
            start += n
        if _cells_ok(groups, include):
            break
    else:
        raise ValueError(f"no scene of this world satisfies {dict(metadata)!r}")
    objects = []
    for req, group in zip(include, groups):
        shape = req["class"]
        palette = [c for c in world.colors if (c, shape) not in avoid] or list(world.colors)
        for row, col in group:
            color = req.get("color") or rng.choice(palette)
            objects.append(_make_object(rng, world, shape, color, row, col))
    return tuple(objects)


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


# -------------------------------------------------------------------------------------------- dataset


class ShapesDataset(Dataset):
    """Freshly drawn ``(image uint8 (3, H, W), prompt, metadata)`` triples, for teacher pretraining.

    Item ``i`` depends only on ``(seed, i)``: its prompt is drawn (tags in equal shares) from
    ``records`` when given, else from the training prompts of the world's held-out split when
    ``held_out`` is given, else from the whole world (:func:`sample_prompt`); its scene is
    :func:`scene_for` the prompt (random colours avoid the held-out (colour, shape) pairs). ``metadata``
    is the GenEval record without ``prompt``. Use :func:`collate_shapes` with a DataLoader.
    """

    def __init__(
        self,
        world: World = World(),
        length: int = 1_000_000,
        seed: int = 0,
        records: Sequence[Mapping[str, Any]] | None = None,
        held_out: HeldOut | None = None,
    ) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.world = world
        self.length = int(length)
        self.seed = int(seed)
        self.held_out = held_out
        self.avoid = held_out.color_shape if held_out is not None else frozenset()
        if records is None and held_out is not None:
            records, _ = split_prompts(enumerate_prompts(world), held_out)
        self.pools: list[list[dict]] | None = None
        if records is not None:
            if not records:
                raise ValueError("ShapesDataset: records is empty")
            by_tag = _by_tag([{k: v for k, v in r.items()} for r in records], world.tags)
            self.pools = [p for p in by_tag.values() if p]

    def __len__(self) -> int:
        return self.length

    def record(self, index: int) -> dict[str, Any]:
        """The prompt record of item ``index`` (without rendering)."""
        return self._draw(index)[1]

    def _draw(self, index: int) -> tuple[random.Random, dict[str, Any]]:
        rng = random.Random(f"shapes-dataset:{self.seed}:{index}")
        if self.pools is None:
            tag = self.world.tags[index % len(self.world.tags)]
            record = sample_prompt(rng, self.world, tag)
        else:
            record = dict(rng.choice(self.pools[index % len(self.pools)]))
        return rng, record

    def __getitem__(self, index: int) -> tuple[Tensor, str, dict[str, Any]]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a ShapesDataset of length {self.length}")
        index %= self.length
        rng, record = self._draw(index)
        scene = scene_for(record, rng, self.world, avoid=self.avoid)
        meta = {k: v for k, v in record.items() if k != "prompt"}
        return render(scene, None, self.world), record["prompt"], meta


def collate_shapes(batch: Sequence[tuple[Tensor, str, dict]]) -> tuple[Tensor, list[str], list[dict]]:
    """``(images uint8 (B, 3, H, W), prompts, metadata)`` from ShapesDataset items."""
    images, prompts, metadata = zip(*batch) if batch else ((), (), ())
    return torch.stack(list(images)), list(prompts), list(metadata)


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
