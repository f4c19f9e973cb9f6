"""Scenes of the world: objects in grid cells, their exact pixel templates, masks and rendering."""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .world import SHAPES, World, _rng

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
