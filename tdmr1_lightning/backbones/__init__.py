"""Model families that TDM-R1 can post-train; see :class:`RectifiedFlowBackbone`."""

from .base import Condition, RectifiedFlowBackbone, RoleTransformers
from .sd3 import PixelSD3Backbone, SD3Backbone

__all__ = ["Condition", "PixelSD3Backbone", "RectifiedFlowBackbone", "RoleTransformers", "SD3Backbone"]
