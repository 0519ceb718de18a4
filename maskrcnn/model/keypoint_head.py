"""Keypoint head: one ``S x S`` heatmap per keypoint type (Mask R-CNN, Section 5, "Human Pose Estimation").

A keypoint is modelled as a one-hot mask: of the ``S x S`` cells over the
RoI, exactly one holds it, and the head predicts a softmax over the cells.
Eight 3x3 convs (512 channels) with ReLU on the ``14 x 14`` RoI features, a
4x4 stride-2 deconvolution to one channel per keypoint (``28 x 28``, the
paper's "deconv"), and 2x bilinear upsampling to ``56 x 56`` heatmaps (the
paper found the higher resolution important for localisation).

Inference (``keypoint_heatmaps_to_xy``): each RoI's heatmap is resized to
the box's size in pixels with bicubic interpolation, and the keypoint is the
pixel of the maximum, at its centre; its score is the heatmap logit there.
Training (``keypoint_targets``, ``keypoint_loss``): the ground-truth
keypoint's cell in the grid over a positive RoI is the class of a
cross-entropy over the ``S * S`` cells, for labelled keypoints inside the RoI.

Shapes: ``(R, C, 14, 14)`` -> ``(R, P, 56, 56)`` heatmaps; ``D`` detections
-> keypoints ``(D, P, 3)`` as ``(x, y, score)``. ``P`` keypoints, ``S``
heatmap side.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.fx.experimental.symbolic_shapes import guard_or_false
from torch.nn import functional as F

from ..dist import global_normaliser
from ..ops.chunks import size_chunks
from ..structures import RoISamples, Targets
from .poolers import MultiLevelRoIPooler
from .precision import widened

# The free parameter of Keys' cubic convolution kernel used by PyTorch's (and
# OpenCV's) bicubic interpolation; the heatmap resize must use the same kernel
# as the peers for the maxima to land on the same pixels.
BICUBIC_A = -0.75
# Decoding resizes many heatmaps at once, each padded to the largest box of
# its group; a group holds at most this many resized values (64 MiB of float32).
DECODE_CHUNK_ELEMENTS = 1 << 24


class KeypointHead(nn.Module):
    """``8 x (conv3x3, ReLU) -> deconv 4x4/2 to P heatmaps -> 2x bilinear upsampling``."""

    def __init__(
        self, *, in_channels: int, conv_dims: tuple[int, ...] = (512,) * 8, num_keypoints: int
    ) -> None:
        super().__init__()
        dims = (in_channels, *conv_dims)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        # kernel 4, stride 2, padding 1: exactly doubles the side (torchvision's kps_score_lowres).
        self.predictor = nn.ConvTranspose2d(dims[-1], num_keypoints, 4, stride=2, padding=1)
        for conv in [*self.convs, self.predictor]:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = torch.relu_(conv(x))
        x = self.predictor(x)
        # interpolate refuses empty batches on some devices; an exported graph (where the
        # count is not known) takes the general path, which ONNX runtimes run on no RoIs.
        if guard_or_false(x.shape[0] == 0):
            # ``+ x.sum() * 0`` keeps the (empty) result in the graph, so that a
            # batch without positive RoIs still gives every parameter a (zero)
            # gradient, as data-parallel training needs.
            return x.new_zeros((0, x.shape[1], 2 * x.shape[2], 2 * x.shape[3])) + x.sum() * 0.0
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False,
                             recompute_scale_factor=False)


# ---------------------------------------------------------------------------
# Inference.


def _cubic_inner(x: Tensor) -> Tensor:
    """Keys' kernel for ``|x| <= 1``: ``(A + 2)|x|^3 - (A + 3)|x|^2 + 1``."""
    return ((BICUBIC_A + 2) * x - (BICUBIC_A + 3)) * x * x + 1


def _cubic_outer(x: Tensor) -> Tensor:
    """Keys' kernel for ``1 < |x| < 2``: ``A|x|^3 - 5A|x|^2 + 8A|x| - 4A``."""
    a = BICUBIC_A
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


