"""GenEval scorer, case by case against hand-computed values (a fake detector), then the real model paths.

Boxes are ``(x0, y0, x1, y1)`` pixels; y grows downwards, so "above" means a smaller centre y.
"""

from __future__ import annotations

import pytest
import torch
from tdmr1_rewards.detectors import COCO_CLASSES, COLORS, Detection
from tdmr1_rewards.geneval import GenEvalReward, evaluate, geneval_table, relative_position, select_objects


def det(label: str, score: float = 0.95, box=(0, 0, 10, 10), color: str | None = None, mask=None) -> Detection:
    return Detection(label=label, score=score, box=tuple(float(v) for v in box), mask=mask, color=color)


def dogs(k: int, score: float = 0.95) -> list[Detection]:
    return [det("dog", score, (20 * i, 0, 20 * i + 10, 10)) for i in range(k)]


class FakeDetector:
    """Returns the detections it was given, one list per image."""

    classes = list(COCO_CLASSES)

    def __init__(self, per_image: list[list[Detection]]):
        self.per_image = per_image
        self.calls = 0
        self.devices: list[torch.device] = []

    def detect(self, images):
        self.calls += 1
        assert images.shape[0] == len(self.per_image)
        return [list(d) for d in self.per_image]

    def to(self, device):
        self.devices.append(torch.device(device))
        return self


class FakeColors:
    """Names every crop with a fixed colour per object name, and records what it was shown."""

    def __init__(self, colors: dict[str, str]):
        self.colors = colors
        self.seen: list[tuple[torch.Tensor, str]] = []

    def classify(self, crops, object_names):
        self.seen.extend(zip(crops, object_names))
        return [self.colors[name] for name in object_names]


SINGLE2 = {"tag": "single_object", "include": [{"class": "dog", "count": 2}]}
COUNT3 = {"tag": "counting", "include": [{"class": "dog", "count": 3}], "exclude": [{"class": "dog", "count": 4}]}


def position(relation: str) -> dict:
    """GenEval's 'a photo of a cat <relation> a dog'."""
    return {
        "tag": "position",
        "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": [relation, 0]}],
    }


# ------------------------------------------------------------------------------------------- counts


@pytest.mark.parametrize(
    "k, correct, soft",
    [
        (2, True, 1.0),  # exact
        (3, True, 0.5),  # over: GenEval accepts >= count with no exclude; soft 1 - 1/2
        (1, False, 0.5),  # under: 1 - 1/2
        (0, False, 0.0),
        (4, True, 0.0),  # 1 - 2/2
        (5, True, 0.0),  # 1 - 3/2 = -0.5 clipped to 0 (Flow-GRPO would give -0.5)
    ],
)
def test_count_terms(k, correct, soft):
    out = evaluate(dogs(k), SINGLE2)
    assert out["correct"] is correct
    assert out["soft"] == pytest.approx(soft)
    assert out["soft"] >= 0.0


def test_under_count_reason():
    assert evaluate(dogs(1), SINGLE2)["reasons"] == ["expected dog>=2, found 1"]


@pytest.mark.parametrize(
    "k, correct, soft",
    [
        (3, True, 1.0),
        (4, False, (2 / 3 + 0.0) / 2),  # exclude {dog, 4} violated: it counts 0
        (2, False, (2 / 3 + 1.0) / 2),
        (7, False, 0.0),  # count term 1 - 4/3 clipped; exclude violated
    ],
)
def test_counting_prompts_are_exact_through_the_exclude(k, correct, soft):
    out = evaluate(dogs(k), COUNT3)
    assert out["correct"] is correct
    assert out["soft"] == pytest.approx(soft)


def test_counting_threshold_is_0_9():
    detections = dogs(3, 0.95) + dogs(2, 0.85)
    assert evaluate(detections, COUNT3)["correct"] is True  # only the three above 0.9 count
    other = {**COUNT3, "tag": "single_object"}  # the same clauses with the ordinary 0.3 threshold
    out = evaluate(detections, other)
    assert out["correct"] is False and out["reasons"] == ["expected dog<4, found 5"]
    assert evaluate(detections, COUNT3, counting_threshold=0.8)["correct"] is False


