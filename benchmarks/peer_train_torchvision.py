"""The torchvision side of ``bench_train_balloon.py``: train a Mask R-CNN built from torchvision's parts.

Run only with the peer virtual environment (it imports nothing from ``maskrcnn``)::

    .peer-venv/bin/python benchmarks/peer_train_torchvision.py --settings SETTINGS.json \\
        --train-json TRAIN.json --train-images DIR --val-json VAL.json --val-images DIR \\
        [--threads 2] [--resnet-width 32|64] [--decay-all] [--match-init] [--out RESULT.json]

``SETTINGS.json`` is ``{"model": ModelConfig.to_dict(), "solver": SolverConfig.to_dict()}``
of our ``maskrcnn train`` command line (``bench_train_balloon.py`` writes it),
so the architecture, the input size and the whole schedule are read from the
same numbers our side trains with. The model is
``torchvision.models.detection.MaskRCNN`` over ``BackboneWithFPN`` (a
group-norm ResNet-18, FPN with ``LastLevelMaxPool``), with torchvision's
``AnchorGenerator``, ``RPNHead``, ``TwoMLPHead``, ``FastRCNNPredictor``,
``MaskRCNNHeads`` and ``MaskRCNNPredictor``, all at torchvision's own
initialisation (no pretrained weights anywhere; ``--match-init`` gives the
few layers whose initialisation differs from ours, the box head and the
class, box and mask predictors, our initialisation instead).

torchvision's ``resnet18`` has a 64-wide stem and no option to change it;
with ``--resnet-width 32`` (the default, our demo preset's width) the stem
and the four stages are rebuilt at half width from torchvision's own
``BasicBlock`` with the same wiring and the same initialisation as
torchvision's ``ResNet`` (Kaiming-normal fan-out convolutions, norm weights 1
and biases 0). ``--resnet-width 64`` keeps ``resnet18`` exactly as
torchvision builds it.

Training: SGD with momentum, the learning rate ``lr * warmup(i) * gamma ** decays(i)``
set before every iteration (linear warm-up from ``warmup_factor``, steps at
``round(fraction * iterations)``), weight decay on convolution and linear
weights only, as our trainer does (``--decay-all``: on every parameter, the
default of torchvision's reference scripts). Batches come from an endless
seeded shuffle grouped by orientation (landscape / portrait), each image
flipped horizontally with probability ``flip_prob`` (decided in the sampler, so
the run is deterministic for any number of workers); a ``DataLoader`` with
``num_workers`` workers reads and decodes them. The model resizes and
normalises (``GeneralizedRCNNTransform``).

Afterwards the model runs in eval mode on every validation image (batch 1)
and pycocotools' ``COCOeval`` gives box and mask AP (masks thresholded at
0.5, RLE-encoded). One JSON line goes to stdout (and to ``--out``):
iterations, batch size, seconds per iteration, total train seconds, the
validation metrics on pycocotools' 0-1 scale, parameter counts, versions.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.resnet import BasicBlock, resnet18
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RESULT_FIELDS = {"bbox": "bbox", "segm": "segmentation"}


# ---------------------------------------------------------------------------
# Data


def read_rgb(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB with the EXIF orientation applied."""
    with Image.open(path) as image:
        return np.array(ImageOps.exif_transpose(image).convert("RGB"))


