"""GenEval: does the image contain the objects the prompt asks for, in the right number, colour and place?

Prompt metadata (GenEval's schema, one object per prompt): ``tag`` (``single_object``, ``two_object``,
``counting``, ``colors``, ``position``, ``color_attr``), ``include`` (a list of
``{class, count, color?, position?: [relation, index]}``) and ``exclude`` (a list of ``{class, count}``).

Detections (any :class:`~tdmr1_rewards.detectors.Detector`; by default Mask2Former Swin-S on COCO) are
kept per class when their confidence is above ``threshold`` (above ``counting_threshold`` for
``counting`` prompts), most confident first, at most ``max_objects`` per class, without NMS.
Colours come from a :class:`~tdmr1_rewards.detectors.ColorClassifier` (by default CLIP ViT-L/14 on the
mask pasted on grey, cropped to the box) and are only computed for objects a colour clause looks at.

Two scores, both in ``details`` for every image:

``correct`` (strict; the GenEval benchmark's per-image 0/1), exactly as the official evaluator:
  * every include clause finds at least ``count`` objects of its class; its colour and position are
    checked on the ``count`` most confident of them only;
  * colour: all of those ``count`` objects have the clause's colour;
  * position ``[relation, i]``: every one of those objects stands in ``relation`` to every object of
    clause ``i``'s group, and clause ``i`` itself matched (otherwise there is no target);
  * an exclude ``{class, count: m}`` fails when ``m`` or more are detected (counting prompts carry
    ``n + 1``, which makes them exact).

  Relations (:func:`relative_position`) compare box centres in image coordinates (y grows downwards):
  ``offset = centre(A) - centre(B)``; along each axis, ``position_threshold x (size of A + size of B)``
  is subtracted from ``|offset|`` (floored at 0); the rest, divided by ``|offset|`` (Euclidean),
  gives ``(dx, dy)``; A is ``left of`` B when ``dx < -0.5``, ``right of`` when ``dx > 0.5``, ``above``
  when ``dy < -0.5`` and ``below`` when ``dy > 0.5`` (none when both centres coincide within the
  threshold). A position clause of a prompt "a photo of A left of B" is on A, targeting B's clause.

``soft`` (the training reward; Flow-GRPO's shaped score with its quirks fixed): the mean of these
terms, each in ``[0, 1]``:
  * per include clause, count: ``max(0, 1 - |n - k| / n)``, ``n`` = ``count``, ``k`` = objects kept
    (FIXED: Flow-GRPO does not clip, so the term goes negative once ``k > 2n``);
  * per colour clause: ``max(0, 1 - |n - m| / n)``, ``m`` = how many of the ``min(n, k)`` most
    confident objects have the colour (FIXED: always present, 0 when nothing is found, so every image
    of a prompt averages the same terms; Flow-GRPO adds it only when the count is exact);
  * per position clause: 1 when the clause's objects (``count`` most confident) and the target
    clause's objects are both found and every pair stands in the relation, else 0 (FIXED: Flow-GRPO
    appends a 1.0 after a failed check as well, so a wrong position earns 0.5 instead of 0);
  * per exclude clause: 1 when fewer than ``count`` are detected, else 0 (FIXED: Flow-GRPO ignores
    excludes, so "exactly three" rewards four);
  * the two scores are never confused: ``mode`` selects the one returned, and both are logged.

A soft score of 1 implies ``correct``; ``correct`` does not imply a soft score of 1 (the count term
penalises extra objects that GenEval's ``>= count`` accepts when a prompt has no exclude clause).

The benchmark number is :func:`geneval_table`: per-tag accuracy and their unweighted mean.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor

from tdmr1_lightning.evaluation.stats import mean_over_tags
from tdmr1_lightning.reward import Reward, RewardOutput

from .detectors import (
    COLORS,
    DEFAULT_DETECTOR,
    CLIPColorClassifier,
    ColorClassifier,
    Detection,
    Detector,
    Mask2FormerDetector,
    masked_crop,
)

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


# --------------------------------------------------------------------------------------------- scoring


def select_objects(
    detections: Iterable[Detection],
    tag: str | None,
    *,
    threshold: float = 0.3,
    counting_threshold: float = 0.9,
    max_objects: int = 16,
) -> dict[str, list[Detection]]:
    """Detections kept per class, most confident first: score ``> threshold`` (``> counting_threshold``
    for tag ``counting``), at most ``max_objects`` per class, no NMS. Classes with none are absent."""
    cut = counting_threshold if tag == "counting" else threshold
    by_class: dict[str, list[Detection]] = {}
    for det in sorted(detections, key=lambda d: -float(d.score)):  # stable: ties keep detector order
        if float(det.score) > cut:
            kept = by_class.setdefault(det.label, [])
            if len(kept) < max_objects:
                kept.append(det)
    return by_class


def relative_position(box_a: Sequence[float], box_b: Sequence[float], position_threshold: float = 0.1) -> set[str]:
    """Relations of box A to box B (``(x0, y0, x1, y1)`` pixels): a subset of :data:`RELATIONS`.

    ``{"left of"}`` means A is left of B. See the module docstring for the definition (GenEval's).
    """
    ca = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
    cb = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
    size = (abs(box_a[2] - box_a[0]) + abs(box_b[2] - box_b[0]), abs(box_a[3] - box_a[1]) + abs(box_b[3] - box_b[1]))
    offset = (ca[0] - cb[0], ca[1] - cb[1])
    revised = [max(abs(o) - position_threshold * s, 0.0) * math.copysign(1.0, o) for o, s in zip(offset, size)]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    norm = math.hypot(*offset)
    dx, dy = revised[0] / norm, revised[1] / norm
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def evaluate(
    detections: Iterable[Detection],
    metadata: dict,
    *,
    threshold: float = 0.3,
    counting_threshold: float = 0.9,
    max_objects: int = 16,
    position_threshold: float = 0.1,
) -> dict[str, Any]:
    """Score one image's detections against its GenEval metadata (pure: no model involved).

    Detections that a colour clause looks at (the ``count`` most confident of its class) must carry a
    ``color``. Returns ``{"correct": bool, "soft": float, "reasons": [str], "terms": [(name, value)]}``:
    the benchmark's strict verdict, the training score, why the strict check failed, and the soft terms.
    """
    objects = select_objects(
        detections,
        metadata.get("tag"),
        threshold=threshold,
        counting_threshold=counting_threshold,
        max_objects=max_objects,
    )
    correct = True
    reasons: list[str] = []
    terms: list[tuple[str, float]] = []
    found_of: list[list[Detection]] = []  # each clause's `count` most confident objects
    matched_groups: list[list[Detection] | None] = []  # the same, None where the clause failed (GenEval)
    for j, req in enumerate(metadata.get("include", [])):
        name, n = req["class"], int(req["count"])
        kept = objects.get(name, [])
        found = kept[:n]
        matched = True
        terms.append((f"include[{j}] count", max(0.0, 1.0 - abs(n - len(kept)) / n)))
        if len(found) < n:
            correct = matched = False
            reasons.append(f"expected {name}>={n}, found {len(found)}")
        if "color" in req:
            color = req["color"]
            missing = [d for d in found if d.color is None]
            if missing:
                raise ValueError(f"evaluate: a {name} detection has no colour; classify colours before evaluating")
            colors = [d.color for d in found]
            m = colors.count(color)
            terms.append((f"include[{j}] color", max(0.0, 1.0 - abs(n - m) / n)))
            if matched and m < n:
                correct = matched = False
                seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                reasons.append(f"expected {color} {name}>={n}, found {m} {color}; and {seen}")
        if "position" in req:
            relation, target = req["position"][0], int(req["position"][1])
            targets = found_of[target]
            holds = (
                bool(found)
                and bool(targets)
                and all(relation in relative_position(a.box, b.box, position_threshold) for a in found for b in targets)
            )
            terms.append((f"include[{j}] position", 1.0 if holds else 0.0))
            if matched:
                if matched_groups[target] is None:
                    correct = matched = False
                    reasons.append(f"no target for {name} to be {relation}")
                else:
                    for a in found:
                        for b in matched_groups[target]:
                            actual = relative_position(a.box, b.box, position_threshold)
                            if relation not in actual:
                                correct = matched = False
                                found_rel = " and ".join(sorted(actual)) or "no relation to the"
                                reasons.append(f"expected {name} {relation} target, found {found_rel} target")
                                break
                        if not matched:
                            break
        found_of.append(found)
        matched_groups.append(found if matched else None)
    for j, req in enumerate(metadata.get("exclude", []) or []):
        name, m = req["class"], int(req["count"])
        k = len(objects.get(name, []))
        violated = k >= m
        terms.append((f"exclude[{j}]", 0.0 if violated else 1.0))
        if violated:
            correct = False
            reasons.append(f"expected {name}<{m}, found {k}")
    soft = sum(v for _, v in terms) / len(terms) if terms else float(correct)
    return {"correct": correct, "soft": soft, "reasons": reasons, "terms": terms}


def geneval_table(tags: Sequence[str], correct: Sequence[bool] | Tensor) -> dict[str, Any]:
    """The GenEval benchmark table from per-image results (4 images a prompt in the published protocol).

    Returns ``{"overall": float, "per_tag": {tag: accuracy}, "num_images": {tag: int}}``; ``overall``
    is the unweighted mean over tags of each tag's fraction of correct images (tags in first-seen order).
    """
    return mean_over_tags(tags, correct.tolist() if isinstance(correct, Tensor) else correct)


# ------------------------------------------------------------------------------------------ metadata


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def metadata_problem(metadata: Any, classes: Iterable[str] | None = None) -> str | None:
    """What is wrong with one prompt's GenEval metadata (None if nothing); ``classes`` restricts class names."""
    if not isinstance(metadata, dict):
        return f"metadata is a {type(metadata).__name__}, not a mapping"
    known = set(classes) if classes is not None else None
    if "tag" not in metadata:
        return "missing field 'tag'"
    if metadata["tag"] not in TAGS:
        return f"field 'tag' is {metadata['tag']!r}, not one of {', '.join(TAGS)}"
    if "include" not in metadata:
        return "missing field 'include'"
    include = metadata["include"]
    if not isinstance(include, list) or not include:
        return "field 'include' must be a non-empty list of {class, count} objects"
    for j, req in enumerate(include):
        where = f"include[{j}]"
        problem = _clause_problem(req, where, known)
        if problem:
            return problem
        if "color" in req and req["color"] not in COLORS:
            return f"{where} field 'color' is {req['color']!r}, not one of {', '.join(COLORS)}"
        if "position" in req:
            pos = req["position"]
            if not isinstance(pos, (list, tuple)) or len(pos) != 2:
                return f"{where} field 'position' must be [relation, index], got {pos!r}"
            if pos[0] not in RELATIONS:
                return f"{where} position relation {pos[0]!r} is not one of {', '.join(RELATIONS)}"
            if isinstance(pos[1], bool) or not isinstance(pos[1], int) or not 0 <= pos[1] < j:
                return f"{where} position index {pos[1]!r} must point to an earlier include clause (0..{j - 1})"
    exclude = metadata.get("exclude", [])
    if exclude is None:
        exclude = []
    if not isinstance(exclude, list):
        return "field 'exclude' must be a list of {class, count} objects"
    for j, req in enumerate(exclude):
        problem = _clause_problem(req, f"exclude[{j}]", known)
        if problem:
            return problem
    return None


def _clause_problem(req: Any, where: str, known: set[str] | None) -> str | None:
    """What is wrong with one ``{class, count}`` clause (include or exclude), or None."""
    if not isinstance(req, dict):
        return f"{where} is not an object"
    for key in ("class", "count"):
        if key not in req:
            return f"{where} is missing field {key!r}"
    if known is not None and req["class"] not in known:
        return f"{where} class {req['class']!r} is not a class of the detector"
    if not _is_count(req["count"]):
        return f"{where} field 'count' must be an integer >= 1, got {req['count']!r}"
    return None


# ---------------------------------------------------------------------------------------------- reward


class GenEvalReward(Reward):
    """GenEval composition reward: objects, counts, colours and positions checked by Mask2Former + CLIP.

    Prompts need GenEval metadata (``tag``, ``include``, ``exclude``; see :mod:`tdmr1_rewards.geneval`
    and ``python -m tdmr1_rewards.geneval_prompts``). Both scores are in ``details`` (``correct``,
    ``soft``, ``reasons``, ``tag``); ``mode`` picks the one returned.

    Args:
        detector: A Detector instance, a Mask2Former hub id or local folder, or None for GenEval's
            Mask2Former Swin-S (COCO instances).
        color_classifier: A ColorClassifier instance, or None for GenEval's CLIP ViT-L/14 (OpenAI weights);
            loaded only when a colour clause needs it.
        threshold: Detections count when their confidence is above this.
        counting_threshold: The confidence threshold for ``counting`` prompts.
        max_objects: At most this many detections per class (the most confident).
        position_threshold: Centre offsets within this fraction of the summed box sizes are ignored.
        mode: ``soft``: the training score in [0, 1] (count, colour, position and exclude terms);
            ``strict``: the GenEval benchmark's ``correct`` (0 or 1).
    """

    def __init__(
        self,
        detector: Detector | str | None = None,
        color_classifier: ColorClassifier | None = None,
        threshold: float = 0.3,
        counting_threshold: float = 0.9,
        max_objects: int = 16,
        position_threshold: float = 0.1,
        mode: Literal["soft", "strict"] = "soft",
    ) -> None:
        if mode not in ("soft", "strict"):
            raise ValueError(f"mode must be 'soft' or 'strict', got {mode!r}")
        for label, value in (("threshold", threshold), ("counting_threshold", counting_threshold)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{label} must be in [0, 1), got {value}")
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        if position_threshold < 0:
            raise ValueError(f"position_threshold must be >= 0, got {position_threshold}")
        self.threshold = float(threshold)
        self.counting_threshold = float(counting_threshold)
        self.max_objects = int(max_objects)
        self.position_threshold = float(position_threshold)
        self.mode = mode
        if detector is None or isinstance(detector, str):
            detector = Mask2FormerDetector(detector or DEFAULT_DETECTOR, min_score=min(threshold, counting_threshold))
        if not callable(getattr(detector, "detect", None)):
            raise TypeError(f"detector must have a detect(images) method, got {type(detector).__name__}")
        if color_classifier is not None and not callable(getattr(color_classifier, "classify", None)):
            raise TypeError(
                "color_classifier must have a classify(crops, object_names) method, "
                f"got {type(color_classifier).__name__}"
            )
        self.detector = detector
        self.color_classifier = color_classifier

    # -- setup

    def load(self) -> None:
        """Load the detector onto :attr:`device` (the colour classifier loads on its first use)."""
        self._place(self.detector)
        if callable(getattr(self.detector, "load", None)):
            self.detector.load()

    def to(self, device: str | torch.device) -> GenEvalReward:
        super().to(device)
        self._place(self.detector)
        if self.color_classifier is not None:
            self._place(self.color_classifier)
        return self

    def _place(self, part: Any) -> None:
        if callable(getattr(part, "to", None)):
            part.to(self.device)

    def _classifier(self) -> ColorClassifier:
        if self.color_classifier is None:
            self.color_classifier = CLIPColorClassifier(device=self.device)
        return self.color_classifier

    def validate(self, prompts: list[str], metadata: list[dict]) -> None:
        """Refuse, naming the prompt, metadata that is not GenEval's schema or names unknown classes."""
        if len(prompts) != len(metadata):
            raise ValueError(f"{len(prompts)} prompts but {len(metadata)} metadata records")
        classes = list(self.detector.classes)
        for i, (prompt, meta) in enumerate(zip(prompts, metadata)):
            problem = metadata_problem(meta, classes)
            if problem is not None:
                raise ValueError(f"prompt {i} {prompt!r}: {problem}")

    # -- scoring

    def _kept(self, dets: list[Detection], meta: dict) -> dict[str, list[Detection]]:
        return select_objects(
            dets,
            meta.get("tag"),
            threshold=self.threshold,
            counting_threshold=self.counting_threshold,
            max_objects=self.max_objects,
        )

    def _add_colors(
        self, images: Tensor, detections: list[list[Detection]], metadata: list[dict], ok: list[bool]
    ) -> list[list[Detection]]:
        """Detections with colours filled in where a colour clause looks at them (one classifier call)."""
        wanted: dict[tuple[int, int], Detection] = {}
        for i, (dets, meta) in enumerate(zip(detections, metadata)):
            if not ok[i] or not any("color" in req for req in meta["include"]):
                continue
            kept = self._kept(dets, meta)
            for req in meta["include"]:
                if "color" in req:
                    for det in kept.get(req["class"], [])[: int(req["count"])]:
                        if det.color is None:
                            wanted[(i, id(det))] = det
        if not wanted:
            return detections
        keys = list(wanted)
        crops = [masked_crop(images[i], wanted[(i, d)]) for i, d in keys]
        colors = self._classifier().classify(crops, [wanted[k].label for k in keys])
        if len(colors) != len(keys) or any(c not in COLORS for c in colors):
            raise ValueError(
                f"colour classifier returned {colors!r} for {len(keys)} crops; expected one of {COLORS} each"
            )
        by_key = dict(zip(keys, colors))
        return [
            [replace(d, color=by_key[(i, id(d))]) if (i, id(d)) in by_key else d for d in dets]
            for i, dets in enumerate(detections)
        ]

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        n = images.shape[0]
        problems = [metadata_problem(m) for m in metadata]
        ok = [p is None for p in problems]
        if not all(ok):
            warnings.warn(
                f"GenEvalReward: {ok.count(False)} of {n} samples have invalid metadata and are masked out "
                f"(first: prompt {ok.index(False)}: {problems[ok.index(False)]})",
                RuntimeWarning,
            )
        detections = self.detector.detect(images)
        if len(detections) != n:
            raise ValueError(f"detector returned {len(detections)} results for {n} images")
        detections = self._add_colors(images, [list(d) for d in detections], metadata, ok)
        correct, soft, reasons = [], [], []
        for i in range(n):
            if not ok[i]:
                correct.append(False)
                soft.append(0.0)
                reasons.append(f"invalid metadata: {problems[i]}")
                continue
            result = evaluate(
                detections[i],
                metadata[i],
                threshold=self.threshold,
                counting_threshold=self.counting_threshold,
                max_objects=self.max_objects,
                position_threshold=self.position_threshold,
            )
            correct.append(result["correct"])
            soft.append(result["soft"])
            reasons.append("; ".join(result["reasons"]))
        correct_t = torch.tensor(correct, dtype=torch.float32)
        soft_t = torch.tensor(soft, dtype=torch.float32)
        return RewardOutput(
            scores=soft_t if self.mode == "soft" else correct_t,
            valid=torch.tensor(ok, dtype=torch.bool),
            details={
                "correct": correct_t,
                "soft": soft_t,
                "reasons": reasons,
                "tag": [m.get("tag") if isinstance(m, dict) else None for m in metadata],
            },
        )