def test_threshold_is_strict_and_0_3():
    meta = {"tag": "single_object", "include": [{"class": "dog", "count": 1}]}
    assert evaluate([det("dog", 0.3)], meta)["correct"] is False  # > 0.3, not >=
    assert evaluate([det("dog", 0.31)], meta)["correct"] is True
    assert evaluate([det("dog", 0.31)], meta, threshold=0.5)["correct"] is False


def test_max_objects_per_class():
    meta = {
        "tag": "single_object",
        "include": [{"class": "dog", "count": 16}],
        "exclude": [{"class": "dog", "count": 17}],
    }
    many = dogs(20, 0.5)
    out = evaluate(many, meta)  # 20 detected, only 16 kept: the exclude cannot trigger
    assert out["correct"] is True and out["soft"] == 1.0
    assert len(select_objects(many, "single_object")["dog"]) == 16
    out = evaluate(many, meta, max_objects=10)
    assert out["correct"] is False
    assert out["soft"] == pytest.approx((1 - 6 / 16 + 1.0) / 2)


def test_max_objects_keeps_the_most_confident():
    scores = [0.4, 0.9, 0.6, 0.8]
    kept = select_objects([det("dog", s) for s in scores], "two_object", max_objects=2)["dog"]
    assert [d.score for d in kept] == [0.9, 0.8]


def test_no_nms_overlapping_boxes_all_count():
    same_place = [det("dog", 0.9, (0, 0, 10, 10)), det("dog", 0.8, (0, 0, 10, 10))]
    assert evaluate(same_place, SINGLE2)["correct"] is True


def test_other_classes_do_not_count():
    assert evaluate([det("cat"), det("cat")], SINGLE2)["correct"] is False


# ------------------------------------------------------------------------------------------ colours

RED_CAR = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}


def test_colour_right_and_wrong():
    assert evaluate([det("car", color="red")], RED_CAR) == {
        "correct": True,
        "soft": 1.0,
        "reasons": [],
        "terms": [("include[0] count", 1.0), ("include[0] color", 1.0)],
    }
    wrong = evaluate([det("car", color="blue")], RED_CAR)
    assert wrong["correct"] is False and wrong["soft"] == pytest.approx(0.5)
    assert wrong["reasons"] == ["expected red car>=1, found 0 red; and 1 blue"]
    none = evaluate([], RED_CAR)  # nothing found: the colour term is still there and earns 0
    assert none["correct"] is False and none["soft"] == 0.0 and len(none["terms"]) == 2


def test_colour_checked_on_the_most_confident_only():
    top_red = [det("car", 0.9, color="red"), det("car", 0.8, (20, 0, 30, 10), color="blue")]
    out = evaluate(top_red, RED_CAR)
    assert out["correct"] is True
    assert out["soft"] == pytest.approx((0.0 + 1.0) / 2)  # count 1 - |1-2|/1 = 0, colour 1
    top_blue = [det("car", 0.9, color="blue"), det("car", 0.8, (20, 0, 30, 10), color="red")]
    assert evaluate(top_blue, RED_CAR)["correct"] is False


def test_colour_term_with_several_objects():
    meta = {"tag": "colors", "include": [{"class": "car", "count": 3, "color": "red"}]}
    cars = [det("car", 0.9, color="red"), det("car", 0.8, color="blue"), det("car", 0.7, color="red")]
    out = evaluate(cars, meta)
    assert out["correct"] is False
    assert out["soft"] == pytest.approx((1.0 + (1 - 1 / 3)) / 2)
    two = evaluate(cars[:2], meta)  # k = 2 < 3: count 2/3, colour m = 1 -> 1/3
    assert two["soft"] == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_color_attr_two_clauses():
    meta = {
        "tag": "color_attr",
        "include": [{"class": "car", "count": 1, "color": "red"}, {"class": "cup", "count": 1, "color": "blue"}],
    }
    assert evaluate([det("car", color="red"), det("cup", color="blue")], meta)["correct"] is True
    swapped = evaluate([det("car", color="blue"), det("cup", color="red")], meta)
    assert swapped["correct"] is False and swapped["soft"] == pytest.approx(0.5)