def bicubic_resize_matrices(in_size: int, out_sizes: Tensor, out_max: int) -> Tensor:
    """Bicubic resizing along one axis as matrices: ``(D,)`` output sizes -> ``(D, out_max, in_size)``.

    Row ``o`` of matrix ``d`` holds the weights with which output sample ``o``
    of a resize from ``in_size`` to ``out_sizes[d]`` samples combines the
    input samples; rows from ``out_sizes[d]`` on are zero. This is
    ``F.interpolate(mode="bicubic", align_corners=False)``: output sample
    ``o`` sits at input coordinate ``(o + 0.5) * in / out - 0.5``, its four
    neighbours are weighted by Keys' kernel, and neighbours beyond the border
    are replaced by the border sample (so their weight adds to it).
    Computed in float32, as PyTorch computes it for float32 images.
    """
    device = out_sizes.device
    sizes = out_sizes.to(torch.float32)
    scale = in_size / sizes  # (D,)
    dst = torch.arange(out_max, dtype=torch.float32, device=device)
    src = scale[:, None] * (dst + 0.5) - 0.5  # (D, O)
    first = src.floor()
    t = src - first
    # Taps at first - 1, first, first + 1, first + 2, at distances t + 1, t, 1 - t, 2 - t.
    weights = torch.stack(
        (_cubic_outer(t + 1), _cubic_inner(t), _cubic_inner(1 - t), _cubic_outer(2 - t)), dim=-1
    )  # (D, O, 4)
    taps = (first.long()[..., None] + torch.arange(-1, 3, device=device)).clamp(0, in_size - 1)
    matrices = torch.zeros((sizes.shape[0], out_max, in_size), device=device)
    matrices.scatter_add_(2, taps, weights)
    return matrices * (dst < sizes[:, None])[..., None]


def keypoint_heatmaps_to_xy(
    heatmaps: Tensor, boxes: Tensor, *, max_elements: int = DECODE_CHUNK_ELEMENTS
) -> Tensor:
    """Keypoints ``(D, P, 3)`` as ``(x, y, score)`` from heatmap logits ``(D, P, S, S)`` and ``boxes (D, 4)``.

    As torchvision (and Detectron2) decode them: the RoI's heatmap is resized
    bicubically to ``ceil(w) x ceil(h)`` cells (box sides of at least 1 px),
    the cell of the maximum (the first in row-major order when tied) is taken
    at its centre, ``(i + 0.5)`` (Heckbert's discrete-to-continuous rule), and
    scaled back to the box: ``x = x0 + (i + 0.5) * w / ceil(w)``. The score is
    the resized logit at the maximum. Coordinates are continuous, in the
    boxes' pixels.

    The per-box resizes differ in size, so rather than one interpolation per
    detection the resize is written as two matrix products per heatmap
    (``R_y H R_x^T``, ``bicubic_resize_matrices``), padded to the largest box
    of a group and masked; groups of similar boxes keep the padded tensor
    under ``max_elements`` values.
    """
    d, p = heatmaps.shape[:2]
    out = torch.zeros((d, p, 3), dtype=torch.float32, device=heatmaps.device)
    if d == 0:
        return out
    boxes = boxes.to(torch.float32)
    sides = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)  # (D, 2): w, h
    cells = sides.ceil()
    # A group's resized maps are (G, P, Hmax, Wmax): a detection's extents are (P, w, h) cells.
    extents = torch.cat((cells.long().new_full((d, 1), p), cells.long()), dim=1)
    for index in size_chunks(extents, max_elements, stable=True):
        out[index] = _decode(heatmaps[index].to(torch.float32), boxes[index], sides[index], cells[index])
    return out


def _decode(heatmaps: Tensor, boxes: Tensor, sides: Tensor, cells: Tensor) -> Tensor:
    """``keypoint_heatmaps_to_xy`` for one group: ``(G, P, S, S)`` -> ``(G, P, 3)``."""
    s = heatmaps.shape[-1]
    cols, rows = cells.long().unbind(1)  # (G,) each
    width, height = int(cols.max()), int(rows.max())
    resize_y = bicubic_resize_matrices(s, rows, height)  # (G, Hmax, S)
    resize_x = bicubic_resize_matrices(s, cols, width)  # (G, Wmax, S)
    # (G, 1, Hmax, S) @ (G, P, S, S) @ (G, 1, S, Wmax) -> (G, P, Hmax, Wmax)
    maps = resize_y[:, None] @ heatmaps @ resize_x[:, None].transpose(-1, -2)
    inside = (torch.arange(height, device=maps.device) < rows[:, None])[:, :, None] & (
        torch.arange(width, device=maps.device) < cols[:, None]
    )[:, None, :]  # (G, Hmax, Wmax)
    maps = maps.masked_fill(~inside[:, None], float("-inf")).flatten(2)  # (G, P, Hmax * Wmax)
    # Padding sits after each row's real cells, so row-major order and first-maximum ties are kept.
    position = maps.argmax(dim=2)  # (G, P)
    score = maps.gather(2, position[..., None])[..., 0]
    x = (position % width).to(torch.float32) + 0.5
    y = torch.div(position, width, rounding_mode="floor").to(torch.float32) + 0.5
    # Cells back to pixels: a cell is w / ceil(w) pixels wide.
    x = x * (sides[:, 0] / cols)[:, None] + boxes[:, 0, None]
    y = y * (sides[:, 1] / rows)[:, None] + boxes[:, 1, None]
    return torch.stack((x, y, score), dim=2)


