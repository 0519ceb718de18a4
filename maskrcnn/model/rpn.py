"""Region Proposal Network (Faster R-CNN, Section 3.1) over FPN levels.

A shared head (3x3 conv + ReLU, then 1x1 convs) predicts, at every location
of every level, an objectness logit and 4 box deltas for each of the ``A``
anchors. Proposals are selected per image: the top-k anchors of each level
by objectness, decoded, clipped to the image, small boxes dropped, NMS within
each level, then the best ``post_nms_topk`` over all levels.

Training (``rpn_loss``): anchors are matched to ground truth (IoU >= 0.7
foreground, < 0.3 background, and each object's best anchors), 256 anchors
per image are sampled with at most half foreground, and the objectness (binary
cross-entropy) and box (smooth L1) losses are averaged over the samples.

``RPN`` owns its numbers: anchors, coder, sampler, NMS and the top-k of
training and of inference. ``RPN.loss`` gives training's proposals and the
two losses, ``RPN.predict`` inference's proposals.

Shapes: per level ``objectness (N, A, H, W)``, ``deltas (N, 4A, H, W)``;
flattened ``(N, sum_l H_l W_l A)`` and ``(N, sum_l H_l W_l A, 4)`` in the
anchors' order (location-major, then anchor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..dist import global_normaliser
from ..ops.boxes import BoxCoder, box_regression_loss, clip_boxes, large_enough
from ..ops.matching import BalancedSampler
from ..ops.nms import batched_nms
from ..structures import ImageBatch, Proposals, Targets
from .anchors import AnchorGenerator
from .precision import widened


class RPNHead(nn.Module):
    """3x3 conv shared by all levels, then objectness and box-delta 1x1 convs."""

    def __init__(self, *, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for conv in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """-> objectness ``(N, sum HWA)``, deltas ``(N, sum HWA, 4)``.

        The two 1x1 convolutions run as one of ``5A`` output channels (the
        same numbers, one pass over the 256-channel map; its backward reads
        that map once instead of twice).
        """
        a = self.objectness.out_channels
        weight = torch.cat((self.objectness.weight, self.deltas.weight))
        bias = torch.cat((self.objectness.bias, self.deltas.bias))
        logits, deltas = [], []
        for x in features:
            t = torch.relu_(self.conv(x))
            y = dense_gradient(F.conv2d(t, weight, bias))  # (N, 5A, H, W)
            n, _, h, w = y.shape
            y = y.permute(0, 2, 3, 1)  # (N, H, W, 5A): channels A + A*4, location-major
            logits.append(y[..., :a].reshape(n, -1))
            # deltas' channel c = anchor * 4 + coordinate -> (N, H*W*A, 4)
            deltas.append(y[..., a:].reshape(n, h * w * a, 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


def dense_gradient(x: Tensor) -> Tensor:
    """``x``, whose gradient is made dense in ``x``'s memory format before it flows back.

    The flattened head outputs are concatenated over levels, so each level's
    gradient arrives as a strided slice of the whole; oneDNN's convolution
    backward takes a slow path for such strides (a 1x1 convolution on P2:
    142 ms instead of 45 in a batch-2 training step). A copy of the small
    gradient is cheaper.
    """
    if x.requires_grad:
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        x.register_hook(lambda grad: grad.contiguous(memory_format=layout))
    return x


@dataclass(frozen=True)
class TopK:
    """How many proposals survive: the best ``pre_nms`` of each level, the best ``post_nms`` after NMS."""

    pre_nms: int  # per level and image
    post_nms: int  # per image, over all levels


@dataclass
class RPNOutput:
    """The head's outputs over all levels, with the anchors they refer to.

    ``logits (N, T)``, ``deltas (N, T, 4)``, ``anchors`` per level ``(T_l, 4)``
    with ``sum_l T_l = T``, in the head's order.
    """

    logits: Tensor
    deltas: Tensor
    anchors: list[Tensor]


class RPN(nn.Module):
    """Head, anchors, training targets and proposal selection."""

    def __init__(
        self,
        *,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        box_coder: BoxCoder,
        sampler: BalancedSampler,
        smooth_l1_beta: float,
        nms_thresh: float,
        min_box_size: float,
        min_box_size_strict: bool,
        train_topk: TopK,
        test_topk: TopK,
    ) -> None:
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.sampler = sampler
        self.smooth_l1_beta = smooth_l1_beta
        self.nms_thresh = nms_thresh
        self.min_box_size = min_box_size
        self.min_box_size_strict = min_box_size_strict
        self.train_topk = train_topk
        self.test_topk = test_topk

    def forward(self, features: list[Tensor], padded_size: tuple[int, int]) -> RPNOutput:
        """The head on every level, and the anchors of a padded batch of ``padded_size`` ``(H, W)``."""
        logits, deltas = self.head(features)
        shapes = [(f.shape[-2], f.shape[-1]) for f in features]
        return RPNOutput(logits, deltas, self.anchor_generator(shapes, padded_size, features[0].device))

    def loss(
        self, features: list[Tensor], batch: ImageBatch, targets: list[Targets]
    ) -> tuple[list[Proposals], dict[str, Tensor]]:
        """Training: the box head's proposals (training's top-k), and the two RPN losses."""
        out = self(features, batch.padded_size)
        losses = rpn_loss(out, targets, sampler=self.sampler, box_coder=self.box_coder,
                          smooth_l1_beta=self.smooth_l1_beta)
        return self.propose(out, batch.image_sizes, self.train_topk), losses

    def predict(self, features: list[Tensor], batch: ImageBatch) -> list[Proposals]:
        """Inference: proposals of every image (inference's top-k)."""
        return self.propose(self(features, batch.padded_size), batch.image_sizes, self.test_topk)

    def propose(self, out: RPNOutput, image_sizes: list[tuple[int, int]], topk: TopK) -> list[Proposals]:
        """Select proposals from the head's outputs (no gradient flows through them).

        Per image: the ``topk.pre_nms`` best anchors of each level by objectness,
        decoded, clipped to the image, small and non-finite boxes dropped, NMS
        within each level, then the ``topk.post_nms`` best over all levels.
        """
        # float32 whatever the network's type, so that the sigmoid, decoding and NMS that follow
        # are float32 arithmetic (model.precision).
        logits = widened(out.logits.detach())
        deltas = widened(out.deltas.detach())
        # Top-k per level, for all images at once.
        picked, levels, start = [], [], 0
        for level, a in enumerate(out.anchors):
            count = a.shape[0]
            k = min(topk.pre_nms, count)
            picked.append(best_first(logits[:, start : start + count], k) + start)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=logits.device))
            start += count
        index = torch.cat(picked, dim=1)  # (N, sum_l k_l)
        level = torch.cat(levels)
        all_anchors = torch.cat(out.anchors)
        scores = logits.gather(1, index)
        result = []
        for i, size in enumerate(image_sizes):
            boxes = self.box_coder.decode(deltas[i, index[i]], all_anchors[index[i]])
            s, lvl = scores[i], level
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(s)
            boxes, s, lvl = boxes[finite], s[finite], lvl[finite]
            boxes = clip_boxes(boxes, size)
            keep = large_enough(boxes, self.min_box_size, self.min_box_size_strict)
            boxes, s, lvl = boxes[keep], s[keep], lvl[keep]
            keep = batched_nms(boxes, s, lvl, self.nms_thresh)[: topk.post_nms]
            result.append(Proposals(boxes[keep], torch.sigmoid(s[keep])))
        return result


