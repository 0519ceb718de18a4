"""Make tests/reference/mask_targets.npz: Mask R-CNN mask-head training targets, by the peers' own code.

A mask target is "the RoI's window of its matched ground-truth mask, resampled
to S x S". This script draws random cases (a seeded ``numpy`` Generator) and
computes each RoI's target twice, with the peers' own functions:

- torchvision 0.29: ``torchvision.models.detection.roi_heads.project_masks_on_boxes``
  (RoIAlign unaligned, adaptive sampling; soft float32 targets);
- Detectron2: ``BitMasks(gt_masks[matched]).crop_and_resize(boxes, S)`` as
  ``mask_rcnn_loss`` calls it (ROIAlign aligned, sampling 0, then ``>= 0.5``; bool).

``tests/model/test_mask_targets.py`` checks ``maskrcnn.model.mask_head.mask_targets``
against them without either peer installed.

Runs in the peer virtualenv (``make peer-venv``) with Detectron2's source tree on
PYTHONPATH (pure Python is enough; its ROIAlign is torchvision's ``roi_align``).
From the repository root:

    mkdir -p /tmp/d2ref && git --git-dir=/work/.mirror/facebookresearch+detectron2/repo archive HEAD \
        | tar -x -C /tmp/d2ref        # or any Detectron2 checkout
    PYTHONPATH=/tmp/d2ref .peer-venv/bin/python tests/reference/tools/make_mask_targets.py \
        tests/reference/mask_targets.npz

The Detectron2 commit is read with ``git rev-parse HEAD`` of ``D2_GIT_DIR``
(default: the mirror above; "unknown" if it cannot be read).

Cases (``NUM_CASES``, seed ``SEED``): an image of ``H x W`` pixels, each side in
1..64 (1-pixel sides and non-square images included); 1-4 instances whose masks
are unions of random rectangles and ellipses (some empty, some full); 1-6 RoIs
with float32 boxes whose sides are drawn per axis from several kinds
(fractional, on pixel borders, on half or quarter pixels, tiny < 1 px or of
zero extent, past the image, outside it, the whole image), each with a random
matched instance; and the mask side S, 14 or 28.

The file holds, concatenated over cases (a case's rows follow the previous
case's; per-case counts give the offsets):

- ``versions``: a string array ``[torch, torchvision, detectron2 commit, numpy]``;
- ``seed``: the seed;
- ``case_hw (C, 2)`` int32 image ``(H, W)``; ``case_size (C,)`` S;
  ``case_instances (C,)`` M; ``case_rois (C,)`` R;
- ``masks_bits``: ``np.packbits`` of every case's ``(M, H, W)`` masks, flattened
  in C order and concatenated (``masks_count`` bits in all);
- ``roi_boxes (sum R, 4)`` float32 XYXY; ``roi_gt (sum R,)`` int64 matched
  instance; ``roi_classes (sum R,)`` int64 in 1..3 (any foreground class);
- ``tv_targets``: float32, every RoI's ``(S, S)`` torchvision target, flattened
  and concatenated;
- ``d2_bits``: ``np.packbits`` of every RoI's ``(S, S)`` Detectron2 target,
  flattened and concatenated (``d2_count`` bits);
- ``d2_near_half_index`` (int64), ``d2_near_half_value`` (float32): the flat
  positions (into the unpacked ``d2_bits``) where Detectron2's value before the
  ``>= 0.5`` lies within ``NEAR_HALF`` of 0.5, and that value. It is computed by
  calling the same ``ROIAlign`` module as ``crop_and_resize`` does, and checked
  here to binarise to exactly ``crop_and_resize``'s output. A different
  summation order can round such a value to the other side of 0.5.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch
import torchvision
from detectron2.layers import ROIAlign
from detectron2.structures import BitMasks
from torchvision.models.detection.roi_heads import project_masks_on_boxes

SEED = 20240611
NUM_CASES = 300
NEAR_HALF = 1e-6
D2_GIT_DIR = os.environ.get("D2_GIT_DIR", "/work/.mirror/facebookresearch+detectron2/repo")

BOX_KINDS = ["fractional", "border", "half", "quarter", "tiny", "zero", "past", "outside", "whole"]
BOX_WEIGHTS = np.array([6, 3, 2, 2, 2, 0.5, 2, 1, 1.5])


def image_side(rng: np.random.Generator) -> int:
    u = rng.random()
    if u < 0.08:
        return 1
    if u < 0.14:
        return 2
    if u < 0.22:
        return 64
    return int(rng.integers(3, 64))


def random_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A ``(h, w)`` uint8 mask: empty, full, or a union of 1-4 rectangles and ellipses."""
    u = rng.random()
    if u < 0.06:
        return np.zeros((h, w), np.uint8)
    if u < 0.12:
        return np.ones((h, w), np.uint8)
    m = np.zeros((h, w), bool)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(-0.2, 1.2) * h, rng.uniform(-0.2, 1.2) * w
        ry, rx = rng.uniform(0.05, 0.6) * h + 0.3, rng.uniform(0.05, 0.6) * w + 0.3
        if rng.random() < 0.5:
            m |= (np.abs(yy + 0.5 - cy) <= ry) & (np.abs(xx + 0.5 - cx) <= rx)
        else:
            m |= ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0
    return m.astype(np.uint8)


