"""The detector's modules, one per stage of the paper's Figure 1."""

from .build import build_model
from .mask_rcnn import MaskRCNN

__all__ = ["MaskRCNN", "build_model"]
