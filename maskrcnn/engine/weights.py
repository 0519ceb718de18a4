"""Initial weights for training: whatever of a checkpoint fits the model.

Fine-tuning starts from a checkpoint trained on other data (COCO weights of
torchvision, Detectron2 or this project, read by ``maskrcnn.convert``). Its
class-specific layers (the box classifier and regressor, the mask predictor)
have another number of classes; they keep their fresh initialisation, and
every other tensor whose name and shape fit is copied.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..convert import load_checkpoint


def load_initial_weights(model: nn.Module, path: Path) -> list[str]:
    """Copy every tensor of the checkpoint at ``path`` whose name and shape fit ``model``.

    Returns the names of the model's tensors left at their initialisation, sorted.
    """
    _, state = load_checkpoint(path)
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    return sorted(set(own) - set(fitting))
