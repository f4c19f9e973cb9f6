"""Detector and colour-classifier code paths, with tiny random models (no hub access)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tdmr1_rewards.detectors import (
    COCO_CLASSES,
    COLOR_TEMPLATES,
    COLORS,
    CLIPColorClassifier,
    ColorClassifier,
    Detection,
    Detector,
    Mask2FormerDetector,
    boxes_from_masks,
    canonical_label,
    masked_crop,
)

# ----------------------------------------------------------------------------------------- labels


def test_coco_classes_are_geneval_names():
    assert len(COCO_CLASSES) == 80 == len(set(COCO_CLASSES))
    assert {"computer mouse", "tv remote", "computer keyboard", "hair drier", "tv"} <= set(COCO_CLASSES)
    assert not {"mouse", "remote", "keyboard"} & set(COCO_CLASSES)
    assert COLORS == ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")


@pytest.mark.parametrize(
    "raw, name",
    [
        ("mouse", "computer mouse"),
        ("remote", "tv remote"),
        ("keyboard", "computer keyboard"),
        ("Dining_Table", "dining table"),
        ("tvmonitor", "tv"),
        ("sofa", "couch"),
        ("potted-plant", "potted plant"),
        ("dog", "dog"),
    ],
)
def test_canonical_label(raw, name):
    assert canonical_label(raw) == name


# ------------------------------------------------------------------------------------------- crops


def test_masked_crop_pastes_the_mask_on_grey_and_crops_the_box():
    image = torch.arange(3 * 6 * 8, dtype=torch.uint8).view(3, 6, 8)
    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[2:4, 3:5] = True
    crop = masked_crop(image, Detection("cup", 0.9, (2.0, 1.0, 6.0, 5.0), mask))
    assert crop.shape == (3, 4, 4)
    assert torch.equal(crop[:, 1:3, 1:3], image[:, 2:4, 3:5])
    keep = torch.zeros(4, 4, dtype=torch.bool)
    keep[1:3, 1:3] = True
    assert (crop[:, ~keep] == 153).all()
    white = masked_crop(image, Detection("cup", 0.9, (2.0, 1.0, 6.0, 5.0), mask), background="#fff")
    assert (white[:, ~keep] == 255).all()


def test_masked_crop_without_mask_rounds_and_clips_the_box():
    image = torch.randint(0, 256, (3, 10, 10), dtype=torch.uint8)
    crop = masked_crop(image, Detection("cup", 0.9, (-3.0, 2.4, 12.0, 7.6)))
    assert torch.equal(crop, image[:, 2:8, 0:10])
    assert masked_crop(image, Detection("cup", 0.9, (5.0, 5.0, 5.0, 5.0))).shape == (3, 1, 1)  # never empty


def test_masked_crop_rejects_bad_inputs():
    image = torch.zeros(3, 10, 10, dtype=torch.uint8)
    with pytest.raises(ValueError, match="mask of shape"):
        masked_crop(image, Detection("cup", 0.9, (0, 0, 5, 5), torch.zeros(5, 5, dtype=torch.bool)))
    with pytest.raises(ValueError, match="uint8 image"):
        masked_crop(image.float(), Detection("cup", 0.9, (0, 0, 5, 5)))


def test_boxes_from_masks():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    masks[1, 9, 11] = True
    boxes = boxes_from_masks(masks)
    assert boxes.tolist() == [[3, 2, 7, 5], [11, 9, 12, 10], [0, 0, 0, 0]]  # exclusive ends; empty -> zeros
    assert boxes_from_masks(torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0, 4)


# -------------------------------------------------------------------------------------- Mask2Former


def test_mask2former_classes_without_loading(tiny_mask2former):
    custom = Mask2FormerDetector(str(tiny_mask2former))
    assert custom.classes == ["dog", "cat", "computer mouse"]  # from config.json only
    assert custom.model is None
    default = Mask2FormerDetector()
    assert default.classes == list(COCO_CLASSES) and default.model is None
    assert isinstance(custom, Detector)


@pytest.mark.slow
def test_mask2former_detects_on_non_square_images(tiny_mask2former):
    detector = Mask2FormerDetector(str(tiny_mask2former), batch_size=2)
    images = torch.randint(0, 256, (2, 3, 48, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    results = detector.detect(images)
    assert len(results) == 2
    assert sum(len(r) for r in results) > 0  # random weights, but with 3 classes some pass min_score 0
    for dets in results:
        scores = [d.score for d in dets]
        assert scores == sorted(scores, reverse=True)
        for d in dets:
            assert isinstance(d, Detection) and d.label in detector.classes and d.color is None
            assert 0.0 < d.score <= 1.0
            assert d.mask.dtype == torch.bool and d.mask.shape == (48, 80) and d.mask.any()
            assert list(d.box) == boxes_from_masks(d.mask[None])[0].tolist()
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 48
    # batching does not change the result
    detector.batch_size = 1
    one_by_one = detector.detect(images)
    assert [[(d.label, round(d.score, 4), d.box) for d in r] for r in one_by_one] == [
        [(d.label, round(d.score, 4), d.box) for d in r] for r in results
    ]
    # a floor above every score leaves nothing; resize to another input size still runs
    detector.min_score = 0.99
    assert detector.detect(images) == [[], []]
    detector.min_score, detector.resize = 0.0, 32
    resized = detector.detect(images[:1])
    assert all(d.mask.shape == (48, 80) for d in resized[0])


def test_mask2former_postprocess_geometry(tiny_mask2former):
    """A known mask in the valid (unpadded) part of the network input lands at the right place in the image."""
    detector = Mask2FormerDetector(str(tiny_mask2former), min_score=0.01)  # drops the ~1e-9 pairs of query 0
    detector.load()
    # image 40 x 80 resized to 32 x 64, padded to 64 x 128; mask logits at 1/4: 16 x 32, valid 8 x 16
    class_logits = torch.full((2, 4), -10.0)
    class_logits[0, 1] = 10.0  # query 0: "cat", almost sure
    mask_logits = torch.full((2, 16, 32), -20.0)
    mask_logits[0, 0:4, 8:16] = 20.0  # top half, right half of the valid region
    dets = detector._postprocess(class_logits, mask_logits, padded=(64, 128), valid=(32, 64), size=(40, 80))
    assert [d.label for d in dets] == ["cat"]
    x0, y0, x1, y1 = dets[0].box
    assert abs(x0 - 40) <= 3 and abs(x1 - 80) <= 1 and abs(y0 - 0) <= 1 and abs(y1 - 20) <= 3
    assert dets[0].score == pytest.approx(1.0, abs=1e-2)  # boundary pixels lower the mean mask probability a little


def test_mask2former_to_moves_the_model(tiny_mask2former):
    detector = Mask2FormerDetector(str(tiny_mask2former))
    detector.load()
    assert detector.to("cpu") is detector and next(detector.model.parameters()).device.type == "cpu"


# ---------------------------------------------------------------------------------------------- CLIP


def test_clip_classifier_returns_geneval_colours(tiny_clip):
    clf = CLIPColorClassifier(tiny_clip, pretrained=None, batch_size=2)
    assert isinstance(clf, ColorClassifier)
    g = torch.Generator().manual_seed(0)
    crops = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in [(5, 7), (40, 20), (1, 1)]]
    colors = clf.classify(crops, ["dog", "cup", "dog"])
    assert len(colors) == 3 and all(c in COLORS for c in colors)
    assert clf.classify([], []) == []
    with pytest.raises(ValueError, match="2 crops but 1"):
        clf.classify(crops[:2], ["dog"])


def test_clip_text_weights_average_the_three_templates(tiny_clip):
    clf = CLIPColorClassifier(tiny_clip, pretrained=None)
    weights = clf.text_weights("car")
    assert weights.shape == (16, 10)
    assert torch.allclose(weights.norm(dim=0), torch.ones(10), atol=1e-5)
    assert clf.text_weights("car") is weights  # cached per object
    with torch.no_grad():
        texts = [t.format(color="orange", object="car") for t in COLOR_TEMPLATES]
        assert texts == ["a photo of a orange car", "a photo of a orange-colored car", "a photo of a orange object"]
        emb = F.normalize(clf.model.encode_text(clf.tokenizer(texts)), dim=-1).mean(0)
    assert torch.allclose(weights[:, COLORS.index("orange")], F.normalize(emb, dim=0), atol=1e-5)


def test_clip_classifier_picks_the_most_similar_colour(tiny_clip):
    clf = CLIPColorClassifier(tiny_clip, pretrained=None)
    crop = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    (color,) = clf.classify([crop], ["dog"])
    from PIL import Image

    with torch.no_grad():
        feat = F.normalize(
            clf.model.encode_image(clf.preprocess(Image.fromarray(crop.permute(1, 2, 0).numpy()))[None]), dim=-1
        )
    assert color == COLORS[int((feat @ clf.text_weights("dog")).argmax())]