def load_coco(json_path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Image records with their annotations, and the sorted category ids (label ``i + 1`` is ``ids[i]``)."""
    data = json.loads(json_path.read_text())
    categories = sorted(c["id"] for c in data["categories"])
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    records = [{**image, "annotations": by_image.get(image["id"], [])} for image in data["images"]]
    return records, categories


def instance_targets(record: dict[str, Any], label_of: dict[int, int]) -> dict[str, torch.Tensor]:
    """``boxes (M, 4)`` XYXY clipped to the image, ``labels (M,)``, ``masks (M, H, W)`` uint8.

    Crowd annotations and boxes with no area after clipping are left out.
    """
    h, w = record["height"], record["width"]
    boxes, labels, masks = [], [], []
    for ann in record["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        x, y, bw, bh = ann["bbox"]
        x0, y0, x1, y1 = min(max(x, 0), w), min(max(y, 0), h), min(max(x + bw, 0), w), min(max(y + bh, 0), h)
        if x1 <= x0 or y1 <= y0:
            continue
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
        elif isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, h, w)
        else:
            rle = segmentation
        boxes.append([x0, y0, x1, y1])
        labels.append(label_of[ann["category_id"]])
        masks.append(mask_utils.decode(rle))
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8),
    }


class TrainSet(Dataset):
    """Items keyed by ``(index, flip)``: the image, float ``(3, H, W)`` in [0, 1], and its targets."""

    def __init__(self, records: list[dict[str, Any]], image_dir: Path, categories: list[int]) -> None:
        self.records = records
        self.image_dir = image_dir
        self.label_of = {cat: i + 1 for i, cat in enumerate(categories)}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, bool]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, flip = key
        record = self.records[index]
        array = read_rgb(self.image_dir / record["file_name"])
        if array.shape[:2] != (record["height"], record["width"]):
            raise ValueError(f"{record['file_name']}: image is {array.shape[1]}x{array.shape[0]}, "
                             f"annotations are for {record['width']}x{record['height']}")
        image = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
        target = instance_targets(record, self.label_of)
        if flip:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes = target["boxes"].clone()
            boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
            target = {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}
        return image.contiguous(), target


class GroupedShuffle(Sampler):
    """Endless batches of ``(index, flip)``: a seeded reshuffle per epoch, landscape and portrait apart."""

    def __init__(self, records: list[dict[str, Any]], batch_size: int, flip_prob: float, seed: int) -> None:
        self.groups = [0 if r["width"] >= r["height"] else 1 for r in records]
        self.batch_size = batch_size
        self.flip_prob = flip_prob
        self.seed = seed

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        generator = torch.Generator().manual_seed(self.seed)
        buckets: tuple[list[tuple[int, bool]], list[tuple[int, bool]]] = ([], [])
        while True:
            for index in torch.randperm(len(self.groups), generator=generator).tolist():
                flip = bool(torch.rand((), generator=generator) < self.flip_prob)
                bucket = buckets[self.groups[index]]
                bucket.append((index, flip))
                if len(bucket) == self.batch_size:
                    yield bucket[:]
                    bucket.clear()


def collate(items: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    return [image for image, _ in items], [target for _, target in items]


# ---------------------------------------------------------------------------
# Model


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


def narrow_resnet18(width: int) -> nn.Module:
    """torchvision's ``resnet18`` with group norm; stem and stages rebuilt at ``width`` (64: as published)."""
    body = resnet18(weights=None, norm_layer=group_norm)
    if width == 64:
        return body
    body.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    body.bn1 = group_norm(width)
    inplanes = width
    for stage in range(4):
        planes = width * 2**stage
        stride = 1 if stage == 0 else 2
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                       group_norm(planes))
        blocks = [BasicBlock(inplanes, planes, stride, downsample, norm_layer=group_norm),
                  BasicBlock(planes, planes, norm_layer=group_norm)]
        setattr(body, f"layer{stage + 1}", nn.Sequential(*blocks))
        inplanes = planes
    # torchvision's ResNet initialisation.
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.GroupNorm):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return body


def check_supported(model_cfg: dict[str, Any]) -> None:
    """Refuse settings this torchvision model cannot reproduce (rather than train something else)."""
    inp, bb = model_cfg["input"], model_cfg["backbone"]
    problems = []
    if bb["depth"] != 18 or bb["norm"] != "gn" or bb["freeze_at"] != 0 or bb["groups"] != 1:
        problems.append("backbone must be a trainable group-norm ResNet-18 (depth 18, norm gn, freeze_at 0)")
    if inp["resize_rule"] != "torchvision" or inp["channel_order"] != "RGB" or inp["pixel_range"] != 1.0:
        problems.append("input must use the torchvision resize rule, RGB and pixels in [0, 1]")
    if inp["size_divisibility"] != 32:
        problems.append("size_divisibility must be 32")
    if model_cfg["mask_head"] is None:
        problems.append("a mask head is required")
    for pooler in (model_cfg["box_head"]["pooler"], (model_cfg["mask_head"] or {}).get("pooler")):
        if pooler and (pooler["kind"] != "roi_align" or pooler["aligned"] or pooler["canonical_level"] != 4
                       or pooler["canonical_box_size"] != 224):
            problems.append("poolers must be torchvision's RoIAlign (aligned=False, level 4 at 224 px)")
    if model_cfg["rpn"]["box_weights"] != [1.0, 1.0, 1.0, 1.0]:
        problems.append("RPN box weights must be (1, 1, 1, 1)")
    if problems:
        raise SystemExit("error: unsupported settings: " + "; ".join(problems))


