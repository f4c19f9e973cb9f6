"""Model families that TDM-R1 can post-train; see :class:`RectifiedFlowBackbone`.

A family is imported when it is first named (``tdmr1_lightning.backbones.SD3Backbone`` in a config), so
importing the package, or one family, never loads another family's libraries.
"""

import importlib

from .base import Condition, RectifiedFlowBackbone, RoleTransformers

_FAMILIES = {
    "SD3Backbone": ".sd3",
    "PixelSD3Backbone": ".sd3",
    "TinySD3Backbone": ".tiny_sd3",
    "TinyPixelSD3Backbone": ".tiny_sd3",
}

__all__ = ["Condition", "RectifiedFlowBackbone", "RoleTransformers", *_FAMILIES]


def __getattr__(name: str):
    if name in _FAMILIES:
        return getattr(importlib.import_module(_FAMILIES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
