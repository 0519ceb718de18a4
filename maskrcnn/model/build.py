"""Config -> modules: the whole detector visible at once. The only reader of ``ModelConfig``.

Every object below is built with all of its numbers in sight, stage by stage
as in Figure 1: backbone (+ FPN), RPN, box branch, mask branch, keypoint
branch. The constructors take plain typed values; nothing here is looked up by
name.
"""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig, PoolerConfig, SamplerConfig
from ..ops.boxes import BoxCoder
from ..ops.matching import BalancedSampler
from .anchors import AnchorGenerator
from .backbone import ResNet, init_convs, resnet_stage, stage_channels
from .box_head import BoxBranch, BoxHead
from .fpn import FPN, BackboneWithFPN, SingleMapBackbone
from .keypoint_head import KeypointBranch, KeypointHead
from .mask_head import MaskBranch, MaskHead, mask_channels
from .mask_rcnn import MaskRCNN
from .poolers import MultiLevelRoIPooler
from .rpn import RPN, RPNHead, TopK


def build_pooler(cfg: PoolerConfig, strides: tuple[int, ...]) -> MultiLevelRoIPooler:
    return MultiLevelRoIPooler(
        kind=cfg.kind,
        strides=strides[:4],  # P2..P5: P6 serves the RPN only
        resolution=cfg.resolution,
        sampling_ratio=cfg.sampling_ratio,
        aligned=cfg.aligned,
        canonical_box_size=cfg.canonical_box_size,
        canonical_level=cfg.canonical_level,
        level_eps=cfg.level_eps,
    )


def build_sampler(cfg: SamplerConfig) -> BalancedSampler:
    return BalancedSampler(
        fg_iou_thresh=cfg.fg_iou_thresh,
        bg_iou_thresh=cfg.bg_iou_thresh,
        batch_size_per_image=cfg.batch_size_per_image,
        positive_fraction=cfg.positive_fraction,
        allow_low_quality_matches=cfg.allow_low_quality_matches,
        crowd_ioa_thresh=cfg.crowd_ioa_thresh,
    )


def build_model(cfg: ModelConfig) -> MaskRCNN:
    b = cfg.backbone
    # --- Backbone: ResNet, with FPN P2-P6, or one stride-16 map (C4, or DC5's dilated C5).
    match cfg.architecture:
        case "fpn" | "dc5" | "c4":
            pass
        case _:
            raise ValueError(f"unknown architecture {cfg.architecture!r}: expected fpn, c4 or dc5")
    body = ResNet(
        depth=b.depth, groups=b.groups, width_per_group=b.width_per_group,
        stride_in_1x1=b.stride_in_1x1, norm=b.norm, eps=b.norm_eps, freeze_at=b.freeze_at,
        base_channels=b.base_channels,
        num_stages=3 if cfg.architecture == "c4" else 4,  # C4: res5 runs per RoI instead
        res5_dilation=2 if cfg.architecture == "dc5" else 1,  # DC5: C5 keeps stride 16
    )
    if cfg.architecture == "fpn":
        strides: tuple[int, ...] = cfg.fpn.strides
        channels = cfg.fpn.out_channels
        backbone: nn.Module = BackboneWithFPN(
            body=body, fpn=FPN(in_channels=body.out_channels, out_channels=channels), strides=strides
        )
        anchor_sizes: tuple[tuple[float, ...], ...] = tuple((s,) for s in cfg.anchors.sizes)
    else:
        strides = (16,)
        channels = body.out_channels[-1]
        backbone = SingleMapBackbone(body=body, stride=16)
        anchor_sizes = (tuple(cfg.anchors.sizes),)  # every anchor size on the one map

    # --- RPN.
    r = cfg.rpn
    anchors = AnchorGenerator(
        sizes=anchor_sizes, aspect_ratios=cfg.anchors.aspect_ratios, strides=strides,
        round_to_int=cfg.anchors.round_to_int, offset=cfg.anchors.offset, stride_rule=cfg.anchors.stride_rule,
    )
    rpn = RPN(
        head=RPNHead(in_channels=channels, num_anchors=anchors.num_anchors),
        anchor_generator=anchors,
        box_coder=BoxCoder(r.box_weights),
        sampler=build_sampler(r.sampler),
        smooth_l1_beta=r.smooth_l1_beta,
        nms_thresh=r.nms_thresh,
        min_box_size=r.min_box_size,
        min_box_size_strict=r.min_box_size_strict,
        train_topk=TopK(pre_nms=r.pre_nms_topk_train, post_nms=r.post_nms_topk_train),
        test_topk=TopK(pre_nms=r.pre_nms_topk_test, post_nms=r.post_nms_topk_test),
    )

    # --- Shared RoI stage: C4 runs res5 on every pooled RoI (Figure 4, left).
    roi_shared = None
    roi_channels = channels
    if cfg.architecture == "c4":
        roi_shared = resnet_stage(
            3, channels, depth=b.depth, groups=b.groups, width_per_group=b.width_per_group,
            stride_in_1x1=b.stride_in_1x1, norm=b.norm, eps=b.norm_eps, base_channels=b.base_channels,
        )
        init_convs(roi_shared)
        roi_channels = stage_channels(3, b.depth, b.base_channels)

    # --- Box branch.
    bh = cfg.box_head
    box = BoxBranch(
        pooler=build_pooler(bh.pooler, strides),
        head=BoxHead(in_channels=roi_channels, resolution=bh.pooler.resolution, fc_dim=bh.fc_dim,
                     num_classes=cfg.num_classes, num_fc=bh.num_fc),
        box_coder=BoxCoder(bh.box_weights),
        sampler=build_sampler(bh.sampler),
        smooth_l1_beta=bh.smooth_l1_beta,
        score_thresh=bh.score_thresh,
        nms_thresh=bh.nms_thresh,
        detections_per_image=bh.detections_per_image,
        min_box_size=bh.min_box_size,
    )

    # --- Mask branch.
    mh = cfg.mask_head
    mask = None if mh is None else MaskBranch(
        pooler=build_pooler(mh.pooler, strides),
        head=MaskHead(in_channels=roi_channels, conv_dims=mh.conv_dims, deconv_dim=mh.deconv_dim,
                      num_masks=mask_channels(mh.representation, cfg.num_classes)),
        representation=mh.representation,
        target_rule=mh.target_rule,
        paste_rule=mh.paste_rule,
        threshold=mh.threshold,
    )

    # --- Keypoint branch (Keypoint R-CNN): pools the backbone's maps directly (never C4's res5).
    kh = cfg.keypoint_head
    keypoint = None if kh is None else KeypointBranch(
        pooler=build_pooler(kh.pooler, strides),
        head=KeypointHead(in_channels=channels, conv_dims=kh.conv_dims, num_keypoints=kh.num_keypoints),
    )

    return MaskRCNN(
        backbone=backbone, rpn=rpn, roi_shared=roi_shared, box=box, mask=mask, keypoint=keypoint,
        clip_to_original=cfg.clip_to_original,
    )
