"""Detection operators in vectorised PyTorch: boxes, NMS, RoIAlign, mask pasting."""

from .boxes import BoxCoder, box_area, box_iou, clip_boxes, large_enough, scale_boxes
from .masks import paste_masks
from .nms import batched_nms, nms
from .roi_align import roi_align

__all__ = [
    "BoxCoder", "box_area", "box_iou", "clip_boxes", "large_enough", "scale_boxes",
    "paste_masks", "batched_nms", "nms", "roi_align",
]