def test_colour_clause_needs_classified_detections():
    with pytest.raises(ValueError, match="no colour"):
        evaluate([det("car")], RED_CAR)


# ---------------------------------------------------------------------------------------- positions

LEFT, RIGHT = (0, 40, 20, 60), (60, 40, 80, 60)
TOP, BOTTOM = (40, 0, 60, 20), (40, 60, 60, 80)
PLACEMENT = {"left of": (LEFT, RIGHT), "right of": (RIGHT, LEFT), "above": (TOP, BOTTOM), "below": (BOTTOM, TOP)}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@pytest.mark.parametrize("relation", ["left of", "right of", "above", "below"])
def test_each_relation_true(relation):
    cat_box, dog_box = PLACEMENT[relation]
    out = evaluate([det("cat", box=cat_box), det("dog", box=dog_box)], position(relation))
    assert out["correct"] is True and out["soft"] == 1.0
    assert relative_position(cat_box, dog_box) == {relation}


@pytest.mark.parametrize("relation", ["left of", "right of", "above", "below"])
def test_each_relation_false_earns_0_not_0_5(relation):
    cat_box, dog_box = PLACEMENT[OPPOSITE[relation]]
    out = evaluate([det("cat", box=cat_box), det("dog", box=dog_box)], position(relation))
    assert out["correct"] is False
    assert out["terms"][-1] == ("include[1] position", 0.0)
    assert out["soft"] == pytest.approx(2 / 3)  # (1 + 1 + 0) / 3; Flow-GRPO's extra 1.0 would make it 0.75
    assert out["reasons"] == [f"expected cat {relation} target, found {OPPOSITE[relation]} target"]


def test_relative_position_by_hand():
    # offset -30 in x; 0.1 x (10 + 10) = 2 ignored -> revised -28; / 30 = -0.93 -> left of
    assert relative_position((0, 0, 10, 10), (30, 0, 40, 10)) == {"left of"}
    # diagonal: offset (-10, -10), ignored 0.4 each -> (-9.6, -9.6) / 14.14 = -0.68 on both axes
    assert relative_position((0, 0, 2, 2), (10, 10, 12, 12)) == {"left of", "above"}
    # mostly horizontal: offset (-30, -10): dy = -(10 - 2) / 31.6 = -0.25 -> not above
    assert relative_position((0, 0, 10, 10), (30, 10, 40, 20)) == {"left of"}
    assert relative_position((0, 0, 10, 10), (0, 0, 10, 10)) == set()


def test_position_threshold():
    cat, dog = (0, 0, 10, 10), (3, 0, 13, 10)  # centres 3 px apart, boxes 10 + 10 wide
    # 0.1 x 20 = 2 ignored: revised offset -1, / 3 = -0.33 -> no relation
    assert relative_position(cat, dog) == set()
    assert evaluate([det("cat", box=cat), det("dog", box=dog)], position("left of"))["correct"] is False
    # no threshold: -3 / 3 = -1 -> left of
    assert relative_position(cat, dog, position_threshold=0.0) == {"left of"}
    assert (
        evaluate([det("cat", box=cat), det("dog", box=dog)], position("left of"), position_threshold=0.0)["correct"]
        is True
    )
    # 5 px apart: (5 - 2) / 5 = 0.6 > 0.5 -> left of with the default threshold
    assert relative_position(cat, (5, 0, 15, 10)) == {"left of"}
    # a larger threshold swallows it: 0.2 x 20 = 4 -> 1 / 5 = 0.2
    assert relative_position(cat, (5, 0, 15, 10), position_threshold=0.2) == set()