def box_side(rng: np.random.Generator, length: int) -> tuple[float, float]:
    """``(start, end)`` of a box along an image axis of ``length`` pixels, by a random kind."""
    kind = BOX_KINDS[rng.choice(len(BOX_KINDS), p=BOX_WEIGHTS / BOX_WEIGHTS.sum())]
    L = float(length)
    if kind == "fractional":
        a = rng.uniform(-0.2 * L, L)
        return a, a + rng.uniform(0.3, 1.2 * L + 1.0)
    if kind == "border":
        a = int(rng.integers(-2, length + 1))
        return float(a), float(a + rng.integers(1, length + 3))
    if kind == "half":
        a = int(rng.integers(-2, length + 1)) + 0.5
        return a, a + float(rng.integers(0, length + 3))
    if kind == "quarter":
        a = int(rng.integers(-4, 4 * length + 1)) / 4
        return a, a + int(rng.integers(1, 4 * length + 8)) / 4
    if kind == "tiny":
        a = rng.uniform(-1.0, L + 0.5)
        return a, a + rng.uniform(0.0, 1.0)
    if kind == "zero":
        a = rng.uniform(-0.5, L + 0.5) if rng.random() < 0.5 else float(rng.integers(0, length + 1))
        return a, a
    if kind == "past":
        return rng.uniform(-L - 2, 0.0), rng.uniform(L, 2 * L + 2)
    if kind == "outside":
        if rng.random() < 0.5:
            a = L + rng.uniform(0.0, 3.0)
            return a, a + rng.uniform(0.2, 3.0)
        b = -rng.uniform(0.0, 3.0)
        return b - rng.uniform(0.2, 3.0), b
    return 0.0, L  # whole


def make_case(rng: np.random.Generator) -> dict:
    h, w = image_side(rng), image_side(rng)
    m = int(rng.integers(1, 5))
    masks = np.stack([random_mask(rng, h, w) for _ in range(m)])
    r = int(rng.integers(1, 7))
    boxes = []
    for _ in range(r):
        x0, x1 = box_side(rng, w)
        y0, y1 = box_side(rng, h)
        boxes.append([x0, y0, x1, y1])
    boxes = np.asarray(boxes, np.float32)
    gt = rng.integers(0, m, size=r).astype(np.int64)
    classes = rng.integers(1, 4, size=r).astype(np.int64)
    size = int(rng.choice([14, 28]))
    return {"hw": (h, w), "masks": masks, "boxes": boxes, "gt": gt, "classes": classes, "size": size}


def peer_targets(case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torchvision's and Detectron2's targets of one case, and Detectron2's near-0.5 raw values."""
    masks = torch.from_numpy(case["masks"])
    boxes = torch.from_numpy(case["boxes"])
    gt = torch.from_numpy(case["gt"])
    s = case["size"]
    tv = project_masks_on_boxes(masks, boxes, gt, s)
    matched = BitMasks(masks[gt])
    d2 = matched.crop_and_resize(boxes, s)
    assert tv.dtype == torch.float32 and tv.shape == (len(boxes), s, s)
    assert d2.dtype == torch.bool and d2.shape == (len(boxes), s, s)
    # The value crop_and_resize thresholds, by the same module and arguments.
    rois = torch.cat([torch.arange(len(boxes), dtype=boxes.dtype)[:, None], boxes], dim=1)
    pooler = ROIAlign((s, s), 1.0, 0, aligned=True)
    raw = pooler.forward(matched.tensor.to(torch.float32)[:, None], rois)[:, 0]
    assert torch.equal(raw >= 0.5, d2)
    raw = raw.numpy().reshape(-1)
    near = np.flatnonzero(np.abs(raw - 0.5) <= NEAR_HALF)
    return tv.numpy(), d2.numpy(), near, raw[near]


def d2_commit() -> str:
    try:
        return subprocess.run(["git", f"--git-dir={D2_GIT_DIR}", "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(path: str) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    cases = [make_case(rng) for _ in range(NUM_CASES)]
    mask_bits, tv_all, d2_all, near_idx, near_val = [], [], [], [], []
    d2_offset = 0
    for case in cases:
        tv, d2, near, val = peer_targets(case)
        mask_bits.append(case["masks"].reshape(-1))
        tv_all.append(tv.reshape(-1))
        d2_all.append(d2.reshape(-1))
        near_idx.append(near + d2_offset)
        near_val.append(val)
        d2_offset += d2.size
    masks_flat = np.concatenate(mask_bits).astype(bool)
    d2_flat = np.concatenate(d2_all)
    np.savez_compressed(
        path,
        versions=np.array([torch.__version__, torchvision.__version__, d2_commit(), np.__version__]),
        seed=np.int64(SEED),
        case_hw=np.array([c["hw"] for c in cases], np.int32),
        case_size=np.array([c["size"] for c in cases], np.int32),
        case_instances=np.array([len(c["masks"]) for c in cases], np.int32),
        case_rois=np.array([len(c["boxes"]) for c in cases], np.int32),
        masks_bits=np.packbits(masks_flat),
        masks_count=np.int64(masks_flat.size),
        roi_boxes=np.concatenate([c["boxes"] for c in cases]),
        roi_gt=np.concatenate([c["gt"] for c in cases]),
        roi_classes=np.concatenate([c["classes"] for c in cases]),
        tv_targets=np.concatenate(tv_all).astype(np.float32),
        d2_bits=np.packbits(d2_flat),
        d2_count=np.int64(d2_flat.size),
        d2_near_half_index=np.concatenate(near_idx).astype(np.int64),
        d2_near_half_value=np.concatenate(near_val).astype(np.float32),
    )
    rois = sum(len(c["boxes"]) for c in cases)
    print(f"{path}: {NUM_CASES} cases, {rois} RoIs, {os.path.getsize(path)} bytes, "
          f"{int(np.concatenate(near_idx).size)} Detectron2 values within {NEAR_HALF} of 0.5")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