def build_model(model_cfg: dict[str, Any], resnet_width: int) -> MaskRCNN:
    check_supported(model_cfg)
    num_classes = model_cfg["num_classes"] + 1  # torchvision counts the background
    inp, rpn, box, mask = model_cfg["input"], model_cfg["rpn"], model_cfg["box_head"], model_cfg["mask_head"]
    channels = model_cfg["fpn"]["out_channels"]
    body = narrow_resnet18(resnet_width)
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[resnet_width * 2**i for i in range(4)],
        out_channels=channels,
        extra_blocks=LastLevelMaxPool(),
    )
    sizes = tuple((int(s),) for s in model_cfg["anchors"]["sizes"])
    ratios = (tuple(model_cfg["anchors"]["aspect_ratios"]),) * len(sizes)
    anchors = AnchorGenerator(sizes, ratios)
    names = ["0", "1", "2", "3"]
    box_res, mask_res = box["pooler"]["resolution"], mask["pooler"]["resolution"]
    conv_dims = list(mask["conv_dims"])
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=tuple(inp["train_min_sizes"]),
        max_size=inp["max_size"],
        image_mean=list(inp["pixel_mean"]),
        image_std=list(inp["pixel_std"]),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=rpn["pre_nms_topk_train"],
        rpn_pre_nms_top_n_test=rpn["pre_nms_topk_test"],
        rpn_post_nms_top_n_train=rpn["post_nms_topk_train"],
        rpn_post_nms_top_n_test=rpn["post_nms_topk_test"],
        rpn_nms_thresh=rpn["nms_thresh"],
        rpn_fg_iou_thresh=rpn["sampler"]["fg_iou_thresh"],
        rpn_bg_iou_thresh=rpn["sampler"]["bg_iou_thresh"],
        rpn_batch_size_per_image=rpn["sampler"]["batch_size_per_image"],
        rpn_positive_fraction=rpn["sampler"]["positive_fraction"],
        box_roi_pool=MultiScaleRoIAlign(names, box_res, box["pooler"]["sampling_ratio"]),
        box_head=TwoMLPHead(channels * box_res * box_res, box["fc_dim"]),
        box_predictor=FastRCNNPredictor(box["fc_dim"], num_classes),
        box_score_thresh=box["score_thresh"],
        box_nms_thresh=box["nms_thresh"],
        box_detections_per_img=box["detections_per_image"],
        box_fg_iou_thresh=box["sampler"]["fg_iou_thresh"],
        box_bg_iou_thresh=box["sampler"]["bg_iou_thresh"],
        box_batch_size_per_image=box["sampler"]["batch_size_per_image"],
        box_positive_fraction=box["sampler"]["positive_fraction"],
        bbox_reg_weights=tuple(box["box_weights"]),
        mask_roi_pool=MultiScaleRoIAlign(names, mask_res, mask["pooler"]["sampling_ratio"]),
        mask_head=MaskRCNNHeads(channels, conv_dims, 1),
        mask_predictor=MaskRCNNPredictor(conv_dims[-1], conv_dims[-1], num_classes),
    )