# ---------------------------------------------------------------------------
# Training.


def keypoint_cells(keypoints: Tensor, rois: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Each keypoint's cell in the ``size x size`` grid over its RoI, and whether it counts.

    ``keypoints (R, P, 3)`` as ``(x, y, visibility)`` in continuous pixel
    coordinates (a keypoint on pixel ``i`` at ``i + 0.5``, as the datasets
    store them), ``rois (R, 4)``. Returns ``index (R, P)`` int64,
    ``row * size + col`` with ``col = floor((x - x0) * size / w)`` (a keypoint
    exactly on the right or bottom edge goes to the last cell), and
    ``valid (R, P)`` bool: labelled (visibility > 0) and inside the RoI.
    Invalid entries have index 0.
    """
    x0, y0, x1, y1 = (c[:, None] for c in rois.unbind(1))  # (R, 1) each
    x, y, v = keypoints.unbind(2)  # (R, P) each
    col = ((x - x0) * (size / (x1 - x0))).floor()
    row = ((y - y0) * (size / (y1 - y0))).floor()
    col = torch.where(x == x1, size - 1, col)
    row = torch.where(y == y1, size - 1, row)
    valid = (v > 0) & (col >= 0) & (row >= 0) & (col < size) & (row < size)
    index = torch.where(valid, row * size + col, 0).to(torch.int64)
    return index, valid


def keypoint_targets(
    samples: list[RoISamples], targets: list[Targets], *, size: int, num_keypoints: int
) -> tuple[Tensor, Tensor]:
    """Targets of the positive RoIs, in the order of ``samples``: ``index (P_R, P)``, ``valid (P_R, P)``.

    Each positive RoI takes the keypoints of the ground-truth instance it was
    matched to (``keypoint_cells``). Images without keypoint annotations, and
    instances without labelled keypoints, contribute RoIs with no valid
    keypoint.
    """
    index, valid = [], []
    for s, t in zip(samples, targets, strict=True):
        fg = s.foreground
        rois = s.boxes[fg]
        if t.keypoints is None:
            kp = rois.new_zeros((rois.shape[0], num_keypoints, 3))
        else:
            if t.keypoints.shape[1:] != (num_keypoints, 3):
                raise ValueError(
                    f"targets have keypoints of shape {tuple(t.keypoints.shape)}, "
                    f"expected (M, {num_keypoints}, 3)"
                )
            kp = t.keypoints[s.gt_index[fg]].to(rois.dtype)
        i, v = keypoint_cells(kp, rois, size)
        index.append(i)
        valid.append(v)
    return torch.cat(index), torch.cat(valid)


def keypoint_loss(heatmaps: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """Softmax cross-entropy over the ``S * S`` cells, averaged over the valid keypoints.

    ``heatmaps (P_R, P, S, S)`` logits of the positive RoIs, ``index`` and
    ``valid`` ``(P_R, P)`` from ``keypoint_targets``. Normalised by the number
    of valid keypoints (over all processes in distributed training), so that
    every labelled keypoint weighs the same whatever its image. With none the
    loss is an exact 0 that still reaches the head's parameters.
    """
    normaliser = global_normaliser(valid.sum(), heatmaps.device)
    if not bool(valid.any()):
        return heatmaps.sum() * 0.0
    logits = heatmaps.flatten(2)[valid]  # (V, S * S)
    return F.cross_entropy(logits, index[valid], reduction="sum") / normaliser


# ---------------------------------------------------------------------------
# The branch.


class KeypointBranch(nn.Module):
    """RoI pooling, the keypoint head, its training targets and loss, and decoding into keypoints.

    Like the mask branch it sees the positive RoIs in training (torchvision: all
    classes' positives; instances without labelled keypoints add nothing to the
    loss) and the detections at inference. The detector pools with this
    branch's ``pooler``.
    """

    def __init__(self, *, pooler: MultiLevelRoIPooler, head: KeypointHead) -> None:
        super().__init__()
        self.pooler = pooler
        self.head = head

    def loss(self, features: Tensor, samples: list[RoISamples], targets: list[Targets]) -> dict[str, Tensor]:
        """``loss_keypoint`` from the pooled features of the positive RoIs of ``samples``."""
        heatmaps = self.head(features)
        index, valid = keypoint_targets(samples, targets, size=heatmaps.shape[-1],
                                        num_keypoints=heatmaps.shape[1])
        return {"loss_keypoint": keypoint_loss(heatmaps, index, valid)}

    def predict(self, features: Tensor, boxes: Tensor) -> Tensor:
        """Keypoints ``(D, P, 3)``, ``(x, y, score)``, of the detections ``boxes (D, 4)``, in their pixels."""
        return keypoint_heatmaps_to_xy(widened(self.head(features)), boxes)  # float32 maps
