"""Model families that TDM-R1 can post-train; see :class:`RectifiedFlowBackbone`."""

from .base import Condition, RectifiedFlowBackbone, RoleTransformers
from .sd3 import SD3Backbone

__all__ = ["Condition", "RectifiedFlowBackbone", "RoleTransformers", "SD3Backbone"]