def test_position_without_target():
    out = evaluate([det("cat", box=LEFT)], position("left of"))
    assert out["correct"] is False
    assert out["reasons"] == ["expected dog>=1, found 0", "no target for cat to be left of"]
    assert out["soft"] == pytest.approx((0.0 + 1.0 + 0.0) / 3)


def test_relation_between_every_object_and_every_target():
    meta = {
        "tag": "position",
        "include": [{"class": "dog", "count": 2}, {"class": "cat", "count": 1, "position": ["left of", 0]}],
    }
    cat = det("cat", box=(0, 40, 10, 50))
    assert evaluate([cat, det("dog", 0.9, (50, 0, 60, 10)), det("dog", 0.8, (50, 80, 60, 90))], meta)["correct"] is True
    # one of the two dogs is left of the cat: the cat is not left of every dog
    out = evaluate([cat, det("dog", 0.9, (50, 0, 60, 10)), det("dog", 0.8, (-50, 40, -40, 50))], meta)
    assert out["correct"] is False and out["terms"][-1] == ("include[1] position", 0.0)
    # only the `count` most confident are checked: a third, low-confidence dog on the wrong side is ignored
    three = [
        cat,
        det("dog", 0.9, (50, 0, 60, 10)),
        det("dog", 0.8, (50, 80, 60, 90)),
        det("dog", 0.5, (-50, 40, -40, 50)),
    ]
    assert evaluate(three, meta)["correct"] is True


# ----------------------------------------------------------------------------------------- excludes


def test_exclude_clause():
    meta = {"tag": "two_object", "include": [{"class": "dog", "count": 1}], "exclude": [{"class": "cat", "count": 2}]}
    out = evaluate([det("dog"), det("cat")], meta)
    assert (out["correct"], out["soft"], out["reasons"]) == (True, 1.0, [])
    out = evaluate([det("dog"), det("cat"), det("cat", 0.5)], meta)
    assert out["correct"] is False and out["soft"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert out["reasons"] == ["expected cat<2, found 2"]


# --------------------------------------------------------------------------------------------- table


def test_geneval_table_is_the_mean_over_tags():
    tags = ["counting"] * 4 + ["colors"] * 2
    table = geneval_table(tags, [True, True, False, False, True, True])
    assert table["per_tag"] == {"counting": 0.5, "colors": 1.0}
    assert table["overall"] == pytest.approx(0.75)  # not the image mean 4/6
    assert table["num_images"] == {"counting": 4, "colors": 2}
    assert geneval_table(["a", "b"], torch.tensor([1.0, 0.0]))["overall"] == 0.5
    with pytest.raises(ValueError, match="2 tags but 1"):
        geneval_table(["a", "b"], [True])
    with pytest.raises(ValueError, match="no results"):
        geneval_table([], [])


# ------------------------------------------------------------------------------------------ validate


def _meta_with(**changes):
    meta = {
        "tag": "position",
        "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}],
    }
    meta.update(changes)
    return meta


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"include": [{"class": "dog", "count": 1}]}, "missing field 'tag'"),
        ({"tag": "colors"}, "missing field 'include'"),
        (_meta_with(tag="count"), "field 'tag' is 'count'"),
        (_meta_with(include=[]), "field 'include' must be a non-empty list"),
        (_meta_with(include=[{"class": "dog"}]), r"include\[0\] is missing field 'count'"),
        (_meta_with(include=[{"count": 1}]), r"include\[0\] is missing field 'class'"),
        (_meta_with(include=[{"class": "dog", "count": 0}]), r"include\[0\] field 'count' must be an integer >= 1"),
        (
            _meta_with(include=[{"class": "unicorn", "count": 1}]),
            r"include\[0\] class 'unicorn' is not a class of the detector",
        ),
        (_meta_with(include=[{"class": "dog", "count": 1, "color": "teal"}]), r"include\[0\] field 'color' is 'teal'"),
        (
            _meta_with(include=[{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["near", 0]}]),
            r"include\[1\] position relation 'near'",
        ),
        (
            _meta_with(
                include=[{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 1]}]
            ),
            r"include\[1\] position index 1 must point to an earlier include clause",
        ),
        (
            _meta_with(include=[{"class": "dog", "count": 1, "position": ["left of", 0]}]),
            r"include\[0\] position index 0",
        ),
        (_meta_with(exclude=[{"class": "dog"}]), r"exclude\[0\] is missing field 'count'"),
        ("tag=colors", "metadata is a str, not a mapping"),
    ],
)
def test_validate_names_prompt_index_text_and_field(bad, match):
    reward = GenEvalReward(detector=FakeDetector([]))
    good = _meta_with()
    with pytest.raises(ValueError, match=r"prompt 1 'a photo of a cat left of a dog': " + match):
        reward.validate(["a photo of a dog", "a photo of a cat left of a dog"], [good, bad])


