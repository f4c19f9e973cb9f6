"""The reward learnt from a CSV of human labels, on a tiny random-weight open_clip model (no network).

The synthetic judgments are learnable from the pixels: red-ish images are liked and blue-ish ones
disliked (or, for the interaction test, liked when their colour matches the prompt). The frozen
features come from a *random* tiny CLIP -- no stub: random patch embeddings keep enough of the
colour statistics for a linear model to separate them, which the tests check on held-out images.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

pytest.importorskip("open_clip")
from PIL import Image  # noqa: E402
from tdmr1_rewards import _clip  # noqa: E402
from tdmr1_rewards.human_csv import HumanCSVError, HumanCSVReward, read_image, read_labels  # noqa: E402

from tdmr1_lightning.reward import Reward  # noqa: E402

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PROMPTS = ["a cat", "a dog on a beach", "a red apple", "a car"]


def _picture(red: bool, g: torch.Generator, size: tuple[int, int] = (24, 24)) -> torch.Tensor:
    base = torch.tensor([200.0, 40.0, 40.0]) if red else torch.tensor([40.0, 40.0, 200.0])
    return (base.view(3, 1, 1) + 60 * torch.randn(3, *size, generator=g)).clamp(0, 255).to(torch.uint8)


def _save(t: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(t.permute(1, 2, 0).numpy()).save(path)


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def liked_red(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 labelled images (red liked, blue disliked, sizes vary), 4 prompts, mixed label spellings."""
    root = tmp_path_factory.mktemp("liked_red")
    g = torch.Generator().manual_seed(0)
    rows = []
    spell = [("like", "dislike"), ("1", "0"), ("Yes", "no"), ("TRUE", "false")]
    for i in range(40):
        red = i % 2 == 0
        _save(_picture(red, g, (24 + i % 3 * 8, 24)), root / "imgs" / f"{i}.png")
        rows.append(f'"{PROMPTS[(i // 2) % 4]}",imgs/{i}.png,{spell[i % 4][0 if red else 1]}')
    return _write_csv(root / "labels.csv", "prompt,image,label", rows)


def _reward(csv: Path, **kw) -> HumanCSVReward:
    return HumanCSVReward(str(csv), model=TINY, pretrained=None, **kw)