def best_first(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest ``scores`` of each row, highest first, equal scores by index.

    ``topk`` leaves the order of equal scores (and which of them make the cut)
    to the implementation; ONNX's TopK puts the lower index first. Flat image
    regions give many exactly equal logits, so the exported model and this
    one agree only if both break ties the same way.
    """
    if not 0 < k < scores.shape[1] or scores.isnan().any():
        return scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
    # Only scores at least the k-th highest can make the cut (all of them: ties at
    # the k-th included); sorting those alone, stably and in index order, gives the
    # full stable sort's first k at a fraction of its cost on P2's 160k anchors.
    kth = scores.topk(k, dim=1, sorted=False).values.amin(dim=1)
    rows = []
    for row, bar in zip(scores, kth, strict=True):
        candidates = (row >= bar).nonzero(as_tuple=True)[0]
        rows.append(candidates[row[candidates].sort(descending=True, stable=True).indices[:k]])
    return torch.stack(rows) if rows else scores.new_zeros((0, k), dtype=torch.int64)


def rpn_loss(
    out: RPNOutput,
    targets: list[Targets],
    *,
    sampler: BalancedSampler,
    box_coder: BoxCoder,
    smooth_l1_beta: float,
) -> dict[str, Tensor]:
    """Objectness and box losses over the sampled anchors of every image.

    Both are normalised by the number of sampled anchors (positives and
    negatives), so that the box loss weighs each positive anchor the same
    whatever the mix, as in Faster R-CNN's Eq. 1 with lambda balancing.
    """
    all_anchors = torch.cat(out.anchors)
    box_targets, sampled_pos, sampled_neg = [], [], []
    offset = 0
    for t in targets:
        m, pos, neg = sampler(all_anchors, t.boxes, t.crowd_boxes, t.generator(salt=1))
        if len(t) > 0:
            box_targets.append(box_coder.encode(all_anchors[pos], t.boxes[m.index[pos]]))
        else:
            box_targets.append(all_anchors.new_zeros((0, 4)))
        sampled_pos.append(pos + offset)
        sampled_neg.append(neg + offset)
        offset += all_anchors.shape[0]
    pos = torch.cat(sampled_pos)
    neg = torch.cat(sampled_neg)
    sampled = torch.cat((pos, neg))
    flat_logits = out.logits.reshape(-1)
    objectness_target = torch.cat((torch.ones_like(pos), torch.zeros_like(neg))).to(flat_logits.dtype)
    normaliser = global_normaliser(sampled.numel(), flat_logits.device)
    loss_objectness = F.binary_cross_entropy_with_logits(
        flat_logits[sampled], objectness_target, reduction="sum"
    ) / normaliser
    box = box_regression_loss(out.deltas.reshape(-1, 4)[pos], torch.cat(box_targets), smooth_l1_beta)
    return {"loss_rpn_objectness": loss_objectness, "loss_rpn_box": box / normaliser}
