"""The shapes world: vocabulary, scenes, prompts and metadata, exact GenEval scores, held-out split, dataset, CLI."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter

import numpy as np
import pytest
import torch
from tdmr1_rewards.geneval import TAGS, GenEvalReward, metadata_problem, relative_position
from tdmr1_rewards.geneval_prompts import load_geneval_metadata

from tdmr1_lightning.data import load_prompts
from tdmr1_lightning.shapes import (
    PALETTE,
    SHAPES,
    ShapesDataset,
    ShapesDetector,
    World,
    collate_shapes,
    enumerate_prompts,
    held_out_combinations,
    is_held_out,
    make_prompt_sets,
    object_mask,
    parse_prompt,
    prompt_combinations,
    random_scene,
    render,
    render_batch,
    sample_prompt,
    scene_for,
    split_prompts,
)
from tdmr1_lightning.shapes.command import main
from tdmr1_lightning.shapes.splits import seen_prompts

WORLD = World()


def _meta(record):
    return {k: v for k, v in record.items() if k != "prompt"}


def _score(world, scenes, records, mode="strict"):
    reward = GenEvalReward(detector=ShapesDetector(world), mode=mode)
    reward.validate([r["prompt"] for r in records], [_meta(r) for r in records])
    return reward.score(render_batch(scenes, world=world), [r["prompt"] for r in records], [_meta(r) for r in records])


# -------------------------------------------------------------------------------------------- world


def test_world_defaults_and_narrowing():
    assert WORLD.shapes == ("circle", "square", "triangle")
    assert WORLD.colors == ("red", "green", "blue", "yellow")
    assert (WORLD.resolution, WORLD.grid, WORLD.max_objects) == (32, 2, 3)
    assert WORLD.cell_bounds() == [0, 16, 32] and WORLD.size_px() == (10, 12) and WORLD.margin_px() == 2
    dense = World(grid=3)  # the denser variant
    assert dense.cell_bounds() == [0, 11, 21, 32] and dense.size_px() == (7, 8) and dense.margin_px() == 1
    narrow = World(shapes=["circle", "square"], colors=["red", "blue"], max_objects=3, resolution=32)
    assert narrow.shapes == ("circle", "square") and narrow.colors == ("red", "blue")
    assert hash(narrow) == hash(World(shapes=("circle", "square"), colors=("red", "blue")))
    assert World(**WORLD.to_dict()) == WORLD
    with pytest.raises(dataclasses.FrozenInstanceError):
        WORLD.resolution = 64  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"colors": ("red", "magenta")}, "unknown colors"),
        ({"shapes": ("circle", "hexagon")}, "unknown shapes"),
        ({"colors": ("red", "white")}, "white"),  # white on the white background
        ({"colors": ("red", "red")}, "duplicates"),
        ({"resolution": 12}, "too small"),
        ({"max_objects": 10}, "max_objects"),
        ({"counts": (2, 4)}, "counts"),
        ({"shapes": ("circle",)}, "2 shapes"),
        ({"colors": ("red",)}, "color_attr"),
        ({"colored_tags": ("two_object",)}, "colored_tags"),
        ({"size_range": (0.9, 1.0)}, "do not fit"),
    ],
)
def test_world_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        World(**kwargs)


# ------------------------------------------------------------------------------------------- scenes


@pytest.mark.parametrize("world", [WORLD, World(shapes=SHAPES)], ids=["default", "4-shapes"])
def test_scenes_in_slots_never_touch(world):
    rng = random.Random(0)
    bounds, margin = world.cell_bounds(), world.margin_px()
    for _ in range(2000):
        scene = random_scene(rng, world)
        assert 1 <= len(scene) <= 3 and len({o.cell for o in scene}) == len(scene)
        for o in scene:
            row, col = o.cell
            x0, y0, x1, y1 = o.box
            assert bounds[col] + margin <= x0 and x1 <= bounds[col + 1] - margin
            assert bounds[row] + margin <= y0 and y1 <= bounds[row + 1] - margin
            assert 10 <= o.size <= 12 and o.height == (o.size if o.shape != "rectangle" else (o.size + 1) // 2)
        for i, a in enumerate(scene):
            for b in scene[i + 1 :]:  # >= 2 * margin px apart along x or y: no 8-neighbour pixels
                ax0, ay0, ax1, ay1 = a.box
                bx0, by0, bx1, by1 = b.box
                assert max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1) >= 2 * margin


def test_render_crisp_palette_pixels():
    rng = random.Random(1)
    scene = random_scene(rng, WORLD, 3)
    image = render(scene, world=WORLD)
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 32, 32)
    colours = {tuple(p) for p in image.permute(1, 2, 0).reshape(-1, 3).tolist()}
    assert colours == {WORLD.background} | {PALETTE[o.color] for o in scene}
    for o in scene:
        mask = torch.from_numpy(object_mask(o, 32))
        assert (image.permute(1, 2, 0)[mask] == torch.tensor(PALETTE[o.color], dtype=torch.uint8)).all()
    big = render(scene, 128, WORLD)
    assert tuple(big.shape) == (3, 128, 128)
    assert torch.equal(big, image.repeat_interleave(4, 1).repeat_interleave(4, 2))
    assert render_batch([scene, ()], world=WORLD).shape == (2, 3, 32, 32)


# ---------------------------------------------------------------------------------- prompts / metadata


def test_sample_prompt_all_tags_in_geneval_schema():
    rng = random.Random(0)
    records = [sample_prompt(rng, WORLD) for _ in range(600)]
    assert set(Counter(r["tag"] for r in records)) == set(TAGS)
    every = {r["prompt"]: r for r in enumerate_prompts(WORLD)}
    for r in records:
        assert metadata_problem(_meta(r), WORLD.shapes) is None
        assert every[r["prompt"]] == r  # enumerate_prompts covers what sample_prompt draws
    assert [sample_prompt(7, WORLD) for _ in range(3)] == [sample_prompt(7, WORLD)] * 3
    examples = {
        "a photo of a circle": {"tag": "single_object", "include": [{"class": "circle", "count": 1}]},
        "a photo of a red circle": {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]},
        "a photo of two blue squares": {
            "tag": "counting",
            "include": [{"class": "square", "count": 2, "color": "blue"}],
            "exclude": [{"class": "square", "count": 3}],
        },
        "a photo of a green triangle and a yellow circle": {
            "tag": "color_attr",
            "include": [
                {"class": "triangle", "count": 1, "color": "green"},
                {"class": "circle", "count": 1, "color": "yellow"},
            ],
        },
        "a photo of a triangle and a circle": {
            "tag": "two_object",
            "include": [{"class": "triangle", "count": 1}, {"class": "circle", "count": 1}],
        },
        "a photo of a red circle left of a blue square": {
            "tag": "position",
            "include": [
                {"class": "square", "count": 1, "color": "blue"},
                {"class": "circle", "count": 1, "color": "red", "position": ["left of", 0]},
            ],
        },
    }
    for text, meta in examples.items():
        assert parse_prompt(text, WORLD) == {**meta, "prompt": text}
        assert text in every


def test_enumerated_prompts_distinct_and_round_trip():
    records = enumerate_prompts(WORLD)
    assert len({r["prompt"] for r in records}) == len(records) == 501
    assert Counter(r["tag"] for r in records) == {
        "single_object": 3,
        "two_object": 6,
        "counting": 24,
        "colors": 12,
        "position": 384,
        "color_attr": 72,
    }
    for r in records:
        assert parse_prompt(r["prompt"], WORLD) == r
    other = World(colors=("red", "orange", "blue"), counts=(1, 2, 3), colored_tags=())
    for r in enumerate_prompts(other):
        assert parse_prompt(r["prompt"], other) == r
    assert parse_prompt("a photo of one circle", other)["tag"] == "counting"
    assert parse_prompt("a photo of an orange square", other)["include"] == [
        {"class": "square", "count": 1, "color": "orange"}
    ]


def test_parse_prompt_errors():
    with pytest.raises(ValueError) as err:
        parse_prompt("a photo of a purple hexagon", WORLD)
    message = str(err.value)
    assert "'hexagon'" in message and "'purple'" in message and "circle, square, triangle" in message
    assert "red, green, blue, yellow" in message
    with pytest.raises(ValueError, match="'four'"):
        parse_prompt("a photo of four circles", WORLD)
    with pytest.raises(ValueError, match="'triangle'.*shape outside"):
        parse_prompt("a photo of a triangle", World(shapes=("circle", "square")))
    with pytest.raises(ValueError, match="'above'"):
        parse_prompt("a photo of a circle above a square", World(relations=("left of", "right of")))
    for bad in (
        "a circle of a photo",
        "a photo of circle",
        "a photo of two circle",
        "a photo of a circles",
        "a photo of a circle and a circle",
        "a photo of a red circle and a square",
        "a photo of a circle left of",
        "a photo of a circle square",
        "a photo of two circles and a square",
    ):
        with pytest.raises(ValueError, match="grammar"):
            parse_prompt(bad, WORLD)


# ------------------------------------------------------------------------------- scenes for prompts


def test_scene_for_every_prompt_scores_correct():
    records = enumerate_prompts(WORLD) * 3
    rng = random.Random(0)
    scenes = [scene_for(r, rng, WORLD) for r in records]
    out = _score(WORLD, scenes, records)
    assert out.scores.tolist() == [1.0] * len(records), [x for x in out.details["reasons"] if x][:3]
    assert out.details["soft"].tolist() == [1.0] * len(records)
    for r, scene in zip(records, scenes):
        assert len(scene) == sum(c["count"] for c in r["include"])
        if r["tag"] == "position":  # the relation holds, and only it
            b, a = r["include"]
            (oa,) = [o for o in scene if o.shape == a["class"]]
            (ob,) = [o for o in scene if o.shape == b["class"]]
            assert relative_position(oa.box, ob.box) == {a["position"][0]}


def test_scene_for_other_worlds_scores_correct():
    worlds = (
        World(grid=3),
        World(resolution=24, grid=2),
        World(shapes=("circle", "square"), colors=("red", "blue")),
        World(shapes=SHAPES),
    )
    for world in worlds:
        records = enumerate_prompts(world)
        rng = random.Random(1)
        out = _score(world, [scene_for(r, rng, world) for r in records], records)
        assert out.scores.min().item() == 1.0


def _wrong_scenes(record, scene, world, rng):
    """Scenes that break the record: (what, scene)."""
    out = []
    objs = list(scene)
    colored = [i for i, o in enumerate(objs) if any(c["class"] == o.shape and "color" in c for c in record["include"])]
    if colored:
        i = colored[0]
        other = next(c for c in world.colors if c != objs[i].color)
        out.append(("colour", tuple(dataclasses.replace(o, color=other) if j == i else o for j, o in enumerate(objs))))
    if record["tag"] == "counting":
        out.append(("one fewer", tuple(objs[:-1])))
        free = [c for c in range(world.grid**2) if (c // world.grid, c % world.grid) not in {o.cell for o in objs}]
        cell = rng.choice(free)
        bounds = world.cell_bounds()
        extra = dataclasses.replace(
            objs[0], left=bounds[cell % world.grid] + 1, top=bounds[cell // world.grid] + 1, cell=None
        )
        out.append(("one more", tuple(objs) + (extra,)))
    else:
        out.append(("missing object", tuple(objs[1:])))
    if record["tag"] == "position":
        a, b = objs
        swapped = (dataclasses.replace(a, left=b.left, top=b.top), dataclasses.replace(b, left=a.left, top=a.top))
        out.append(("swapped", swapped))
    shape_other = next(s for s in world.shapes if s not in {c["class"] for c in record["include"]})
    out.append(("shape", (dataclasses.replace(objs[0], shape=shape_other),) + tuple(objs[1:])))
    return out


def test_wrong_scenes_score_zero():
    rng = random.Random(3)
    cases, records = [], []
    for r in enumerate_prompts(WORLD):
        scene = scene_for(r, rng, WORLD)
        for what, wrong in _wrong_scenes(r, scene, WORLD, rng):
            cases.append((what, r["prompt"]))
            records.append((r, wrong))
    out = _score(WORLD, [w for _, w in records], [r for r, _ in records])
    failed = [c for c, s in zip(cases, out.scores.tolist()) if s != 0.0]
    assert not failed, failed[:5]
    kinds = Counter(what for what, _ in cases)
    assert kinds["swapped"] == 384 and kinds["colour"] > 400 and kinds["one more"] == 24


def test_scene_for_refuses_what_the_world_cannot_show():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="hexagon"):
        scene_for({"tag": "single_object", "include": [{"class": "hexagon", "count": 1}]}, rng, WORLD)
    with pytest.raises(ValueError, match="purple"):
        scene_for({"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "purple"}]}, rng, WORLD)
    with pytest.raises(ValueError, match="at most 3"):
        scene_for({"tag": "counting", "include": [{"class": "circle", "count": 4}]}, rng, WORLD)
    with pytest.raises(ValueError, match="twice"):
        twice = [{"class": "circle", "count": 1}, {"class": "circle", "count": 1}]
        scene_for({"tag": "two_object", "include": twice}, rng, WORLD)
    with pytest.raises(ValueError, match="excludes"):
        meta = {
            "tag": "counting",
            "include": [{"class": "circle", "count": 2}],
            "exclude": [{"class": "circle", "count": 2}],
        }
        scene_for(meta, rng, WORLD)
    # avoided (colour, shape) pairs are never drawn for objects whose colour is free
    for _ in range(200):
        meta = {"tag": "single_object", "include": [{"class": "circle", "count": 1}]}
        (obj,) = scene_for(meta, rng, WORLD, avoid={("red", "circle"), ("blue", "circle")})
        assert obj.color in ("green", "yellow")


# ---------------------------------------------------------------------------------------- held out


@pytest.mark.parametrize("seed", range(5))
def test_held_out_split(seed, tmp_path):
    train, test, held = make_prompt_sets(WORLD, n_train=3000, n_test=256, seed=seed)
    assert len(test) == 256 and len({r["prompt"] for r in test}) == 256
    assert {r["tag"] for r in test} == {"two_object", "counting", "colors", "position", "color_attr"}
    assert Counter(r["tag"] for r in train) == {t: 500 for t in TAGS}
    combos = held.combinations()
    assert held.color_shape and held.count_shape and held.shape_pair and held.relation
    for r in train:
        assert not prompt_combinations(r) & combos and not is_held_out(r, held)
    for r in test:
        assert prompt_combinations(r) & combos
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    seen = set().union(*(prompt_combinations(r) for r in train))
    for color in WORLD.colors:  # every word keeps training partners
        assert any(k[0] == "color" and k[1] == color for k in seen)
    for shape in WORLD.shapes:
        assert any(k[0] == "color" and k[2] == shape for k in seen)
    # mirrored relations are held out together
    for a, rel, b in held.relation:
        mirror = {"left of": "right of", "above": "below"}[rel]
        r = {
            "tag": "position",
            "include": [{"class": a, "count": 1}, {"class": b, "count": 1, "position": [mirror, 0]}],
        }
        assert is_held_out(r, held)
    # deterministic
    again = make_prompt_sets(WORLD, n_train=3000, n_test=256, seed=seed)
    assert again[0] == train and again[1] == test and again[2] == held


@pytest.mark.parametrize("seed", range(3))
def test_compositions_split_keeps_every_binding_in_training(seed):
    train, test, held = make_prompt_sets(
        WORLD, n_train=1200, n_test=220, seed=seed, held_out_fraction=0.3, split="compositions"
    )
    assert not held.color_shape and held.color_pair and held.count_shape and held.shape_pair and held.relation
    combos = held.combinations()
    assert all(not prompt_combinations(r) & combos for r in train)
    assert all(prompt_combinations(r) & combos for r in test) and len({r["prompt"] for r in test}) == 220
    seen = set().union(*(prompt_combinations(r) for r in train))
    bindings = {("color", c, s) for c in WORLD.colors for s in WORLD.shapes}
    assert bindings <= seen  # every (colour, shape) pair is drawn in training ...
    held_pairs = {k for k in combos if k[0] == "colors"}
    assert held_pairs and not held_pairs & seen  # ... but some pairs of them never together
    for r in test:  # a held-out prompt's own bindings are all known
        assert {k for k in prompt_combinations(r) if k[0] == "color"} <= seen
    # the two coloured objects are one combination whatever their order in the prompt
    c1, s1, c2, s2 = sorted(held.color_pair)[0]
    for a, b in (((c1, s1), (c2, s2)), ((c2, s2), (c1, s1))):
        r = {
            "tag": "color_attr",
            "include": [{"class": a[1], "count": 1, "color": a[0]}, {"class": b[1], "count": 1, "color": b[0]}],
        }
        assert is_held_out(r, held)
    with pytest.raises(ValueError, match="unknown held-out split"):
        held_out_combinations(WORLD, 0.25, split="colours")


@pytest.mark.parametrize("seed", range(6))
def test_count_partners_keep_every_count_with_two_shapes(seed):
    """With one partner a split may train "three" with one shape alone (seed 0 of the shipped split:
    only "three squares"); with two, every count keeps two shapes in training and every shape a count."""
    one = held_out_combinations(WORLD, 0.3, seed, "compositions")
    two = held_out_combinations(WORLD, 0.3, seed, "compositions", count_partners=2)
    assert len(two.count_shape) == len(one.count_shape) == 2
    trained = {(n, s) for n in WORLD.counts for s in WORLD.shapes} - two.count_shape
    assert all(sum(k[0] == n for k in trained) >= 2 for n in WORLD.counts)
    assert {s for _, s in trained} == set(WORLD.shapes)
    # the other kinds of combination are the same draw
    assert (two.color_pair, two.relation, two.shape_pair) == (one.color_pair, one.relation, one.shape_pair)
    train, test, held = make_prompt_sets(WORLD, 600, 200, seed, 0.3, split="compositions", count_partners=2)
    assert held == two
    counting = {(r["include"][0]["count"], r["include"][0]["class"]) for r in train if r["tag"] == "counting"}
    assert counting == trained
    assert {
        (r["include"][0]["count"], r["include"][0]["class"]) for r in test if r["tag"] == "counting"
    } == two.count_shape
    # more partners than the world has shapes: as many as there are, which holds nothing out
    assert held_out_combinations(WORLD, 0.3, seed, "compositions", count_partners=5).count_shape == frozenset()
    if seed == 0:
        assert {n for n, _ in one.count_shape} == {3}  # the shipped split's shortcut
    with pytest.raises(ValueError, match="count_partners"):
        held_out_combinations(WORLD, 0.3, seed, count_partners=0)


@pytest.mark.parametrize("seed", range(4))
def test_count_triples_hold_out_counts_whose_every_pair_is_trained(seed):
    pairs = held_out_combinations(WORLD, 0.3, seed, "compositions")
    triples = held_out_combinations(WORLD, 0.3, seed, "compositions", count_triples=True)
    assert not triples.count_shape and len(triples.count_binding) == round(0.3 * 24)
    assert (triples.color_pair, triples.relation, triples.shape_pair) == (
        pairs.color_pair,
        pairs.relation,
        pairs.shape_pair,
    )
    train, test, held = make_prompt_sets(WORLD, 1200, 200, seed, 0.3, split="compositions", count_triples=True)
    assert held == triples
    counted = lambda r: (r["include"][0]["count"], r["include"][0]["color"], r["include"][0]["class"])  # noqa: E731
    trained = {counted(r) for r in train if r["tag"] == "counting"}
    assert trained == {(n, c, s) for n in WORLD.counts for c in WORLD.colors for s in WORLD.shapes} - held.count_binding
    for i, j in ((0, 2), (0, 1), (1, 2)):  # every pair of count, colour and shape is trained
        assert {(t[i], t[j]) for t in trained} == {(t[i], t[j]) for t in held.count_binding | trained}
    assert {counted(r) for r in test if r["tag"] == "counting"} == held.count_binding
    n, c, shape = sorted(held.count_binding)[0]
    assert is_held_out(parse_prompt(f"a photo of {['two', 'three'][n - 2]} {c} {shape}s"), held)
    with pytest.raises(ValueError, match="coloured counting prompts"):
        held_out_combinations(World(colored_tags=("position",)), 0.3, seed, count_triples=True)


def test_split_prompts_and_limits():
    held = held_out_combinations(WORLD, 0.25, seed=0)
    train, test = split_prompts(enumerate_prompts(WORLD), held)
    assert len(train) + len(test) == 501 and len(test) >= 200
    assert split_prompts(enumerate_prompts(WORLD), 0.25, seed=0) == (train, test)
    assert held_out_combinations(WORLD, 0.0).combinations() == set()
    with pytest.raises(ValueError, match="distinct held-out prompts"):
        make_prompt_sets(WORLD, 10, 400, seed=0)


def test_seen_prompts_are_distinct_training_prompts():
    train, test, _ = make_prompt_sets(WORLD, 600, 200, seed=0)
    seen = seen_prompts(train, per_tag=5, seed=0)
    prompts = [r["prompt"] for r in seen]
    assert len(prompts) == len(set(prompts)) and set(prompts) <= {r["prompt"] for r in train}
    assert not set(prompts) & {r["prompt"] for r in test}
    per_tag = Counter(r["tag"] for r in seen)
    distinct = Counter(r["tag"] for r in {r["prompt"]: r for r in train}.values())
    assert per_tag == {t: min(5, n) for t, n in distinct.items()}  # all of a small tag, 5 of a large one
    assert seen_prompts(train, 5, seed=0) == seen and seen_prompts(train, 5, seed=1) != seen
    assert seen_prompts(train, 0) == []
    with pytest.raises(ValueError, match="per_tag"):
        seen_prompts(train, -1)


def test_make_prompt_sets_writes_readable_files(tmp_path):
    train, test, held = make_prompt_sets(WORLD, 100, 200, seed=0, out_dir=tmp_path)
    assert load_geneval_metadata(tmp_path / "train.jsonl") == train
    assert load_prompts(tmp_path / "test.jsonl") == test
    info = json.loads((tmp_path / "world.json").read_text())
    assert World(**info["world"]) == WORLD and info["held_out"] == held.to_dict() and info["split"] == "bindings"
    assert info["count_partners"] == 1


def test_cli(tmp_path, capsys):
    assert main(["--out-dir", str(tmp_path), "--train", "60", "--test", "210", "--seed", "3", "--preview", "12"]) == 0
    assert len(load_prompts(tmp_path / "train.jsonl")) == 60 and len(load_prompts(tmp_path / "test.jsonl")) == 210
    from PIL import Image

    assert Image.open(tmp_path / "preview.png").size == (8 * 130 + 2, 2 * 130 + 2)
    assert len((tmp_path / "preview.txt").read_text().splitlines()) == 13
    assert "held out" in capsys.readouterr().err
    assert (
        main(
            [
                "--out-dir",
                str(tmp_path),
                "--test",
                "200",
                "--split",
                "compositions",
                "--held-out-fraction",
                "0.3",
                "--count-partners",
                "2",
                "--preview",
                "0",
            ]
        )
        == 0
    )
    info = json.loads((tmp_path / "world.json").read_text())
    assert info["count_partners"] == 2 and sorted(n for n, _ in info["held_out"]["count_shape"]) == [2, 3]
    assert (
        main(
            [
                "--out-dir",
                str(tmp_path),
                "--test",
                "200",
                "--split",
                "compositions",
                "--held-out-fraction",
                "0.3",
                "--count-triples",
                "--preview",
                "0",
            ]
        )
        == 0
    )
    info = json.loads((tmp_path / "world.json").read_text())
    assert info["count_triples"] and len(info["held_out"]["count_binding"]) == 7 and not info["held_out"]["count_shape"]
    with pytest.raises(SystemExit):
        main(["--out-dir", str(tmp_path), "--colors", "red", "white"])


# ----------------------------------------------------------------------------------------- dataset


def test_dataset_deterministic_and_correct():
    data = ShapesDataset(WORLD, length=60, seed=5)
    assert len(data) == 60
    items = [data[i] for i in range(60)]
    again = ShapesDataset(WORLD, length=60, seed=5)
    for i in (0, 17, 59):
        image, prompt, meta = again[i]
        assert torch.equal(image, items[i][0]) and prompt == items[i][1] and meta == items[i][2]
    other = ShapesDataset(WORLD, length=60, seed=6)
    assert any(not torch.equal(other[i][0], items[i][0]) for i in range(10))
    assert Counter(m["tag"] for _, _, m in items) == {t: 10 for t in TAGS}
    images, prompts, metas = collate_shapes(items)
    assert images.shape == (60, 3, 32, 32) and images.dtype == torch.uint8
    reward = GenEvalReward(detector=ShapesDetector(WORLD), mode="strict")
    assert reward.score(images, prompts, metas).scores.min().item() == 1.0
    with pytest.raises(IndexError):
        data[60]
    loader = torch.utils.data.DataLoader(data, batch_size=8, collate_fn=collate_shapes)
    batch = next(iter(loader))
    assert torch.equal(batch[0], images[:8])


def test_dataset_respects_held_out_and_records():
    held = held_out_combinations(WORLD, 0.25, seed=0)
    data = ShapesDataset(WORLD, length=300, seed=0, held_out=held)
    detector = ShapesDetector(WORLD)
    items = [data[i] for i in range(300)]
    for (_image, _prompt, meta), dets in zip(items, detector.detect(torch.stack([it[0] for it in items]))):
        assert not is_held_out(meta, held)
        assert not {(d.color, d.label) for d in dets} & held.color_shape  # free colours avoid held-out pairs too
    records = [parse_prompt("a photo of two blue squares"), parse_prompt("a photo of a circle")]
    fixed = ShapesDataset(WORLD, length=20, seed=0, records=records)
    assert {fixed[i][1] for i in range(20)} == {"a photo of two blue squares", "a photo of a circle"}
    assert fixed.record(3)["prompt"] in {"a photo of two blue squares", "a photo of a circle"}
    image = fixed[0][0]
    assert np.isin(image.permute(1, 2, 0).reshape(-1, 3).numpy(), np.array(list(PALETTE.values()))).all()
