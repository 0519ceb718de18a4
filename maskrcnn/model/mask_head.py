"""Mask head: a small FCN predicting one ``S x S`` mask per class (Mask R-CNN, Figure 4, right).

Four 3x3 convs with ReLU on the ``14 x 14`` RoI features, a 2x2 stride-2
deconvolution with ReLU to ``28 x 28``, and a 1x1 conv to ``K`` mask logits.
Masks do not compete across classes: at inference the sigmoid of the mask of
the predicted class is taken; in training only that class's mask is penalised.

Shapes: ``(R, C, 14, 14)`` -> ``(R, K, 28, 28)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MaskHead(nn.Module):
    """``4 x (conv3x3, ReLU) -> deconv 2x2/2, ReLU -> conv1x1 to K masks``."""

    def __init__(self, *, in_channels: int, conv_dims: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        dims = (in_channels, *conv_dims)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.deconv = nn.ConvTranspose2d(dims[-1], dims[-1], 2, stride=2)
        self.predictor = nn.Conv2d(dims[-1], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = torch.relu_(conv(x))
        return self.predictor(torch.relu_(self.deconv(x)))


def mask_probabilities(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """Sigmoid of each RoI's mask for its own class: ``(D, K, S, S), (D,) -> (D, S, S)``."""
    index = torch.arange(labels.shape[0], device=labels.device)
    return mask_logits[index, labels].sigmoid()
