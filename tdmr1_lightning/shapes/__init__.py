"""A synthetic composition world for TDM-R1 on a CPU: coloured shapes, GenEval prompts, an exact detector.

* :mod:`~tdmr1_lightning.shapes.world`: :class:`World` (vocabulary and geometry), scenes and their
  rendering, GenEval-schema prompts (:func:`sample_prompt`, :func:`parse_prompt`, :func:`scene_for`),
  held-out splits (:func:`make_prompt_sets`), :class:`ShapesDataset` for teacher pretraining, and a CLI.
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
    "HeldOut": "world",
    "Scene": "world",
    "ShapeObject": "world",
    "ShapesDataset": "world",
    "ShapesDetector": "detector",
    "World": "world",
    "classify_shape": "detector",
    "collate_shapes": "world",
    "enumerate_prompts": "world",
    "held_out_combinations": "world",
    "is_held_out": "world",
    "make_prompt_sets": "world",
    "make_record": "world",
    "object_mask": "world",
    "parse_prompt": "world",
    "prompt_combinations": "world",
    "random_scene": "world",
    "render": "world",
    "render_batch": "world",
    "sample_prompt": "world",
    "scene_for": "world",
    "shape_features": "detector",
    "shape_template": "world",
    "split_prompts": "world",
    "write_jsonl": "world",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .detector import ShapesDetector, classify_shape, shape_features  # noqa: F401
    from .world import *  # noqa: F401,F403


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
