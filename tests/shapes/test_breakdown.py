"""Accuracy by held-out kind and failures by tag, from samples scored by the real GenEval scorer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image
from tdmr1_rewards.geneval import GenEvalReward

from tdmr1_lightning.data import load_prompts
from tdmr1_lightning.shapes import SHAPES, ShapesDetector, World, render, render_batch, scene_for
from tdmr1_lightning.shapes.breakdown import (
    accuracy_by_kind,
    drawn_by_tag,
    drawn_outcome,
    failure_kind,
    failures_by_tag,
    held_out_kinds,
    load_held_out,
    load_world,
    main,
)

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ROOT / "configs" / "prompts" / "shapes" / "test.jsonl"
WORLD = World()
HELD = load_held_out(PROMPTS.parent / "world.json")
RECORDS = load_prompts(PROMPTS)


def _first(kinds: tuple[str, ...], tag: str) -> dict:
    return next(r for r in RECORDS if r["tag"] == tag and held_out_kinds(r, HELD) == kinds)


def _scenes() -> list[tuple[dict, list, str]]:
    """(record, scene, expected failure) with scenes made right, then broken in one known way."""
    position = _first(("relation",), "position")
    pair = _first(("colors",), "color_attr")
    count = next(r for r in RECORDS if r["tag"] == "counting")
    right = scene_for(position, 0, WORLD)
    a, b = right
    swapped = [dataclasses.replace(a, left=b.left, top=b.top), dataclasses.replace(b, left=a.left, top=a.top)]
    other = next(c for c in WORLD.colors if c != a.color)
    recoloured = [dataclasses.replace(a, color=other), b]
    asked = scene_for(count, 1, WORLD)
    free = next((r, c) for r in range(2) for c in range(2) if all((o.top // 16, o.left // 16) != (r, c) for o in asked))
    fourth = dataclasses.replace(asked[0], left=free[1] * 16 + 3, top=free[0] * 16 + 3)
    return [
        (position, right, "correct"),
        (position, swapped, "wrong relation"),
        (position, recoloured, "wrong colour"),
        (position, [a], "missing object"),
        (pair, scene_for(pair, 2, WORLD), "correct"),
        (pair, [scene_for(pair, 3, WORLD)[0]], "missing object"),
        (count, asked, "correct"),
        (count, [*asked, fourth], "extra object"),
    ]


@pytest.fixture(scope="module")
def scored():
    cases = _scenes()
    records = [r for r, _, _ in cases]
    reward = GenEvalReward(detector=ShapesDetector(WORLD), mode="strict")
    metas = [{k: v for k, v in r.items() if k != "prompt"} for r in records]
    out = reward.score(render_batch([s for _, s, _ in cases], world=WORLD), [r["prompt"] for r in records], metas)
    samples = [
        {
            "prompt": r["prompt"],
            "tag": r["tag"],
            "correct": {"shapes_geneval": bool(c)},
            "reasons": {"shapes_geneval": why},
        }
        for r, c, why in zip(records, out.details["correct"].tolist(), out.details["reasons"])
    ]
    return cases, samples


def test_failure_kinds_of_the_scorers_own_reasons(scored):
    cases, samples = scored
    for (_, _, expected), sample in zip(cases, samples):
        kind = "correct" if sample["correct"]["shapes_geneval"] else failure_kind(sample["reasons"]["shapes_geneval"])
        assert kind == expected, sample
    assert failure_kind("") == "correct"
    assert failure_kind("something new") == "other"
    assert failure_kind("no target for circle to be left of") == "no relation target"


def test_held_out_kinds_of_shipped_prompts():
    kinds = {held_out_kinds(r, HELD) for r in RECORDS}
    assert () not in kinds  # every test prompt holds a held-out combination
    assert {
        ("colors",),
        ("relation",),
        ("counted",),
        ("pair",),
        ("colors", "relation"),
    } <= kinds  # count triples held out
    train = load_prompts(PROMPTS.parent / "train.jsonl")
    assert all(held_out_kinds(r, HELD) == () for r in train)


def test_accuracy_by_kind_and_failures(scored):
    _, samples = scored
    groups = accuracy_by_kind(samples, {r["prompt"]: r for r in RECORDS}, HELD)
    assert groups["relation triple"]["samples"] == 4 and groups["relation triple"]["correct"] == 1
    assert groups["relation triple"]["prompts"] == 1
    assert groups["coloured pair"]["accuracy"] == 0.5
    lo, hi = groups["coloured pair"]["interval"]
    assert lo < 0.5 < hi
    assert groups["pooled: position, color_attr"]["samples"] == 6
    assert list(groups)[-1].startswith("pooled")
    masked = [*samples, {**samples[0], "correct": {"shapes_geneval": None}}]
    assert accuracy_by_kind(masked, {r["prompt"]: r for r in RECORDS}, HELD, pool_tags=()) == {
        k: v for k, v in groups.items() if not k.startswith("pooled")
    }
    counts = failures_by_tag(samples)
    assert counts["position"] == {"correct": 1, "wrong relation": 1, "wrong colour": 1, "missing object": 1}
    assert counts["counting"] == {"correct": 1, "extra object": 1}


def test_cli_prints_both_tables_and_names_bad_input(scored, tmp_path, capsys):
    _, samples = scored
    run = tmp_path / "run"
    run.mkdir()
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    assert main(["--prompts", str(PROMPTS), f"mine={run}", str(run / "samples.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "| held-out kind (prompts, samples) | mine | samples.jsonl |" in out
    assert "| relation triple (1, 4) | 0.250 [" in out
    assert "| mine: tag (samples) | correct | missing object | wrong colour | wrong relation | extra object |" in out

    assert main(["--prompts", str(PROMPTS), str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(samples[0]) + '\n{"prompt": 1}\n')
    assert main(["--prompts", str(PROMPTS), str(bad)]) == 2
    assert "bad.jsonl, line 2: not a sample" in capsys.readouterr().err
    stranger = tmp_path / "stranger.jsonl"
    stranger.write_text(json.dumps({**samples[0], "prompt": "a photo of a cat"}) + "\n")
    assert main(["--prompts", str(PROMPTS), str(stranger)]) == 2
    assert "'a photo of a cat' is not in the prompt set" in capsys.readouterr().err
    assert main(["--prompts", str(PROMPTS), "--world", str(PROMPTS), str(run)]) == 2
    assert "not a world.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "held-out kind" in capsys.readouterr().out


def test_drawn_outcome_by_shape_and_number():
    asked = {"tag": "counting", "include": [{"class": "circle", "count": 3}]}
    assert drawn_outcome(asked, ["circle"] * 3) == "as asked"
    assert drawn_outcome(asked, ["circle", "square", "circle"]) == "a wrong shape"
    assert drawn_outcome(asked, ["circle"] * 2) == "too few objects"
    assert drawn_outcome(asked, ["circle"] * 4) == "too many objects"
    pair = {"tag": "position", "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1}]}
    assert drawn_outcome(pair, ["circle", "square"]) == "as asked"
    assert drawn_outcome(pair, ["circle", "circle"]) == "a wrong shape"
    assert drawn_outcome(pair, []) == "too few objects"


def _save(folder: Path, index: int, record: dict, scenes: list) -> None:
    """Images in the layout of 'tdmr1 evaluate --save-images each'."""
    (folder / "images" / f"{index:05d}" / "samples").mkdir(parents=True)
    (folder / "images" / f"{index:05d}" / "metadata.jsonl").write_text(json.dumps(record) + "\n")
    for j, scene in enumerate(scenes):
        array = render(scene, world=WORLD).permute(1, 2, 0).numpy()
        Image.fromarray(array).save(folder / "images" / f"{index:05d}" / "samples" / f"{j:04d}.png")


def test_shapes_drawn_read_back_from_saved_images(scored, tmp_path, capsys):
    cases, samples = scored
    count = next(r for r, _, _ in cases if r["tag"] == "counting")
    asked = scene_for(count, 1, WORLD)
    other = next(s for s in WORLD.shapes if s != asked[0].shape)
    wrong = [dataclasses.replace(asked[0], shape=other), *asked[1:]]
    extra = next(s for r, s, why in cases if r["tag"] == "counting" and why == "extra object")
    position = next(r for r, _, _ in cases if r["tag"] == "position")
    run = tmp_path / "run"
    _save(run, 0, count, [asked, wrong, asked[:-1], extra])  # one object fewer than asked
    _save(run, 1, position, [scene_for(position, 0, WORLD)])
    assert drawn_by_tag(run, ShapesDetector(WORLD)) == {
        "counting": {
            "as asked": 1,
            "a wrong shape": 1,
            "too few objects": 1,
            "too many objects": 1,
            "a shape not named": 1,
        },
        "position": {"as asked": 1, "a shape not named": 0},
    }
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    assert main(["--prompts", str(PROMPTS), "--drawn", "--no-failures", f"mine={run}"]) == 0
    out = capsys.readouterr().out
    assert (
        "| mine, shapes drawn: tag (samples) | as asked | a wrong shape | too few objects | too many objects "
        "| a shape not named |" in out
    )
    assert "| counting (4) | 0.250 | 0.250 | 0.250 | 0.250 | 0.250 |" in out
    assert "| position (1) | 1.000 | 0.000 | 0.000 | 0.000 | 0.000 |" in out

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "samples.jsonl").write_text((run / "samples.jsonl").read_text())
    assert main(["--prompts", str(PROMPTS), "--drawn", str(bare)]) == 2
    assert "no saved images (run 'tdmr1 evaluate' with --save-images each)" in capsys.readouterr().err


def test_world_of_a_world_json(tmp_path):
    """--drawn detects the shapes of the prompt set's world (a rectangle is a stray in the default one)."""
    assert load_world(PROMPTS.parent / "world.json") == WORLD
    four = tmp_path / "world.json"
    four.write_text(json.dumps({"world": World(shapes=SHAPES).to_dict(), "held_out": {}}))
    assert load_world(four).shapes == SHAPES
    (tmp_path / "bare.json").write_text(json.dumps({"held_out": {}}))
    assert load_world(tmp_path / "bare.json") == WORLD
    (tmp_path / "odd.json").write_text(json.dumps({"world": {"shapes": ["hexagon"]}}))
    with pytest.raises(ValueError, match="odd.json.*hexagon"):
        load_world(tmp_path / "odd.json")