def test_validate_accepts_geneval_metadata_with_the_default_detector_offline():
    reward = GenEvalReward()  # nothing is loaded: the default detector's classes are known
    reward.validate(["a photo of a cat left of a dog", "a photo of three dogs"], [_meta_with(), COUNT3])
    with pytest.raises(ValueError, match="prompt 0 'x': include.0. class 'unicorn'"):
        reward.validate(["x"], [{"tag": "single_object", "include": [{"class": "unicorn", "count": 1}]}])


def test_validate_uses_the_detector_classes():
    small = FakeDetector([])
    small.classes = ["dog"]
    reward = GenEvalReward(detector=small)
    reward.validate(["a dog"], [{"tag": "single_object", "include": [{"class": "dog", "count": 1}]}])
    with pytest.raises(ValueError, match="class 'cat' is not a class of the detector"):
        reward.validate(["a cat"], [{"tag": "single_object", "include": [{"class": "cat", "count": 1}]}])


def test_constructor_checks_arguments():
    for kwargs, match in [
        ({"mode": "lenient"}, "mode"),
        ({"threshold": 1.0}, "threshold"),
        ({"counting_threshold": -0.1}, "counting_threshold"),
        ({"max_objects": 0}, "max_objects"),
        ({"position_threshold": -1}, "position_threshold"),
    ]:
        with pytest.raises(ValueError, match=match):
            GenEvalReward(detector=FakeDetector([]), **kwargs)
    with pytest.raises(TypeError, match="detect"):
        GenEvalReward(detector=object())


# ----------------------------------------------------------------------------------- reward (fake)


def test_reward_scores_modes_and_details():
    images = torch.full((3, 3, 64, 64), 200, dtype=torch.uint8)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[10:20, 10:30] = True
    per_image = [
        [det("car", 0.9, (10, 10, 30, 20), mask=mask)],  # classified red by the fake classifier
        dogs(4),
        [det("cat", box=LEFT), det("dog", box=RIGHT)],
    ]
    metas = [RED_CAR, COUNT3, position("left of")]
    prompts = ["a photo of a red car", "a photo of three dogs", "a photo of a cat left of a dog"]
    colors = FakeColors({"car": "red"})
    soft = GenEvalReward(detector=FakeDetector(per_image), color_classifier=colors)
    out = soft(images, prompts, metas)
    assert out.scores.tolist() == pytest.approx([1.0, (1 - 1 / 3 + 0) / 2, 1.0])
    assert out.valid.all()
    assert out.details["correct"].tolist() == [1.0, 0.0, 1.0]
    assert out.details["soft"].tolist() == pytest.approx(out.scores.tolist())
    assert out.details["tag"] == ["colors", "counting", "position"]
    assert out.details["reasons"][1] == "expected dog<4, found 4"
    # one crop: the car's box, its mask pasted on grey #999999
    assert len(colors.seen) == 1
    crop, name = colors.seen[0]
    assert name == "car" and crop.dtype == torch.uint8 and crop.shape == (3, 10, 20)
    assert (crop == 200).all()  # the box is exactly the mask here
    strict = GenEvalReward(detector=FakeDetector(per_image), color_classifier=FakeColors({"car": "red"}), mode="strict")
    assert strict(images, prompts, metas).scores.tolist() == [1.0, 0.0, 1.0]


