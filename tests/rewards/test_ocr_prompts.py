"""OCR prompt sets: the generator (deterministic, every prompt carries its target) and the loader of
published OCR prompt files (errors name file:line)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tdmr1_rewards.ocr import OCRReward, extract_target, normalise_text
from tdmr1_rewards.ocr_prompts import (
    TEMPLATES,
    OCRPromptFileError,
    generate_ocr_prompts,
    load_ocr_prompts,
    main,
    write_prompts,
)


def test_generator_is_deterministic() -> None:
    assert generate_ocr_prompts(300, seed=0) == generate_ocr_prompts(300, seed=0)
    assert generate_ocr_prompts(300, seed=0) != generate_ocr_prompts(300, seed=1)
    # a longer run starts with the shorter one
    assert generate_ocr_prompts(500, seed=0)[:300] == generate_ocr_prompts(300, seed=0)


def test_every_prompt_has_its_target_in_quotes() -> None:
    records = generate_ocr_prompts(1000, seed=0)
    assert len({r["prompt"] for r in records}) == 1000
    for r in records:
        assert set(r) == {"prompt", "text"}
        assert extract_target(r["prompt"]) == r["text"]
        assert normalise_text(r["text"])
        assert "\n" not in r["prompt"]
    OCRReward().validate([r["prompt"] for r in records], [{} for _ in records])
    assert len({r["text"] for r in records}) > 500  # varied targets, not a handful repeated


@pytest.mark.parametrize("max_words", [1, 2])
def test_max_words(max_words: int) -> None:
    assert all(len(r["text"].split()) <= max_words for r in generate_ocr_prompts(300, seed=2, max_words=max_words))


def test_templates_quote_the_text_once() -> None:
    for template in TEMPLATES:
        assert extract_target(template.format(text="X Y")) == "X Y"
    with pytest.raises(ValueError, match="exactly once"):
        generate_ocr_prompts(3, templates=['A "quoted" sign that says "{text}"'])
    with pytest.raises(ValueError, match="distinct"):
        generate_ocr_prompts(1000, templates=['"{text}"'], max_words=1)


@pytest.mark.parametrize("name", ["prompts.jsonl", "prompts.txt"])
def test_write_and_load_round_trip(tmp_path: Path, name: str) -> None:
    records = generate_ocr_prompts(50, seed=3)
    path = write_prompts(records, tmp_path / name)
    assert len(path.read_text(encoding="utf-8").splitlines()) == 50
    assert load_ocr_prompts(path) == records


def test_loader_reads_flow_grpo_style_text(tmp_path: Path) -> None:
    path = tmp_path / "test.txt"
    path.write_text(
        'A poster with the text "Hello World" on a wall\n\n  A mug that says "Coffee"  \n', encoding="utf-8"
    )
    assert load_ocr_prompts(path) == [
        {"prompt": 'A poster with the text "Hello World" on a wall', "text": "Hello World"},
        {"prompt": 'A mug that says "Coffee"', "text": "Coffee"},
    ]


def test_loader_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "ocr.txt"
    path.write_text(
        'A sign "OK"\n\n# a comment\nno quotes here\nA sign with ""\nA \u201ccurly\u201d sign\n', encoding="utf-8"
    )
    with pytest.raises(OCRPromptFileError) as info:
        load_ocr_prompts(path)
    message = str(info.value)
    assert "3 OCR prompt(s)" in message
    assert f"{path}:4: no target text" in message and "'no quotes here'" in message
    assert f"{path}:5: the quoted target text is empty" in message
    assert f"{path}:6: " in message and "curly" in message
    with pytest.warns(UserWarning, match=re.escape(f"{path}:4")):
        assert load_ocr_prompts(path, strict=False) == [{"prompt": 'A sign "OK"', "text": "OK"}]


def test_loader_jsonl_text_overrides_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "ocr.jsonl"
    lines = [{"prompt": "a sign with no quotes", "text": "OPEN", "seed": 1}, {"prompt": 'a sign "A"'}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(OCRPromptFileError, match=re.escape(f"{path}:3: invalid JSON")):
        load_ocr_prompts(path)
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    assert load_ocr_prompts(path) == [
        {"prompt": "a sign with no quotes", "text": "OPEN", "seed": 1},
        {"prompt": 'a sign "A"', "text": "A"},
    ]
    path.write_text(json.dumps({"prompt": 'x "A"', "text": ""}) + "\n", encoding="utf-8")
    with pytest.raises(OCRPromptFileError, match=re.escape(f"{path}:1: metadata 'text' is empty")):
        load_ocr_prompts(path)


def test_loader_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(OCRPromptFileError, match="does not exist"):
        load_ocr_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n# nothing\n", encoding="utf-8")
    with pytest.raises(OCRPromptFileError, match="no OCR prompts"):
        load_ocr_prompts(tmp_path / "empty.txt")


def test_main_writes_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sub" / "ocr.jsonl"
    assert main(["--out", str(out), "--n", "40", "--seed", "5"]) == 0
    assert "wrote 40 OCR prompts" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert records == generate_ocr_prompts(40, seed=5)


@pytest.mark.slow
def test_module_command_line(tmp_path: Path) -> None:
    out = tmp_path / "ocr.txt"
    result = subprocess.run(
        [sys.executable, "-m", "tdmr1_rewards.ocr_prompts", "--out", str(out), "--n", "25", "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert [r["prompt"] for r in load_ocr_prompts(out)] == [r["prompt"] for r in generate_ocr_prompts(25, seed=0)]


def test_a_held_out_set_excludes_the_training_targets(tmp_path: Path) -> None:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    assert main(["--out", str(train), "--n", "300", "--seed", "0", "--max-words", "1"]) == 0
    assert main(["--out", str(test), "--n", "100", "--seed", "1", "--max-words", "1", "--exclude", str(train)]) == 0
    trained = {normalise_text(r["text"]) for r in load_ocr_prompts(train)}
    held_out = [normalise_text(r["text"]) for r in load_ocr_prompts(test)]
    assert len(held_out) == 100 and not trained & set(held_out)
    # without the exclusion the same seed draws some training targets
    assert trained & {normalise_text(r["text"]) for r in generate_ocr_prompts(100, seed=1, max_words=1)}
