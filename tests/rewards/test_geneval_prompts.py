"""GenEval-style prompt generator and the GenEval metadata loader."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
from tdmr1_rewards.detectors import COCO_CLASSES, COLORS, Detection
from tdmr1_rewards.geneval import RELATIONS, TAGS, evaluate, metadata_problem
from tdmr1_rewards.geneval_prompts import (
    generate_prompts,
    load_geneval_metadata,
    main,
    plural,
    with_article,
    write_jsonl,
)


def test_deterministic_from_the_seed():
    assert generate_prompts(60, seed=3) == generate_prompts(60, seed=3)
    assert generate_prompts(60, seed=3) != generate_prompts(60, seed=4)
    assert generate_prompts(12, seed=3) == generate_prompts(60, seed=3)[:12]


def test_all_tags_in_equal_shares_and_schema_valid():
    records = generate_prompts(600, seed=0)
    assert Counter(r["tag"] for r in records) == {tag: 100 for tag in TAGS}
    for r in records:
        assert metadata_problem({k: v for k, v in r.items() if k != "prompt"}, COCO_CLASSES) is None, r
        assert r["prompt"].startswith("a photo of ")
        for req in r["include"]:
            if "color" in req:
                assert req["class"] != "person" and req["color"] in COLORS
        if r["tag"] == "counting":
            (inc,), (exc,) = r["include"], r["exclude"]
            assert 2 <= inc["count"] <= 4 and exc == {"class": inc["class"], "count": inc["count"] + 1}
        else:
            assert "exclude" not in r
    assert {r["include"][1]["position"][0] for r in records if r["tag"] == "position"} == set(RELATIONS)


def test_prompt_text_in_geneval_style():
    by_tag = {}
    for r in generate_prompts(120, seed=1):
        by_tag.setdefault(r["tag"], r)
    one = by_tag["single_object"]["include"][0]["class"]
    assert by_tag["single_object"]["prompt"] == f"a photo of {with_article(one)}"
    inc = by_tag["counting"]["include"][0]
    assert (
        by_tag["counting"]["prompt"]
        == f"a photo of {['two', 'three', 'four'][inc['count'] - 2]} {plural(inc['class'])}"
    )
    c = by_tag["colors"]["include"][0]
    assert by_tag["colors"]["prompt"] == f"a photo of {with_article(c['color'] + ' ' + c['class'])}"
    b, a = by_tag["position"]["include"]
    assert (
        by_tag["position"]["prompt"]
        == f"a photo of {with_article(a['class'])} {a['position'][0]} {with_article(b['class'])}"
    )
    assert a["position"][1] == 0


def test_english_helpers():
    assert [with_article(x) for x in ["apple", "orange car", "dog"]] == ["an apple", "an orange car", "a dog"]
    assert [
        plural(x) for x in ["dog", "bus", "wine glass", "bench", "person", "knife", "sheep", "computer mouse", "skis"]
    ] == ["dogs", "buses", "wine glasses", "benches", "people", "knives", "sheep", "computer mice", "pairs of skis"]


@pytest.mark.parametrize("relation", RELATIONS)
def test_position_metadata_means_a_relation_b(relation):
    """'a photo of A left of B' is satisfied by A placed left of B (generator and scorer agree)."""
    positions = [r for r in generate_prompts(600, seed=0) if r["tag"] == "position"]
    record = next(r for r in positions if r["include"][1]["position"][0] == relation)
    b, a = record["include"][0]["class"], record["include"][1]["class"]
    assert record["prompt"].startswith(f"a photo of {with_article(a)} {relation} ")
    near, far = (0.0, 40.0, 20.0, 60.0), (60.0, 40.0, 80.0, 60.0)
    if relation in ("right of", "below"):
        near, far = far, near
    if relation in ("above", "below"):
        near, far = (near[1], near[0], near[3], near[2]), (far[1], far[0], far[3], far[2])
    assert evaluate([Detection(a, 0.9, near), Detection(b, 0.9, far)], record)["correct"] is True
    assert evaluate([Detection(a, 0.9, far), Detection(b, 0.9, near)], record)["correct"] is False


def test_cli_round_trips_through_the_loader(tmp_path):
    out = tmp_path / "sub" / "prompts.jsonl"
    assert main(["--out", str(out), "--n", "30", "--seed", "7"]) == 0
    loaded = load_geneval_metadata(out)
    assert loaded == generate_prompts(30, seed=7)
    assert all(list(r)[0] == "prompt" for r in loaded)  # {"prompt", **metadata}
    assert len(out.read_text().splitlines()) == 30


@pytest.mark.slow
def test_module_cli(tmp_path):
    out = tmp_path / "p.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "tdmr1_rewards.geneval_prompts", "--out", str(out), "--n", "500", "--seed", "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote 500 prompts" in proc.stderr
    assert load_geneval_metadata(out) == generate_prompts(500, seed=0)


def test_loader_reads_published_style_lines(tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    lines = [
        {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
        {
            "tag": "counting",
            "include": [{"class": "clock", "count": 2}],
            "exclude": [{"class": "clock", "count": 3}],
            "prompt": "a photo of two clocks",
        },
        {
            "tag": "position",
            "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["above", 0]}],
            "prompt": "a photo of a cat above a dog",
        },
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    records = load_geneval_metadata(path)
    assert [r["prompt"] for r in records] == [x["prompt"] for x in lines]
    assert records[1]["exclude"] == [{"class": "clock", "count": 3}]


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"tag": "single_object", "include": [{"class": "dog", "count": 1}]}', "missing field 'prompt'"),
        ('{"include": [{"class": "dog", "count": 1}], "prompt": "a dog"}', "missing field 'tag'"),
        ('{"tag": "single_object", "prompt": "a dog"}', "missing field 'include'"),
        (
            '{"tag": "single_object", "include": [{"class": "dog"}], "prompt": "a dog"}',
            r"include\[0\] is missing field 'count'",
        ),
        (
            '{"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "teal"}], "prompt": "a teal dog"}',
            "'teal'",
        ),
        ('{"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a dog"', "invalid JSON"),
        ('["a dog"]', "expected a JSON object"),
    ],
)
def test_loader_errors_name_file_and_line(tmp_path, line, match):
    path = tmp_path / "meta.jsonl"
    good = json.dumps({"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a dog"})
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(ValueError, match=rf"meta.jsonl:3: .*{match}"):
        load_geneval_metadata(path)


def test_write_jsonl_creates_folders(tmp_path):
    path = write_jsonl(generate_prompts(6, seed=0), tmp_path / "a" / "b.jsonl")
    assert len(load_geneval_metadata(path)) == 6


def test_a_held_out_set_excludes_the_training_prompts(tmp_path) -> None:
    train = write_jsonl(generate_prompts(300, seed=0), tmp_path / "train.jsonl")
    out = tmp_path / "test.jsonl"
    assert main(["--out", str(out), "--n", "60", "--seed", "1", "--exclude", str(train)]) == 0
    trained = {r["prompt"] for r in load_geneval_metadata(train)}
    held_out = load_geneval_metadata(out)
    assert len(held_out) == 60 and not trained & {r["prompt"] for r in held_out}
    assert Counter(r["tag"] for r in held_out) == Counter(r["tag"] for r in generate_prompts(60, seed=1))
    assert trained & {r["prompt"] for r in generate_prompts(60, seed=1)}  # the exclusion is what keeps them apart
