"""Object detectors and colour classifiers behind the GenEval reward (:mod:`tdmr1_rewards.geneval`).

Two small interfaces keep the scorer independent of any model:

* :class:`Detector`: ``detect(images uint8 (N, 3, H, W)) -> list[list[Detection]]`` (every class, every
  detection above the detector's own floor; the scorer applies GenEval's thresholds) and ``classes``,
  the names it can report.
* :class:`ColorClassifier`: ``classify(crops, object_names) -> list[str]``, one of :data:`COLORS` per crop.

The defaults are the GenEval stack without mmdet: :class:`Mask2FormerDetector` (Mask2Former Swin-S trained
on COCO instances, through ``transformers``) and :class:`CLIPColorClassifier` (CLIP ViT-L/14, OpenAI
weights, through ``open_clip``). Both import their libraries and load their weights lazily, on first use.
:func:`masked_crop` turns a detection into the image the colour classifier sees: the detection's mask
pasted on grey ``#999999``, cropped to its box (GenEval's ``ImageCrops``).

Class names are GenEval's (:data:`COCO_CLASSES`: the 80 COCO classes, with ``computer mouse``,
``tv remote`` and ``computer keyboard`` for COCO's ``mouse``, ``remote`` and ``keyboard``); a model's
own label names are mapped onto them by :func:`canonical_label`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
"""The 10 GenEval colours, in GenEval's order."""

COLOR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {color} {object}",
    "a photo of a {color}-colored {object}",
    "a photo of a {color} object",
)
"""GenEval's zero-shot colour templates; their normalised text embeddings are averaged per colour."""

COCO_CLASSES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "computer mouse",
    "tv remote",
    "computer keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
"""The 80 COCO classes under GenEval's names, in COCO's category order."""

LABEL_ALIASES: dict[str, str] = {
    "mouse": "computer mouse",
    "remote": "tv remote",
    "keyboard": "computer keyboard",
    "tvmonitor": "tv",
    "tv monitor": "tv",
    "television": "tv",
    "sofa": "couch",
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "hair dryer": "hair drier",
    "cellphone": "cell phone",
    "mobile phone": "cell phone",
    "doughnut": "donut",
    "hotdog": "hot dog",
    "ball": "sports ball",
}
"""Other spellings of the COCO classes (COCO's own, Pascal VOC's, ...), mapped to GenEval's names."""

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
GREY = "#999999"


def canonical_label(name: str) -> str:
    """A model's label as a GenEval class name: lower case, ``_``/``-`` as spaces, aliases resolved."""
    key = " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())
    return LABEL_ALIASES.get(key, key)


@dataclass(frozen=True, eq=False)
class Detection:
    """One detected object instance."""

    label: str
    """Class name (GenEval's names, :data:`COCO_CLASSES`, for the default detector)."""
    score: float
    """Confidence in ``[0, 1]``."""
    box: tuple[float, float, float, float]
    """``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive."""
    mask: Tensor | None = None
    """``bool (H, W)`` instance mask at the image's size, or None (the colour crop then keeps the background)."""
    color: str | None = None
    """One of :data:`COLORS` when known (set by the scorer from the colour classifier, or by a detector)."""


@runtime_checkable
class Detector(Protocol):
    """Finds object instances of every class it knows in a batch of images."""

    classes: list[str]
    """The class names this detector can report."""

    def detect(self, images: Tensor) -> list[list[Detection]]:
        """Detections of ``uint8`` images ``(N, 3, H, W)``: one list per image, all classes."""
        ...


@runtime_checkable
class ColorClassifier(Protocol):
    """Names the colour of each object crop, among :data:`COLORS`."""

    def classify(self, crops: list[Tensor], object_names: list[str]) -> list[str]:
        """One colour per ``uint8 (3, h, w)`` crop; ``object_names[i]`` is what crop ``i`` shows."""
        ...


