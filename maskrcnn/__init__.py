"""Mask R-CNN (He, Gkioxari, Dollár, Girshick, ICCV 2017) in plain PyTorch.

    import maskrcnn
    predictor = maskrcnn.load("model_final.pth")      # ours, torchvision's or Detectron2's
    detections = predictor("photo.jpg")                # boxes, scores, labels, masks
"""

from .config import ModelConfig
from .engine.predict import Predictor, load
from .model import MaskRCNN, build_model
from .structures import Detections, ImageBatch

__all__ = ["Detections", "ImageBatch", "MaskRCNN", "ModelConfig", "Predictor", "build_model", "load"]
__version__ = "0.1.0"