def test_reward_crop_pastes_the_mask_on_grey():
    images = torch.full((1, 3, 32, 32), 10, dtype=torch.uint8)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[4:8, 4:8] = True
    colors = FakeColors({"car": "blue"})
    reward = GenEvalReward(
        detector=FakeDetector([[det("car", 0.9, (2, 2, 10, 10), mask=mask)]]), color_classifier=colors
    )
    out = reward(images, ["a red car"], [RED_CAR])
    assert out.details["correct"].tolist() == [0.0] and out.scores.tolist() == [0.5]
    crop = colors.seen[0][0]
    assert crop.shape == (3, 8, 8)
    assert (crop[:, 2:6, 2:6] == 10).all()
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:6, 2:6] = False
    assert (crop[:, outside] == 153).all()


def test_reward_classifies_only_what_a_colour_clause_needs():
    colors = FakeColors({"car": "red", "cup": "red"})
    per_image = [[det("car", 0.9), det("car", 0.8), det("car", 0.2), det("cup", 0.9)], [det("car", 0.9, color="red")]]
    reward = GenEvalReward(detector=FakeDetector(per_image), color_classifier=colors)
    out = reward(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), ["a red car", "a red car"], [RED_CAR, RED_CAR])
    assert [name for _, name in colors.seen] == ["car"]  # top-1 car of image 0; image 1's car came coloured
    assert out.details["correct"].tolist() == [1.0, 1.0]


def test_reward_masks_out_invalid_metadata_at_score_time():
    reward = GenEvalReward(detector=FakeDetector([dogs(2), dogs(2)]))
    with pytest.warns(RuntimeWarning, match="1 of 2 samples have invalid metadata"):
        out = reward(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), ["two dogs", "?"], [SINGLE2, {"tag": "counting"}])
    assert out.valid.tolist() == [True, False]
    assert out.scores.tolist() == [1.0, 0.0]
    assert out.details["reasons"][1] == "invalid metadata: missing field 'include'"


def test_reward_moves_its_parts():
    fake = FakeDetector([])
    GenEvalReward(detector=fake).to("cpu")
    assert fake.devices == [torch.device("cpu")]


def test_docstring_first_line_for_the_listing():
    first = GenEvalReward.__doc__.strip().splitlines()[0]
    assert first.startswith("GenEval") and len(first) < 110
    assert "mode:" in GenEvalReward.__doc__ and "counting_threshold:" in GenEvalReward.__doc__


# --------------------------------------------------------------------------------- real model paths


def test_real_stack_end_to_end(tiny_mask2former, tiny_clip):
    from tdmr1_rewards.detectors import CLIPColorClassifier, Mask2FormerDetector

    class Spy(CLIPColorClassifier):
        calls = 0

        def classify(self, crops, object_names):
            Spy.calls += 1
            out = super().classify(crops, object_names)
            assert len(out) == len(crops) and all(c in COLORS for c in out)
            return out

    reward = GenEvalReward(
        detector=Mask2FormerDetector(str(tiny_mask2former)),
        color_classifier=Spy(tiny_clip, pretrained=None),
        threshold=0.0,  # random weights: keep every detection so that colours are classified
        counting_threshold=0.0,
    )
    metas = [
        {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}]},
        {
            "tag": "color_attr",
            "include": [
                {"class": "cat", "count": 1, "color": "blue"},
                {"class": "computer mouse", "count": 1, "color": "white"},
            ],
        },
    ]
    prompts = ["a photo of a red dog", "a photo of a blue cat and a white computer mouse"]
    reward.validate(prompts, metas)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8, generator=generator)
    out = reward(images, prompts, metas)
    assert out.scores.shape == (2,) and out.valid.all()
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    assert set(out.details) >= {"correct", "soft", "reasons", "tag"}
    assert Spy.calls == 1