# ----------------------------------------------------------------------------------------- learning
def test_fitted_reward_ranks_held_out_likes_above_dislikes(liked_red: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(liked_red.parent.parent)  # relative image paths resolve against the CSV, not the cwd
    reward = _reward(liked_red, cache_features=False)
    assert isinstance(reward, Reward) and reward.head is None  # nothing loaded when built
    g = torch.Generator().manual_seed(99)  # new images, never labelled
    images = torch.stack([_picture(i % 2 == 0, g, (32, 40)) for i in range(12)])
    out = reward(images, [PROMPTS[i % 4] for i in range(12)])
    assert out.scores.shape == (12,) and out.valid.shape == (12,) and out.valid.all()
    assert ((out.scores >= 0) & (out.scores <= 1)).all()  # a probability of a like
    liked, disliked = out.scores[0::2], out.scores[1::2]
    assert liked.min() > disliked.max()
    assert liked.min() > 0.5 > disliked.max()
    report = reward.fit_report
    assert report["rows"] == 40 and report["likes"] == 20 and report["dislikes"] == 20
    assert report["holdout_rows"] == 8 and report["train_rows"] == 32
    assert report["train_accuracy"] == 1.0 and report["holdout_accuracy"] == 1.0


def test_fit_is_deterministic_and_copies_keep_the_fit(liked_red: Path) -> None:
    a, b = _reward(liked_red, cache_features=False), _reward(liked_red, cache_features=False)
    images = torch.stack([_picture(i % 2 == 0, torch.Generator().manual_seed(i)) for i in range(4)])
    sa, sb = a(images, PROMPTS).scores, b(images, PROMPTS).scores
    assert torch.equal(sa, sb) and a.fit_report == b.fit_report
    assert torch.equal(a.head.linear.weight, b.head.linear.weight)
    clone = copy.deepcopy(a)  # the shared CLIP is not copied; the fitted head is
    assert not clone.encoder_loaded and clone.head is not None
    assert torch.equal(clone(images, PROMPTS).scores, sa)


def test_prompt_dependent_likes_need_prompt_features(tmp_path: Path) -> None:
    """Red liked for one prompt and blue for the other: ``image_product`` learns it, ``image`` cannot."""
    g = torch.Generator().manual_seed(1)
    prompts = ["a red ball", "a blue ball"]
    rows = []
    for i in range(64):
        red, p = (i // 2) % 2 == 0, i % 2
        _save(_picture(red, g), tmp_path / f"{i}.png")
        rows.append(f"{prompts[p]},{i}.png,{int(red == (p == 0))}")
    csv = _write_csv(tmp_path / "xor.csv", "prompt,image,label", rows)
    images = torch.stack([_picture(i % 2 == 0, g) for i in range(16)])
    test_prompts = [prompts[(i // 2) % 2] for i in range(16)]
    truth = torch.tensor([(i % 2 == 0) == ((i // 2) % 2 == 0) for i in range(16)])
    product = _reward(csv, cache_features=False)
    assert ((product(images, test_prompts).scores > 0.5) == truth).all()
    image_only = _reward(csv, features="image", cache_features=False)
    assert ((image_only(images, test_prompts).scores > 0.5) == truth).float().mean() < 0.8


def test_score_column_ridge_regression(tmp_path: Path) -> None:
    """A float ``score`` column (here: the image's redness in [0, 1]) is learnt by ridge regression."""
    g = torch.Generator().manual_seed(2)
    rows = []
    for i in range(48):
        t = torch.rand((), generator=g).item()
        base = torch.tensor([40 + 180 * t, 40.0, 220 - 180 * t])
        img = (base.view(3, 1, 1) + 30 * torch.randn(3, 24, 24, generator=g)).clamp(0, 255).to(torch.uint8)
        _save(img, tmp_path / f"{i}.png")
        rows.append(f"{PROMPTS[i % 4]},{i}.png,{t:.4f}")
    csv = _write_csv(tmp_path / "scores.csv", "prompt,image,score", rows)
    reward = _reward(csv, cache_features=False)
    assert reward.target == "score"
    ts = torch.linspace(0, 1, 9)
    images = torch.stack(
        [
            (torch.tensor([40 + 180 * t, 40.0, 220 - 180 * t]).view(3, 1, 1).expand(3, 24, 24)).to(torch.uint8)
            for t in ts
        ]
    )
    out = reward(images, PROMPTS[:1] * 9)
    assert out.scores.shape == (9,) and out.valid.all()
    rank = torch.corrcoef(torch.stack([out.scores.argsort().argsort().float(), torch.arange(9.0)]))[0, 1]
    assert rank > 0.9
    assert reward.fit_report["holdout_r2"] > 0.5 and reward.fit_report["train_r2"] > 0.8


def test_feature_cache(liked_red: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = liked_red.parent
    for f in folder.glob(".labels.clip-features-*.pt"):
        f.unlink()
    first = _reward(liked_red)
    first.load()
    cached = list(folder.glob(".labels.clip-features-*.pt"))
    assert len(cached) == 1
    # a second reward reads the features from the cache: encoding images would fail now
    encoder = first.encoder
    monkeypatch.setattr(type(encoder), "encode_images", lambda *a, **k: pytest.fail("features recomputed"))
    second = _reward(liked_red)
    second.load()
    assert second.fit_report == first.fit_report
    # another model (or another CSV) uses another cache file
    assert _reward(liked_red, features="image").cache_path == cached[0]  # features do not change CLIP
    other = copy.deepcopy(TINY)
    other["embed_dim"] = 8
    assert HumanCSVReward(str(liked_red), model=other, pretrained=None).cache_path != cached[0]


# ----------------------------------------------------------------------------------------- preference groups
def test_preference_groups(liked_red: Path, tmp_path: Path) -> None:
    groups = _reward(liked_red).preference_groups()
    assert [g.prompt for g in groups] == PROMPTS  # first-appearance order
    for group in groups:
        k = len(group.images)
        assert k == 10 and len(group.lines) == k
        assert group.rewards.shape == group.advantages.shape == (k,)
        assert (group.advantages[group.rewards == 1] > 0).all() and (group.advantages[group.rewards == 0] < 0).all()
        assert abs(float(group.advantages.sum())) < 1e-4
    global_std = _reward(liked_red).preference_groups(std="global", binarize=True)
    assert all(torch.equal(g.advantages > 0, g.rewards == 1) for g in global_std)
    first = groups[0]
    assert first.lines[:2] == [2, 3] and first.images[0].name == "0.png"
    pictures = first.load_images()
    assert pictures[0].dtype == torch.uint8 and pictures[0].shape[0] == 3

    # groups without contrast are left out unless asked for
    _save(_picture(True, torch.Generator().manual_seed(0)), tmp_path / "a.png")
    csv = _write_csv(
        tmp_path / "g.csv", "prompt,image,label", ["p1,a.png,1", "p1,a.png,0", "p2,a.png,1", "p2,a.png,1", "p3,a.png,0"]
    )
    reward = HumanCSVReward(str(csv), model=TINY, pretrained=None)
    assert [g.prompt for g in reward.preference_groups()] == ["p1"]
    everything = reward.preference_groups(include_uniform=True)
    assert [(g.prompt, len(g.images)) for g in everything] == [("p1", 2), ("p2", 2), ("p3", 1)]
    assert all((g.advantages == 0).all() for g in everything[1:])
    assert reward.head is None  # no model needed


# ----------------------------------------------------------------------------------------- bad CSVs
def _error(csv: Path, monkeypatch: pytest.MonkeyPatch, **kw) -> HumanCSVError:
    monkeypatch.setattr(_clip, "_load_open_clip", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(HumanCSVError) as info:
        HumanCSVReward(str(csv), model=TINY, pretrained=None, **kw)
    return info.value


def test_bad_csv_missing_file_empty_and_header_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "file not found" in str(_error(tmp_path / "nope.csv", monkeypatch))
    (tmp_path / "empty.csv").write_text("")
    assert "no header" in str(_error(tmp_path / "empty.csv", monkeypatch))
    (tmp_path / "header.csv").write_text("prompt,image,label\n\n")
    assert "no rows" in str(_error(tmp_path / "header.csv", monkeypatch))


def test_bad_csv_missing_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv = _write_csv(tmp_path / "c.csv", "prompt,picture,rating", ["a,b.png,1"])
    err = _error(csv, monkeypatch)
    assert "missing column(s) image, label" in str(err) and "found prompt, picture, rating" in str(err)
    csv = _write_csv(tmp_path / "s.csv", "prompt,image,label", ["a,b.png,1"])
    assert "missing column(s) score" in str(_error(csv, monkeypatch, target="score"))


def test_bad_csv_lists_every_offending_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(_picture(True, torch.Generator().manual_seed(0)), tmp_path / "ok.png")
    rows = [
        "a,ok.png,like",  # line 2: fine
        "b,missing.png,like",  # line 3: image not found
        "c,ok.png,maybe",  # line 4: unknown label
        ",ok.png,0",  # line 5: empty prompt
        "d,ok.png",  # line 6: too few fields
        '"e, with comma",gone.png,perhaps',  # line 7: two problems
        "f,ok.png,no",  # line 8: fine
    ]
    err = _error(_write_csv(tmp_path / "bad.csv", "prompt,image,label", rows), monkeypatch)
    lines = [line for line, _ in err.problems]
    assert lines == [3, 4, 5, 6, 7, 7]
    msg = str(err)
    assert msg.count("\n") == 7  # one error: a title, a count and the six problems
    assert "line 3: image 'missing.png' not found" in msg and "line 4: unknown label 'maybe'" in msg
    assert "line 5: empty prompt" in msg and "line 6: 2 fields where the header has 3" in msg
    assert "line 2:" not in msg and "line 8:" not in msg


def test_bad_csv_scores_and_long_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(_picture(True, torch.Generator().manual_seed(0)), tmp_path / "ok.png")
    csv = _write_csv(tmp_path / "s.csv", "prompt,image,score", ["a,ok.png,0.5", "a,ok.png,high", "a,ok.png,nan"])
    err = _error(csv, monkeypatch)
    assert [line for line, _ in err.problems] == [3, 4] and "'high' is not a number" in str(err)
    csv = _write_csv(tmp_path / "many.csv", "prompt,image,label", [f"p,img{i}.png,1" for i in range(45)])
    msg = str(_error(csv, monkeypatch))
    assert "45 problem(s) on 45 row(s)" in msg and "... and 25 more" in msg
    assert "line 21:" in msg and "line 22:" not in msg  # the first 20 (lines 2..21) are listed


def test_bad_csv_one_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(_picture(True, torch.Generator().manual_seed(0)), tmp_path / "ok.png")
    csv = _write_csv(tmp_path / "likes.csv", "prompt,image,label", ["a,ok.png,like", "b,ok.png,yes"])
    assert "all labels are likes" in str(_error(csv, monkeypatch))


def test_unreadable_image_is_reported_with_its_line(tmp_path: Path) -> None:
    _save(_picture(True, torch.Generator().manual_seed(0)), tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    csv = _write_csv(tmp_path / "b.csv", "prompt,image,label", ["a,ok.png,1", "a,broken.png,0"])
    reward = HumanCSVReward(str(csv), model=TINY, pretrained=None, cache_features=False)
    with pytest.raises(HumanCSVError, match="line 3: cannot read image"):
        reward(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), ["a"])


def test_read_helpers(liked_red: Path) -> None:
    rows, target = read_labels(liked_red)
    assert target == "label" and len(rows) == 40 and rows[0].line == 2 and rows[0].image.is_absolute()
    assert [r.target for r in rows[:4]] == [1.0, 0.0, 1.0, 0.0]
    img = read_image(rows[0].image)
    assert img.dtype == torch.uint8 and img.shape == (3, 24, 24)