def match_head_init(model: MaskRCNN) -> None:
    """Re-initialise the layers whose torchvision initialisation differs from ours.

    torchvision leaves ``TwoMLPHead`` and ``FastRCNNPredictor`` at ``nn.Linear``'s
    default and gives the mask logits a Kaiming-normal fill; ours uses a
    Kaiming-uniform (a=1) fill for the two fc layers, N(0, 0.01) class scores,
    N(0, 0.001) box deltas and N(0, 0.001) mask logits, biases 0. Every other
    layer starts alike on both sides.
    """
    heads = model.roi_heads
    for fc in (heads.box_head.fc6, heads.box_head.fc7):
        nn.init.kaiming_uniform_(fc.weight, a=1)
        nn.init.zeros_(fc.bias)
    for layer, std in ((heads.box_predictor.cls_score, 0.01), (heads.box_predictor.bbox_pred, 0.001),
                       (heads.mask_predictor.mask_fcn_logits, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """All parameters and the trainable ones (``BackboneWithFPN`` keeps the ResNet only up to ``layer4``)."""
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


# ---------------------------------------------------------------------------
# Training


def lr_factor(iteration: int, solver: dict[str, Any]) -> float:
    """Linear warm-up from ``warmup_factor`` over ``warmup_iters``, times ``gamma`` per step passed."""
    factor = 1.0
    if iteration < solver["warmup_iters"]:
        alpha = iteration / solver["warmup_iters"]
        factor = solver["warmup_factor"] * (1 - alpha) + alpha
    passed = sum(iteration >= round(step * solver["iterations"]) for step in solver["steps"])
    return factor * solver["gamma"] ** passed


def parameter_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict[str, Any]]:
    if decay_all:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, rest = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                norm = isinstance(module, nn.GroupNorm | nn.BatchNorm2d)
                (rest if norm or name == "bias" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train(model: MaskRCNN, loader: DataLoader, solver: dict[str, Any], decay_all: bool
          ) -> tuple[list[float], list[dict[str, float]]]:
    """Per-iteration wall times (data wait included) and the mean losses of each logging window."""
    lr = solver["base_lr"] * solver["batch_size"] / solver["reference_batch_size"]
    optimizer = torch.optim.SGD(parameter_groups(model, solver["weight_decay"], decay_all),
                                lr=lr, momentum=solver["momentum"])
    model.train()
    times: list[float] = []
    log: list[dict[str, float]] = []
    window: dict[str, float] = {}
    batches = iter(loader)
    for iteration in range(solver["iterations"]):
        start = time.perf_counter()
        images, targets = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(iteration, solver)
        losses = model(images, targets)
        total = sum(losses.values())
        if not torch.isfinite(total):
            values = {k: float(v) for k, v in losses.items()}
            raise SystemExit(f"error: non-finite loss at iteration {iteration}: {values}")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if solver["clip_grad_norm"] > 0:
            nn.utils.clip_grad_norm_(model.parameters(), solver["clip_grad_norm"])
        optimizer.step()
        times.append(time.perf_counter() - start)
        for k, v in losses.items():
            window[k] = window.get(k, 0.0) + float(v.detach())
        window["total_loss"] = window.get("total_loss", 0.0) + float(total.detach())
        done = iteration + 1
        period = solver["log_period"]
        if done % period == 0 or done == solver["iterations"]:
            n = period if done % period == 0 else done % period
            record = {"iteration": done, "lr": optimizer.param_groups[0]["lr"],
                      **{k: v / n for k, v in window.items()}, "seconds_per_iteration": sum(times[-n:]) / n}
            log.append(record)
            print(json.dumps(record), file=sys.stderr, flush=True)
            window = {}
    return times, log


# ---------------------------------------------------------------------------
# Evaluation


@torch.inference_mode()
def predict_coco(model: MaskRCNN, gt: COCO, image_dir: Path, categories: list[int]) -> list[dict[str, Any]]:
    """COCO result records (``bbox`` XYWH, ``segmentation`` RLE of mask > 0.5) of every ground-truth image."""
    model.eval()
    results = []
    for entry in gt.dataset["images"]:
        array = read_rgb(image_dir / entry["file_name"])
        image = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
        out = model([image])[0]
        masks = (out["masks"][:, 0] > 0.5).numpy().astype(np.uint8)
        for box, score, label, mask in zip(out["boxes"].tolist(), out["scores"].tolist(),
                                           out["labels"].tolist(), masks, strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = box
            results.append({"image_id": entry["id"], "category_id": categories[label - 1], "score": score,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": rle})
    return results


def coco_ap(gt: COCO, results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """COCOeval box and mask metrics on the 0-1 scale (None where pycocotools says -1: no ground truth).

    Each kind is scored on records holding only its own field, so that mask AP
    bins detections by mask area (``loadRes`` takes the box's area otherwise).
    """
    metrics = {}
    for iou_type, key in RESULT_FIELDS.items():
        records = [{"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"],
                    key: copy.deepcopy(r[key])} for r in results]
        with contextlib.redirect_stdout(io.StringIO()):
            if records:
                detections = gt.loadRes(records)
            else:  # loadRes cannot take an empty list
                detections = COCO()
                detections.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                                      "annotations": []}
                detections.createIndex()
            evaluator = COCOeval(gt, detections, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics[iou_type] = {name: (None if v < 0 else float(v))
                             for name, v in zip(METRIC_NAMES, evaluator.stats[:6], strict=True)}
    return metrics


# ---------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", required=True, type=Path,
                   help='JSON {"model": ModelConfig dict, "solver": SolverConfig dict} '
                        "(bench_train_balloon.py writes it)")
    p.add_argument("--train-json", required=True, type=Path)
    p.add_argument("--train-images", required=True, type=Path)
    p.add_argument("--val-json", required=True, type=Path)
    p.add_argument("--val-images", required=True, type=Path)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--resnet-width", type=int, default=32, choices=(32, 64),
                   help="ResNet-18 stem width: 32 = our demo preset's, 64 = torchvision's resnet18 as is")
    p.add_argument("--decay-all", action="store_true",
                   help="weight decay on every parameter (torchvision reference default), "
                        "not on weights only")
    p.add_argument("--match-init", action="store_true",
                   help="initialise the box head, box predictor and mask logits as ours does")
    p.add_argument("--out", type=Path, help="also write the result JSON here")
    args = p.parse_args()

    wall_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    settings = json.loads(args.settings.read_text())
    model_cfg, solver = settings["model"], settings["solver"]
    torch.manual_seed(solver["seed"])

    records, categories = load_coco(args.train_json)
    records = [r for r in records if any(not a.get("iscrowd", 0) for a in r["annotations"])]
    if len(categories) != model_cfg["num_classes"]:
        raise SystemExit(f"error: {len(categories)} categories in {args.train_json}, "
                         f"{model_cfg['num_classes']} in the settings")
    model = build_model(model_cfg, args.resnet_width)
    if args.match_init:
        match_head_init(model)
    params, trainable = count_parameters(model)
    print(f"torchvision Mask R-CNN, ResNet-18 width {args.resnet_width}: {params} parameters; "
          f"{len(records)} training images", file=sys.stderr)

    loader = DataLoader(
        TrainSet(records, args.train_images, categories),
        batch_sampler=GroupedShuffle(records, solver["batch_size"], model_cfg["input"]["flip_prob"],
                                     solver["seed"]),
        num_workers=solver["num_workers"],
        collate_fn=collate,
        persistent_workers=solver["num_workers"] > 0,
    )
    train_start = time.perf_counter()
    times, log = train(model, loader, solver, args.decay_all)
    train_seconds = time.perf_counter() - train_start
    del loader

    eval_start = time.perf_counter()
    gt = COCO()
    gt.dataset = json.loads(args.val_json.read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    results = predict_coco(model, gt, args.val_images, categories)
    metrics: dict[str, Any] = dict(coco_ap(gt, results))
    metrics["images"] = len(gt.dataset["images"])
    metrics["detections"] = len(results)
    eval_seconds = time.perf_counter() - eval_start

    after = times[10:] or times
    period = solver["log_period"]
    windows = [sum(times[i:i + period]) / len(times[i:i + period]) for i in range(0, len(times), period)]
    result = {
        "framework": "torchvision",
        "iterations": solver["iterations"],
        "batch_size": solver["batch_size"],
        "seconds_per_iteration": statistics.median(after),
        "mean_seconds_per_iteration_after_10": sum(after) / len(after),
        "window_seconds_per_iteration": windows,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "wall_seconds": time.perf_counter() - wall_start,
        "metrics": metrics,
        "parameters": params,
        "trainable_parameters": trainable,
        "resnet_width": args.resnet_width,
        "head_init": "ours" if args.match_init else "torchvision",
        "weight_decay_on": "all parameters" if args.decay_all else "weights (not biases or norms)",
        "lr": solver["base_lr"] * solver["batch_size"] / solver["reference_batch_size"],
        "log": log,
        "threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__},
        "final_loss": log[-1]["total_loss"] if log else math.nan,
    }
    line = json.dumps(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