def _parse_color(color: str | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(color, str):
        hexa = color.lstrip("#")
        if len(hexa) == 3:
            hexa = "".join(c * 2 for c in hexa)
        if len(hexa) != 6:
            raise ValueError(f"background colour must be '#rgb' or '#rrggbb', got {color!r}")
        return tuple(int(hexa[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    if len(color) != 3:
        raise ValueError(f"background colour must have 3 channels, got {color!r}")
    return tuple(int(c) for c in color)  # type: ignore[return-value]


def masked_crop(image: Tensor, detection: Detection, background: str | tuple[int, int, int] = GREY) -> Tensor:
    """What the colour classifier sees: the detection's mask pasted on ``background``, cropped to its box.

    ``image`` is ``uint8 (3, H, W)``; returns ``uint8 (3, h, w)`` with at least one pixel. The box is
    rounded to whole pixels and clipped to the image (as PIL's ``crop`` of GenEval rounds it).
    """
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"masked_crop: expected a uint8 image (3, H, W), got {image.dtype} {tuple(image.shape)}")
    _, height, width = image.shape
    if detection.mask is not None:
        mask = detection.mask.to(image.device, torch.bool)
        if tuple(mask.shape) != (height, width):
            raise ValueError(f"masked_crop: mask of shape {tuple(mask.shape)} for an image of {(height, width)}")
        fill = torch.tensor(_parse_color(background), dtype=torch.uint8, device=image.device).view(3, 1, 1)
        image = torch.where(mask.unsqueeze(0), image, fill)
    x0, y0, x1, y1 = (int(round(float(v))) for v in detection.box)
    x0, x1 = min(max(x0, 0), width - 1), min(max(x1, 0), width)
    y0, y1 = min(max(y0, 0), height - 1), min(max(y1, 0), height)
    return image[:, y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)]


def boxes_from_masks(masks: Tensor) -> Tensor:
    """``(K, 4)`` float boxes ``(x0, y0, x1, y1)`` (exclusive ends) enclosing ``bool (K, H, W)`` masks.

    Zeros if empty.
    """
    k, height, width = masks.shape
    boxes = torch.zeros(k, 4, dtype=torch.float32, device=masks.device)
    if k == 0:
        return boxes
    cols = masks.any(dim=1)  # (K, W)
    rows = masks.any(dim=2)  # (K, H)
    nonempty = cols.any(dim=1)
    x0 = cols.float().argmax(dim=1)
    x1 = width - cols.flip(1).float().argmax(dim=1)
    y0 = rows.float().argmax(dim=1)
    y1 = height - rows.flip(1).float().argmax(dim=1)
    boxes[:] = torch.stack([x0, y0, x1, y1], dim=1).float()
    boxes[~nonempty] = 0
    return boxes


class Mask2FormerDetector:
    """Mask2Former instance segmentation through ``transformers`` (default: Swin-S on COCO, GenEval's detector).

    Post-processing follows mmdet's Mask2Former (which GenEval runs): class probabilities without the
    "no object" column, the top ``max_detections`` (query, class) pairs, masks upsampled to the image
    (through the padded network input, so any aspect ratio lines up), binarised at 0.5, score = class
    probability x mean mask probability inside the mask, box = the mask's extent. Empty masks are dropped.

    Args:
        model: Hub id or local folder holding the model and its image processor.
        device: Where the model runs.
        min_score: Detections scoring at or below this are not returned (GenEval's threshold is applied
            by the scorer; keep this below it).
        max_detections: At most this many (query, class) pairs per image (mmdet's ``max_per_image``).
        batch_size: Images per forward pass.
        resize: Shortest edge the images are resized to (longest edge ``resize * 1333 / 800``);
            None keeps the image processor's setting. GenEval's mmdet pipeline uses 800.
    """

    def __init__(
        self,
        model: str = DEFAULT_DETECTOR,
        device: str | torch.device = "cpu",
        min_score: float = 0.0,
        max_detections: int = 100,
        batch_size: int = 8,
        resize: int | None = None,
    ) -> None:
        if max_detections < 1 or batch_size < 1:
            raise ValueError(f"max_detections and batch_size must be >= 1, got {max_detections}, {batch_size}")
        self.model_name = str(model)
        self.device = torch.device(device)
        self.min_score = float(min_score)
        self.max_detections = int(max_detections)
        self.batch_size = int(batch_size)
        self.resize = resize
        self.model = None
        self.processor = None
        self._classes: list[str] | None = None

    @property
    def classes(self) -> list[str]:
        """Class names: the model's labels mapped by :func:`canonical_label` (read from its config only)."""
        if self._classes is None:
            if self.model is not None:
                self._classes = self._labels(self.model.config)
            elif self.model_name == DEFAULT_DETECTOR:  # known without touching the hub
                self._classes = list(COCO_CLASSES)
            else:
                from transformers import AutoConfig

                self._classes = self._labels(AutoConfig.from_pretrained(self.model_name))
        return self._classes

    @staticmethod
    def _labels(config) -> list[str]:
        return [canonical_label(config.id2label[i]) for i in sorted(config.id2label)]

    def load(self) -> None:
        """Load the model and its image processor (once)."""
        if self.model is not None:
            return
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        self.processor = AutoImageProcessor.from_pretrained(self.model_name)
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(self.model_name).to(self.device).eval()
        self._classes = self._labels(self.model.config)

    def to(self, device: str | torch.device) -> Mask2FormerDetector:
        self.device = torch.device(device)
        if self.model is not None:
            self.model.to(self.device)
        return self

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[list[Detection]]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"detect: expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        self.load()
        out: list[list[Detection]] = []
        for start in range(0, images.shape[0], self.batch_size):
            out.extend(self._detect_batch(images[start : start + self.batch_size]))
        return out

    def _detect_batch(self, images: Tensor) -> list[list[Detection]]:
        kwargs = {}
        if self.resize is not None:
            kwargs["size"] = {"shortest_edge": int(self.resize), "longest_edge": int(round(self.resize * 1333 / 800))}
        inputs = self.processor(images=list(images.to(self.device)), return_tensors="pt", device=self.device, **kwargs)
        dtype = next(self.model.parameters()).dtype
        outputs = self.model(
            pixel_values=inputs["pixel_values"].to(self.device, dtype), pixel_mask=inputs["pixel_mask"].to(self.device)
        )
        height, width = images.shape[-2:]
        padded = tuple(inputs["pixel_values"].shape[-2:])
        results = []
        for i in range(images.shape[0]):
            valid = inputs["pixel_mask"][i].bool()
            valid_h, valid_w = int(valid.any(dim=1).sum()), int(valid.any(dim=0).sum())
            results.append(
                self._postprocess(
                    outputs.class_queries_logits[i].float(),
                    outputs.masks_queries_logits[i].float(),
                    padded,
                    (valid_h, valid_w),
                    (height, width),
                )
            )
        return results

    def _postprocess(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        padded: tuple[int, int],
        valid: tuple[int, int],
        size: tuple[int, int],
    ) -> list[Detection]:
        probs = class_logits.softmax(-1)[:, :-1]  # (Q, C): drop "no object"
        num_classes = probs.shape[1]
        k = min(self.max_detections, probs.numel())
        class_scores, flat = probs.flatten().topk(k)
        keep = class_scores > self.min_score  # the final score is at most the class score
        class_scores, flat = class_scores[keep], flat[keep]
        if flat.numel() == 0:
            return []
        queries, labels = flat // num_classes, flat % num_classes
        logits = F.interpolate(mask_logits[queries].unsqueeze(0), size=padded, mode="bilinear", align_corners=False)
        logits = logits[:, :, : valid[0], : valid[1]]
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0]
        prob = logits.sigmoid()
        binary = prob > 0.5
        area = binary.flatten(1).sum(1)
        mask_scores = (prob * binary).flatten(1).sum(1) / area.clamp(min=1)
        scores = class_scores * mask_scores
        boxes = boxes_from_masks(binary)
        classes = self.classes
        detections = []
        for j in torch.argsort(scores, descending=True).tolist():
            score = float(scores[j])
            if area[j] == 0 or score <= self.min_score:
                continue
            detections.append(
                Detection(
                    label=classes[int(labels[j])],
                    score=score,
                    box=tuple(float(v) for v in boxes[j].tolist()),  # type: ignore[arg-type]
                    mask=binary[j].cpu(),
                )
            )
        return detections


class CLIPColorClassifier:
    """Zero-shot colour of object crops with CLIP through ``open_clip`` (GenEval: ViT-L/14, OpenAI weights).

    Each colour's text embedding is the normalised mean of the normalised embeddings of the
    :data:`COLOR_TEMPLATES` for that object; a crop gets the colour of highest cosine similarity.
    Text embeddings are cached per object name.

    Args:
        model_name: open_clip architecture name, or ``local-dir:/folder`` / ``hf-hub:org/repo``.
        pretrained: open_clip pretrained tag or checkpoint file (ignored with a ``local-dir:``/``hf-hub:`` name).
        device: Where the model runs.
        batch_size: Crops per forward pass.
    """

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = "openai",
        device: str | torch.device = "cpu",
        batch_size: int = 16,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name = model_name
        self.pretrained = pretrained
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.colors = COLORS
        self.templates = COLOR_TEMPLATES
        self.model = None
        self.preprocess = None
        self.tokenizer = None
        self._text: dict[str, Tensor] = {}

    def load(self) -> None:
        """Load the CLIP model, its preprocessing and its tokenizer (once)."""
        if self.model is not None:
            return
        import open_clip

        from ._clip import needs_quick_gelu

        model, _, preprocess = open_clip.create_model_and_transforms(
            self.model_name,
            pretrained=self.pretrained,
            device=self.device,
            force_quick_gelu=needs_quick_gelu(self.model_name, self.pretrained),
        )
        self.model, self.preprocess = model.eval(), preprocess
        self.tokenizer = open_clip.get_tokenizer(self.model_name)

    def to(self, device: str | torch.device) -> CLIPColorClassifier:
        self.device = torch.device(device)
        if self.model is not None:
            self.model.to(self.device)
            self._text = {}
        return self

    @torch.no_grad()
    def text_weights(self, object_name: str) -> Tensor:
        """``(D, len(COLORS))`` normalised colour embeddings for ``object_name``."""
        if object_name not in self._text:
            self.load()
            texts = [t.format(color=c, object=object_name) for c in self.colors for t in self.templates]
            emb = F.normalize(self.model.encode_text(self.tokenizer(texts).to(self.device)).float(), dim=-1)
            emb = F.normalize(emb.view(len(self.colors), len(self.templates), -1).mean(dim=1), dim=-1)
            self._text[object_name] = emb.T.contiguous()
        return self._text[object_name]

    @torch.no_grad()
    def classify(self, crops: list[Tensor], object_names: list[str]) -> list[str]:
        if len(crops) != len(object_names):
            raise ValueError(f"classify: {len(crops)} crops but {len(object_names)} object names")
        if not crops:
            return []
        self.load()
        from PIL import Image

        features = []
        for start in range(0, len(crops), self.batch_size):
            batch = [
                self.preprocess(Image.fromarray(c.permute(1, 2, 0).contiguous().cpu().numpy()))
                for c in crops[start : start + self.batch_size]
            ]
            features.append(F.normalize(self.model.encode_image(torch.stack(batch).to(self.device)).float(), dim=-1))
        feats = torch.cat(features)
        return [self.colors[int((feats[i] @ self.text_weights(name)).argmax())] for i, name in enumerate(object_names)]


# ------------------------------------------------------------------------------ tiny offline models


def build_tiny_mask2former(folder: str | Path, labels: dict[int, str] | None = None, seed: int = 0) -> Path:
    """Save a random, tiny Mask2Former (Swin backbone, 5 queries) and its image processor to ``folder``.

    For tests and offline smoke runs (``Mask2FormerDetector(str(folder))``); its detections are noise.
    ``labels`` defaults to ``{0: "dog", 1: "cat", 2: "mouse"}`` (COCO's ``mouse``: GenEval's ``computer mouse``).
    """
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    labels = labels or {0: "dog", 1: "cat", 2: "mouse"}
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=32,
        num_queries=5,
        id2label=dict(labels),
        label2id={v: k for k, v in labels.items()},
    )
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(folder)
    return folder


def build_tiny_clip(folder: str | Path) -> str:
    """Write a tiny open_clip config (random weights when created) to ``folder``; returns its model name.

    For tests and offline smoke runs: ``CLIPColorClassifier(build_tiny_clip(folder), pretrained=None)``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    return f"local-dir:{folder}"
