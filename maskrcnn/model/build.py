"""Config -> modules: the whole detector visible at once. The only reader of ``ModelConfig``."""

from __future__ import annotations

from typing import get_args

from torch import nn

from ..config import Architecture, ModelConfig, PoolerConfig
from ..ops.boxes import BoxCoder
from .anchors import AnchorGenerator
from .backbone import ResNet, init_convs, resnet_stage, stage_channels
from .box_head import BoxHead
from .fpn import FPN, BackboneWithFPN, SingleMapBackbone
from .keypoint_head import KeypointHead
from .mask_head import MaskHead, mask_channels
from .mask_rcnn import InferenceSettings, MaskRCNN, TrainingSettings
from .poolers import MultiLevelRoIPooler
from .rpn import RPN, RPNHead


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


def build_model(cfg: ModelConfig) -> MaskRCNN:
    if cfg.architecture not in get_args(Architecture):
        choices = ", ".join(get_args(Architecture))
        raise ValueError(f"unknown architecture {cfg.architecture!r}: expected one of {choices}")
    b = cfg.backbone
    c4 = cfg.architecture == "c4"
    body = ResNet(
        depth=b.depth, groups=b.groups, width_per_group=b.width_per_group,
        stride_in_1x1=b.stride_in_1x1, norm=b.norm, eps=b.norm_eps, freeze_at=b.freeze_at,
        base_channels=b.base_channels, num_stages=3 if c4 else 4,
        # DC5: res5 dilated by 2 instead of subsampling, so C5 keeps C4's stride 16.
        res5_dilation=2 if cfg.architecture == "dc5" else 1,
    )
    roi_shared = None
    if cfg.architecture == "fpn":
        strides: tuple[int, ...] = cfg.fpn.strides
        channels = roi_channels = cfg.fpn.out_channels
        backbone: nn.Module = BackboneWithFPN(
            body=body, fpn=FPN(in_channels=body.out_channels, out_channels=channels), strides=strides
        )
        anchor_sizes: tuple[tuple[float, ...], ...] = tuple((s,) for s in cfg.anchors.sizes)
    else:
        # C4 and DC5: one feature map of stride 16 (C4, or the dilated C5) with all anchor sizes.
        strides = (16,)
        backbone = SingleMapBackbone(body=body, stride=16)
        anchor_sizes = (tuple(cfg.anchors.sizes),)
        channels = roi_channels = body.out_channels[-1]
    if c4:
        # res5 runs on each RoI's 14x14 C4 features (Figure 4, left).
        roi_shared = resnet_stage(
            3, channels, depth=b.depth, groups=b.groups, width_per_group=b.width_per_group,
            stride_in_1x1=b.stride_in_1x1, norm=b.norm, eps=b.norm_eps, base_channels=b.base_channels,
        )
        init_convs(roi_shared)
        roi_channels = stage_channels(3, b.depth, b.base_channels)
    anchors = AnchorGenerator(
        sizes=anchor_sizes, aspect_ratios=cfg.anchors.aspect_ratios, strides=strides,
        round_to_int=cfg.anchors.round_to_int, offset=cfg.anchors.offset,
        stride_rule=cfg.anchors.stride_rule,
    )
    rpn = RPN(
        head=RPNHead(in_channels=channels, num_anchors=anchors.num_anchors),
        anchor_generator=anchors,
        box_coder=BoxCoder(cfg.rpn.box_weights),
        nms_thresh=cfg.rpn.nms_thresh,
        min_box_size=cfg.rpn.min_box_size,
        min_box_size_strict=cfg.rpn.min_box_size_strict,
    )
    bh = cfg.box_head
    box_head = BoxHead(
        in_channels=roi_channels, resolution=bh.pooler.resolution, fc_dim=bh.fc_dim,
        num_classes=cfg.num_classes, num_fc=bh.num_fc,
    )
    mh = cfg.mask_head
    mask_head = None
    mask_pooler = None
    if mh is not None:
        mask_pooler = build_pooler(mh.pooler, strides)
        mask_head = MaskHead(in_channels=roi_channels, conv_dims=mh.conv_dims, deconv_dim=mh.deconv_dim,
                             num_masks=mask_channels(mh.loss, cfg.num_classes))
    kh = cfg.keypoint_head
    keypoint_head = None
    keypoint_pooler = None
    if kh is not None:
        keypoint_pooler = build_pooler(kh.pooler, strides)
        keypoint_head = KeypointHead(in_channels=channels, conv_dims=kh.conv_dims,
                                     num_keypoints=kh.num_keypoints)
    inference = InferenceSettings(
        rpn_pre_nms_topk=cfg.rpn.pre_nms_topk_test,
        rpn_post_nms_topk=cfg.rpn.post_nms_topk_test,
        box_coder=BoxCoder(bh.box_weights),
        score_thresh=bh.score_thresh,
        nms_thresh=bh.nms_thresh,
        detections_per_image=bh.detections_per_image,
        min_box_size=bh.min_box_size,
        paste_rule=mh.paste_rule if mh is not None else "torchvision",
        mask_threshold=mh.threshold if mh is not None else 0.5,
        mask_loss=mh.loss if mh is not None else "sigmoid",
        clip_to_original=cfg.clip_to_original,
    )
    training = TrainingSettings(
        rpn_pre_nms_topk=cfg.rpn.pre_nms_topk_train,
        rpn_post_nms_topk=cfg.rpn.post_nms_topk_train,
        rpn_box_coder=BoxCoder(cfg.rpn.box_weights),
        rpn_fg_iou_thresh=cfg.rpn.fg_iou_thresh,
        rpn_bg_iou_thresh=cfg.rpn.bg_iou_thresh,
        rpn_batch_size_per_image=cfg.rpn.batch_size_per_image,
        rpn_positive_fraction=cfg.rpn.positive_fraction,
        rpn_smooth_l1_beta=cfg.rpn.smooth_l1_beta,
        rpn_crowd_ioa_thresh=cfg.rpn.crowd_ioa_thresh,
        box_coder=BoxCoder(bh.box_weights),
        roi_fg_iou_thresh=bh.fg_iou_thresh,
        roi_bg_iou_thresh=bh.bg_iou_thresh,
        roi_batch_size_per_image=bh.batch_size_per_image,
        roi_positive_fraction=bh.positive_fraction,
        roi_smooth_l1_beta=bh.smooth_l1_beta,
        roi_crowd_ioa_thresh=bh.crowd_ioa_thresh,
        # The deconv doubles the RoI map: 14 -> 28 with FPN; C4's res5 first halves it (14 -> 7 -> 14).
        mask_size=(mh.pooler.resolution if c4 else 2 * mh.pooler.resolution) if mh is not None else 0,
        mask_loss=mh.loss if mh is not None else "sigmoid",
    )
    return MaskRCNN(
        training=training,
        backbone=backbone,
        rpn=rpn,
        box_pooler=build_pooler(bh.pooler, strides),
        roi_shared=roi_shared,
        box_head=box_head,
        mask_pooler=mask_pooler,
        mask_head=mask_head,
        keypoint_pooler=keypoint_pooler,
        keypoint_head=keypoint_head,
        inference=inference,
    )
