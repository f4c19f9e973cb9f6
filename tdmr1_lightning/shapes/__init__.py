"""A synthetic composition world for TDM-R1 on a CPU: coloured shapes, GenEval prompts, an exact detector.

* :mod:`~tdmr1_lightning.shapes.world`: :class:`World` (vocabulary, palette and geometry);
  :mod:`~tdmr1_lightning.shapes.scenes` (scenes and their rendering); :mod:`~tdmr1_lightning.shapes.prompts`
  (GenEval-schema prompts: :func:`sample_prompt`, :func:`parse_prompt`, :func:`scene_for`);
  :mod:`~tdmr1_lightning.shapes.splits` (held-out splits, :func:`make_prompt_sets`);
  :mod:`~tdmr1_lightning.shapes.dataset` (:class:`ShapesDataset` for teacher pretraining);
  :mod:`~tdmr1_lightning.shapes.command` (``tdmr1 shapes prompts``).
* :mod:`~tdmr1_lightning.shapes.detector`: :class:`ShapesDetector`, a non-learned detector behind the
  :class:`tdmr1_rewards.detectors.Detector` interface, so :class:`tdmr1_rewards.geneval.GenEvalReward`
  scores the world unchanged::

      from tdmr1_rewards.geneval import GenEvalReward
      from tdmr1_lightning.shapes import ShapesDetector, World

      reward = GenEvalReward(detector=ShapesDetector(World()), mode="soft")
"""

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562): importing the package (or the detector alone) does not
# build the world's prompt tables.
_EXPORTS: dict[str, str] = {
    "DEFAULT_SHAPES": "world",
    "MIN_COLOR_DISTANCE": "world",
    "MIN_OBJECT_PX": "world",
    "PALETTE": "world",
    "SHAPES": "world",
    "HeldOut": "splits",
    "Scene": "scenes",
    "ShapeObject": "scenes",
    "ShapesDataset": "dataset",
    "ShapesDetector": "detector",
    "World": "world",
    "classify_shape": "detector",
    "collate_shapes": "dataset",
    "enumerate_prompts": "prompts",
    "held_out_combinations": "splits",
    "is_held_out": "splits",
    "make_prompt_sets": "splits",
    "make_record": "prompts",
    "object_mask": "scenes",
    "parse_prompt": "prompts",
    "prompt_combinations": "splits",
    "random_scene": "scenes",
    "render": "scenes",
    "render_batch": "scenes",
    "sample_prompt": "prompts",
    "scene_for": "prompts",
    "shape_features": "detector",
    "shape_template": "scenes",
    "split_prompts": "splits",
    "write_jsonl": "splits",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .detector import ShapesDetector, classify_shape, shape_features  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
