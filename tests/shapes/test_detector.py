"""ShapesDetector: exact on rendered scenes, robust to off-palette pixels, behind the GenEval Detector interface."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tdmr1_rewards.detectors import Detector
from tdmr1_rewards.geneval import GenEvalReward, relative_position

from tdmr1_lightning.shapes import (
    DEFAULT_SHAPES,
    SHAPES,
    ShapeObject,
    ShapesDetector,
    World,
    classify_shape,
    object_mask,
    random_scene,
    render,
    render_batch,
    shape_template,
)


def _truth(scene, world):
    return sorted((o.shape, o.color, o.box) for o in scene)


def _found(detections):
    return sorted((d.label, d.color, tuple(int(v) for v in d.box)) for d in detections)


@pytest.mark.parametrize("size", range(5, 41))
def test_templates_classify(size):
    for shape in SHAPES:
        template = shape_template(shape, size)
        assert template.shape == ((size + 1) // 2 if shape == "rectangle" else size, size)
        assert template[0].any() and template[-1].any() and template[:, 0].any() and template[:, -1].any()  # tight box
        assert classify_shape(template) == shape


def test_exact_on_2000_random_scenes():
    world = World()
    detector = ShapesDetector(world)
    rng = random.Random(0)
    scenes = [random_scene(rng, world) for _ in range(2000)]
    images = render_batch(scenes, world=world)
    results = detector.detect(images)  # its speed: benchmarks/shapes_detector.py
    for scene, dets in zip(scenes, results):
        assert _found(dets) == _truth(scene, world)
        assert all(d.score == 1.0 for d in dets)
        for d in dets:  # the mask is exactly the object's pixels
            (obj,) = [o for o in scene if o.box == tuple(int(v) for v in d.box)]
            assert d.mask.dtype == torch.bool and tuple(d.mask.shape) == (32, 32)
            assert np.array_equal(d.mask.numpy(), object_mask(obj, 32))


@pytest.mark.slow
@pytest.mark.parametrize(
    "world",
    [
        World(grid=3),
        World(resolution=24, grid=2),
        World(resolution=48, grid=3),
        World(resolution=64, grid=4, max_objects=4, counts=(2, 3, 4)),
        World(shapes=("circle", "square"), colors=("red", "blue")),
        World(colors=("red", "orange", "yellow", "green", "blue", "purple", "black")),
        World(colors=("red", "white", "blue"), background=(128, 128, 128)),
        World(shapes=SHAPES),
        World(shapes=SHAPES, grid=3),
    ],
    ids=[
        "grid3",
        "24px-grid2",
        "48px-grid3",
        "64px-grid4",
        "narrow",
        "7-colours",
        "grey-bg",
        "4-shapes",
        "4-shapes-grid3",
    ],
)
def test_exact_on_other_worlds(world):
    detector = ShapesDetector(world)
    rng = random.Random(1)
    scenes = [random_scene(rng, world) for _ in range(300)]
    for scene, dets in zip(scenes, detector.detect(render_batch(scenes, world=world))):
        assert _found(dets) == _truth(scene, world)


def test_interface_and_input_checks():
    world = World(shapes=("circle", "triangle"))
    detector = ShapesDetector(world)
    assert isinstance(detector, Detector)
    assert detector.classes == ["circle", "triangle"]
    assert detector.detect(torch.zeros(0, 3, 32, 32, dtype=torch.uint8)) == []
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(torch.zeros(3, 32, 32, dtype=torch.uint8))
    # a square is not a class of this world: not reported
    square = (ShapeObject("square", "red", 2, 2, 8),)
    assert detector.detect(render(square, world=World())[None]) == [[]]
    with pytest.raises(ValueError):
        ShapesDetector(connectivity=6)


def test_off_palette_pixels_and_noise():
    world = World()
    detector = ShapesDetector(world)
    rng = random.Random(2)
    scenes = [random_scene(rng, world) for _ in range(200)]
    images = render_batch(scenes, world=world)
    gen = torch.Generator().manual_seed(0)
    noisy = (images.float() + 12 * torch.randn(images.shape, generator=gen)).clamp(0, 255).to(torch.uint8)
    for scene, dets in zip(scenes, detector.detect(noisy)):
        assert _found(dets) == _truth(scene, world)
    # off-palette grey is background; a red pulled 30 % towards the white background is red, 70 % is background
    canvas = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    for rgb, expected in (((150, 150, 150), []), ((231, 97, 97), [("square", "red")]), ((248, 188, 188), [])):
        image = canvas.clone()
        image[0, :, 4:12, 4:12] = torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1)
        (dets,) = detector.detect(image)
        assert [(d.label, d.color) for d in dets] == expected, rgb
        if dets:
            assert dets[0].box == (4.0, 4.0, 12.0, 12.0)


@pytest.mark.parametrize("shapes", [DEFAULT_SHAPES, SHAPES], ids=["3-shapes", "4-shapes"])
def test_robust_to_blur(shapes):
    """Gaussian blur (sigma 0.7 px) and noise: the same shapes, colours and relations (boxes within 1 px)."""
    from scipy import ndimage

    world = World(shapes=shapes)
    detector = ShapesDetector(world)
    rng = random.Random(4)
    scenes = [random_scene(rng, world) for _ in range(300)]
    images = render_batch(scenes, world=world).numpy().astype(np.float64)
    blurred = np.stack([ndimage.gaussian_filter(im, (0, 0.7, 0.7)) for im in images])
    blurred += np.random.default_rng(0).normal(0, 8, blurred.shape)
    results = detector.detect(torch.from_numpy(blurred.round().clip(0, 255).astype(np.uint8)))
    for scene, dets in zip(scenes, results):
        assert sorted((d.label, d.color) for d in dets) == sorted((o.shape, o.color) for o in scene)
        for d in dets:
            near = [
                o
                for o in scene
                if (o.shape, o.color) == (d.label, d.color) and np.abs(np.subtract(o.box, d.box)).max() <= 1
            ]
            assert len(near) == 1


def test_specks_blobs_and_min_area():
    world = World()
    canvas = render((), world=world)
    speck = canvas.clone()
    speck[:, 5:7, 5:7] = torch.tensor(world.rgb("blue"), dtype=torch.uint8).view(3, 1, 1)  # 4 px < 12 px floor
    assert ShapesDetector(world).detect(speck[None]) == [[]]
    (dets,) = ShapesDetector(world, min_area=4).detect(speck[None])
    assert [d.label for d in dets] == ["square"]
    # two touching squares merge into one 16 x 8 component: no shape (a rectangle where the world has them)
    blob = render((ShapeObject("square", "green", 2, 2, 8), ShapeObject("square", "green", 10, 2, 8)), world=world)
    assert ShapesDetector(world).detect(blob[None]) == [[]]
    (dets,) = ShapesDetector(World(shapes=SHAPES)).detect(blob[None])
    assert [(d.label, d.box) for d in dets] == [("rectangle", (2.0, 2.0, 18.0, 10.0))]
    stacked = render((ShapeObject("square", "green", 2, 2, 8), ShapeObject("square", "green", 2, 10, 8)), world=world)
    assert ShapesDetector(World(shapes=SHAPES)).detect(stacked[None]) == [[]]  # rectangles lie flat
    # the same squares apart: two
    apart = render((ShapeObject("square", "green", 2, 2, 8), ShapeObject("square", "green", 12, 2, 8)), world=world)
    assert len(ShapesDetector(world).detect(apart[None])[0]) == 2
    # two same-colour objects touching only diagonally join under 8-connectivity, not under 4
    diag = render((ShapeObject("square", "red", 2, 2, 8), ShapeObject("square", "red", 10, 10, 8)), world=world)
    assert ShapesDetector(world).detect(diag[None]) == [[]]
    assert len(ShapesDetector(world, connectivity=4).detect(diag[None])[0]) == 2
    # objects of different colours touching stay separate
    pair = render((ShapeObject("square", "red", 2, 2, 8), ShapeObject("circle", "blue", 10, 2, 8)), world=world)
    assert _found(ShapesDetector(world).detect(pair[None])[0]) == [
        ("circle", "blue", (10, 2, 18, 10)),
        ("square", "red", (2, 2, 10, 10)),
    ]


def test_largest_first_and_relations_from_boxes():
    world = World()
    scene = (ShapeObject("circle", "red", 1, 12, 7), ShapeObject("square", "blue", 23, 12, 8))
    (dets,) = ShapesDetector(world).detect(render(scene, world=world)[None])
    assert [d.label for d in dets] == ["square", "circle"]
    square, circle = dets
    assert relative_position(circle.box, square.box) == {"left of"}


def test_geneval_scorer_uses_detector_colours():
    world = World()

    class NoColours:
        def classify(self, crops, object_names):  # pragma: no cover - must not be called
            raise AssertionError("the colour classifier was called")

    reward = GenEvalReward(detector=ShapesDetector(world), color_classifier=NoColours(), mode="strict")
    meta = {"tag": "colors", "include": [{"class": "triangle", "count": 1, "color": "yellow"}]}
    reward.validate(["a photo of a yellow triangle"], [meta])
    with pytest.raises(ValueError, match="dog"):
        reward.validate(["a photo of a dog"], [{"tag": "single_object", "include": [{"class": "dog", "count": 1}]}])
    good = render((ShapeObject("triangle", "yellow", 12, 12, 8),), world=world)
    bad = render((ShapeObject("triangle", "blue", 12, 12, 8),), world=world)
    out = reward.score(torch.stack([good, bad]), ["p", "p"], [meta, meta])
    assert out.scores.tolist() == [1.0, 0.0]


def test_parse_accepts_scenes_and_refuses_clutter():
    world = World()
    detector = ShapesDetector(world)
    scenes = render_batch([random_scene(i, world) for i in range(300)], world=world)
    assert all(detector.parse(scenes))  # every rendered scene parses
    square = ShapeObject("square", "green", 2, 2, 8)
    canvas = render((square,), world=world)
    blank = render((), world=world)
    speck3 = canvas.clone()
    speck3[:, 20:21, 20:23] = torch.tensor(world.rgb("blue"), dtype=torch.uint8).view(3, 1, 1)  # 3 stray pixels
    speck2 = canvas.clone()
    speck2[:, 20:21, 20:22] = torch.tensor(world.rgb("blue"), dtype=torch.uint8).view(3, 1, 1)  # 2: tolerated
    blob = render((square, ShapeObject("square", "green", 10, 2, 8)), world=world)  # two run together
    four = render([ShapeObject("square", c, 2 + 8 * i, 20, 6) for i, c in enumerate(world.colors)], world=world)
    assert detector.parse(torch.stack([canvas, blank, speck3, speck2, blob, four])) == [
        True,
        False,
        False,
        True,
        False,
        False,
    ]
    assert detector.parse(speck3[None], max_stray_pixels=3) == [True]
    assert detector.parse(blank[:0][None][:0]) == []


def test_parsable_reward():
    from tdmr1_lightning.shapes.training import ShapesParsable

    world = World()
    images = torch.stack([render(random_scene(0, world), world=world), render((), world=world)])
    out = ShapesParsable()(images, ["a photo of a circle"] * 2)
    assert out.scores.tolist() == [1.0, 0.0] and out.details["parsable"] == [True, False]
    with pytest.raises(ValueError, match="max_stray_pixels"):
        ShapesParsable(max_stray_pixels=-1)
