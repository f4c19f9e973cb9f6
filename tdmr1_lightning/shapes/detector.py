"""An exact, non-learned detector for the shapes world, behind the GenEval :class:`Detector` interface.

Per image: every pixel takes the nearest of the background and the world's palette colours (so a
blurred edge between an object and the background splits at its midpoint), and is background when it
is farther than ``color_threshold`` (RGB, Euclidean; 150 by default) from all of them (off-palette
pixels of a generated image); the pixels of each colour split into connected components
(8-connectivity); components smaller than ``min_area`` are dropped; each component's shape comes from
its tight box (:func:`classify_shape`):

* ``bottom_heavy = (area in the lower half - area in the upper half) / area`` (rows of the box's middle
  row, for odd heights, count in neither): a triangle (pointing up) is >= 0.33, circles and squares 0;
* ``fill = area / box area``: a square is 1, a rendered circle 0.75-0.89, a triangle 0.55-0.68.

``bottom_heavy >= triangle_bottom_heavy`` (0.2) -> triangle; else ``fill >= square_fill`` (0.93) -> square;
else ``fill >= circle_fill`` (0.7) -> circle; else unrecognised (dropped). Components with a box aspect ratio above
``max_aspect`` (1.5: two shapes run together, a smear) are dropped too, as are shapes outside the world;
in a world with rectangles (which lie flat, about twice as wide as tall), a component wider than tall
with an aspect ratio above ``rectangle_aspect[0]`` (1.5) and up to ``rectangle_aspect[1]`` (3) and
``fill >= rectangle_fill`` (0.85) is a rectangle. Without rectangles in the world the rule is the
three shapes' one, unchanged.

A detection is ``Detection(label=shape, score=1.0, box=tight box (x1, y1 exclusive), mask, color=palette
name)``; since it carries its colour, the GenEval scorer never calls a colour classifier. Scores are all
1.0 (the decision is exact, so GenEval's confidence thresholds never drop a shape); detections come
largest first. On rendered scenes (:func:`tdmr1_lightning.shapes.scenes.render`) the detections are
exactly the scene's objects: shapes, colours and boxes.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import torch
from scipy import ndimage
from tdmr1_rewards.detectors import Detection
from torch import Tensor

from .world import PALETTE, SHAPES, World

__all__ = ["ShapesDetector", "classify_shape", "shape_features"]

_EIGHT = np.ones((3, 3), dtype=bool)
_FOUR = ndimage.generate_binary_structure(2, 1)


def shape_features(mask: np.ndarray) -> tuple[float, float, float]:
    """``(fill, bottom_heavy, aspect)`` of a component cropped to its tight box (``bool (h, w)``)."""
    h, w = mask.shape
    area = float(mask.sum())
    if area == 0:
        return 0.0, 0.0, 1.0
    half = h // 2
    upper = float(mask[:half].sum())
    lower = float(mask[h - half :].sum())
    return area / (h * w), (lower - upper) / area, max(h, w) / min(h, w)


def classify_shape(
    mask: np.ndarray,
    square_fill: float = 0.93,
    circle_fill: float = 0.7,
    triangle_bottom_heavy: float = 0.2,
    max_aspect: float | None = 1.5,
    shapes: Collection[str] = SHAPES,
    rectangle_fill: float = 0.85,
    rectangle_aspect: tuple[float, float] = (1.5, 3.0),
) -> str | None:
    """The shape of one component cropped to its tight box, or None when it is none of ``shapes``."""
    fill, bottom_heavy, aspect = shape_features(mask)
    if fill == 0:
        return None
    wide = mask.shape[1] > mask.shape[0]
    lo, hi = rectangle_aspect
    if "rectangle" in shapes and wide and lo < aspect <= hi and fill >= rectangle_fill:
        return "rectangle"
    if max_aspect is not None and aspect > max_aspect:
        return None
    if bottom_heavy >= triangle_bottom_heavy:
        return "triangle"
    if fill >= square_fill:
        return "square"
    if fill >= circle_fill:
        return "circle"
    return None


class ShapesDetector:
    """Finds the world's coloured shapes in ``uint8 (N, 3, H, W)`` images, without learning (see the module).

    Args:
        world: The world whose palette, background and shapes it knows (``classes`` = its shapes).
        min_area: Components with fewer pixels are dropped; None: ``max(4, (smallest object side) ** 2 / 4)``
            scaled to the image's resolution (12 px at 32 px by default: 7 px objects count, specks do not).
        color_threshold: A pixel farther than this (RGB, Euclidean) from every palette colour and the
            background is background. 150 keeps detection exact on renders blurred by a Gaussian of
            sigma 0.8 px (plus noise); 80 only up to sigma 0.5, as blurred edges then fall off the objects.
        connectivity: 8 (diagonal neighbours join a component) or 4.
        square_fill, circle_fill, triangle_bottom_heavy, max_aspect, rectangle_fill, rectangle_aspect:
            The shape rule (:func:`classify_shape`).
    """

    def __init__(
        self,
        world: World | None = None,
        min_area: int | None = None,
        color_threshold: float = 150.0,
        connectivity: int = 8,
        square_fill: float = 0.93,
        circle_fill: float = 0.7,
        triangle_bottom_heavy: float = 0.2,
        max_aspect: float | None = 1.5,
        rectangle_fill: float = 0.85,
        rectangle_aspect: tuple[float, float] = (1.5, 3.0),
    ) -> None:
        self.world = world if world is not None else World()
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
        if min_area is not None and min_area < 1:
            raise ValueError(f"min_area must be >= 1, got {min_area}")
        if color_threshold <= 0:
            raise ValueError(f"color_threshold must be > 0, got {color_threshold}")
        self.min_area = min_area
        self.color_threshold = float(color_threshold)
        self.structure = _EIGHT if connectivity == 8 else _FOUR
        self.square_fill = float(square_fill)
        self.circle_fill = float(circle_fill)
        self.triangle_bottom_heavy = float(triangle_bottom_heavy)
        self.max_aspect = max_aspect
        self.rectangle_fill = float(rectangle_fill)
        self.rectangle_aspect = (float(rectangle_aspect[0]), float(rectangle_aspect[1]))
        self.colors: list[str] = list(self.world.colors)
        refs = [self.world.background] + [PALETTE[c] for c in self.colors]
        self._refs = np.asarray(refs, dtype=np.int32)  # (K + 1, 3); 0 is the background

    @property
    def classes(self) -> list[str]:
        """The world's shapes."""
        return list(self.world.shapes)

    def to(self, device) -> ShapesDetector:  # noqa: ARG002 - runs on the CPU whatever the reward's device
        return self

    def area_floor(self, resolution: int) -> int:
        """The smallest component kept in an image of ``resolution`` pixels."""
        if self.min_area is not None:
            return int(self.min_area)
        side = self.world.size_px()[0] * resolution / self.world.resolution
        return max(4, int(side * side / 4))

    def labels(self, images: Tensor) -> np.ndarray:
        """``int (N, H, W)`` palette index per pixel: 0 background, ``k`` the world's ``colors[k - 1]``."""
        arr = images.detach().to("cpu").numpy().astype(np.int32).transpose(0, 2, 3, 1)  # (N, H, W, 3)
        d2 = ((arr[..., None, :] - self._refs) ** 2).sum(-1)  # (N, H, W, K + 1)
        nearest = d2.argmin(-1)
        far = np.take_along_axis(d2, nearest[..., None], -1)[..., 0] > self.color_threshold**2
        nearest[far] = 0
        return nearest

    def detect(self, images: Tensor) -> list[list[Detection]]:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"ShapesDetector.detect: expected uint8 images (N, 3, H, W), got {got}")
        if images.shape[0] == 0:
            return []
        labels = self.labels(images)
        floor = self.area_floor(images.shape[-1])
        return [self._detect_one(lab, floor)[0] for lab in labels]

    def parse(self, images: Tensor, max_stray_pixels: int = 2) -> list[bool]:
        """Whether each image parses as a scene of the world: at least one shape, at most
        ``world.max_objects``, and no other coloured component larger than ``max_stray_pixels`` (a speck,
        a blob no shape rule accepts, two shapes run together). An image-quality measure that needs no
        prompt: rendered scenes always parse; noise, smears and half-drawn shapes do not."""
        if images.shape[0] == 0:
            return []
        labels = self.labels(images)
        floor = self.area_floor(images.shape[-1])
        out = []
        for lab in labels:
            found, stray = self._detect_one(lab, floor, max_stray_pixels)
            out.append(1 <= len(found) <= self.world.max_objects and stray == 0)
        return out

    def _detect_one(
        self, labels: np.ndarray, floor: int, stray_above: int | None = None
    ) -> tuple[list[Detection], int]:
        """Detections, largest first, and the number of dropped components larger than ``stray_above``
        pixels (counted only when it is given)."""
        shapes = set(self.world.shapes)
        stray = 0
        found: list[tuple[int, int, int, Detection]] = []
        for k in np.unique(labels):
            if k == 0:
                continue
            components, n = ndimage.label(labels == k, structure=self.structure)
            if n == 0:
                continue
            areas = np.bincount(components.ravel(), minlength=n + 1)
            for i, sl in enumerate(ndimage.find_objects(components), start=1):
                if sl is None:
                    continue
                shape = None
                if areas[i] >= floor:
                    crop = components[sl] == i
                    shape = classify_shape(
                        crop,
                        self.square_fill,
                        self.circle_fill,
                        self.triangle_bottom_heavy,
                        self.max_aspect,
                        shapes,
                        self.rectangle_fill,
                        self.rectangle_aspect,
                    )
                if shape is None or shape not in shapes:
                    if stray_above is not None and areas[i] > stray_above:
                        stray += 1
                    continue
                ys, xs = sl
                mask = components == i
                det = Detection(
                    label=shape,
                    score=1.0,
                    box=(float(xs.start), float(ys.start), float(xs.stop), float(ys.stop)),
                    mask=torch.from_numpy(mask),
                    color=self.colors[int(k) - 1],
                )
                found.append((-int(areas[i]), ys.start, xs.start, det))
        found.sort(key=lambda t: t[:3])
        return [t[3] for t in found], stray
