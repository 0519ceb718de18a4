"""Make tests/reference/input_sizes.csv: how each peer turns an image size into network input.

Runs in the peer virtualenv (``make peer-venv``), with Detectron2's source tree on
PYTHONPATH:

    PYTHONPATH=/path/to/detectron2 .peer-venv/bin/python tests/reference/tools/make_size_table.py \
        tests/reference/input_sizes.csv

Every number comes from the peers' own code, run on tensors of the "meta" device
(shapes without data), so that huge sizes cost nothing:

- torchvision 0.29: ``GeneralizedRCNNTransform`` (resize and batch padding), the
  ``maskrcnn_resnet50_fpn`` backbone (feature-map sizes P2-P6) and its
  ``AnchorGenerator`` (the anchor stride of each level along each axis, read off
  the anchors it places);
- Detectron2: ``ResizeShortestEdge.get_output_shape`` and ``ImageList.from_tensors``
  (padding to a multiple of 32).

Rows: one image size and one (min_size, max_size) setting. Empty cells: the peer
fails on that size (a side that resizes to 0 pixels). A stride of 0: that axis
of the level has a single cell, so no stride can be seen.
"""

import csv
import math
import random
import sys

import torch
import torchvision
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.structures import ImageList
from torchvision.models.detection.image_list import ImageList as TvImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform

SETTINGS = [(800, 1333), (640, 1066), (1024, 1024)]


def sizes() -> list[tuple[int, int]]:
    rng = random.Random(7)
    out = {(1000, 872), (427, 640), (500, 741), (872, 1000), (640, 427), (741, 500), (1, 1), (1, 9999),
           (9999, 1), (800, 1333), (1333, 800), (800, 800), (799, 1332), (600, 1000), (480, 640)}
    out |= {(s, s) for s in range(1, 3000, 37)}
    # Around the point where the long side takes over (aspect 1333 / 800).
    for short in (299, 300, 427, 480, 600, 720, 750, 800, 1080):
        for d in range(-3, 4):
            out |= {(short, round(short * 1333 / 800) + d), (round(short * 1333 / 800) + d, short)}
    # Common camera and phone sizes, both orientations.
    for h, w in [(480, 640), (720, 1280), (1080, 1920), (1536, 2048), (2160, 3840), (3024, 4032),
                 (2448, 3264), (375, 500), (333, 500), (427, 640), (612, 612), (300, 451), (400, 600)]:
        out |= {(h, w), (w, h)}
    while len(out) < 3000:
        h = int(math.exp(rng.uniform(0, math.log(12000))))
        w = int(math.exp(rng.uniform(0, math.log(12000))))
        if rng.random() < 0.3:  # odd/even neighbours
            w = h + rng.randint(-2, 2)
        out.add((max(h, 1), max(w, 1)))
    return sorted(out)


def features_and_strides(backbone, anchor_gen, images):
    """torchvision's P2-P6 sizes for this padded batch, and each level's anchor stride per axis."""
    with torch.no_grad():
        feats = list(backbone(images.tensors).values())
    grids = [tuple(f.shape[-2:]) for f in feats]
    anchor_gen.set_cell_anchors(torch.float32, torch.device("cpu"))
    anchors = anchor_gen(TvImageList(images.tensors, images.image_sizes),
                         [torch.empty(1, 1, *g) for g in grids])[0]
    strides, start = [], 0
    for gh, gw in grids:
        level = anchors[start:start + gh * gw * 3].reshape(gh, gw, 3, 4)
        start += gh * gw * 3
        sy = int(level[1, 0, 0, 1] - level[0, 0, 0, 1]) if gh > 1 else 0
        sx = int(level[0, 1, 0, 0] - level[0, 0, 0, 0]) if gw > 1 else 0
        strides.append((sy, sx))
    return grids, strides


def main() -> None:
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    backbone = model.backbone.to("meta")
    anchor_gen = model.rpn.anchor_generator
    rows, by_padded = [], {}
    for min_size, max_size in SETTINGS:
        transform = GeneralizedRCNNTransform(min_size, max_size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        transform.eval()
        for h, w in sizes():
            dh, dw = ResizeShortestEdge.get_output_shape(h, w, min_size, max_size)
            d2 = [dh, dw, "", ""]
            if dh > 0 and dw > 0:
                d2[2:] = ImageList.from_tensors([torch.empty(3, dh, dw, device="meta")], 32).tensor.shape[-2:]
            try:
                images, _ = transform([torch.empty(3, h, w, device="meta")])
            except ZeroDivisionError:  # a side that resizes to 0 pixels: torchvision cannot run it
                rows.append([min_size, max_size, h, w, "", "", "", "", "", "", *d2])
                continue
            (th, tw), (ph, pw) = images.image_sizes[0], images.tensors.shape[-2:]
            if (ph, pw) not in by_padded:  # feature sizes and strides depend on the padded size alone
                by_padded[(ph, pw)] = features_and_strides(backbone, anchor_gen, images)
            grids, strides = by_padded[(ph, pw)]
            rows.append([min_size, max_size, h, w, th, tw, ph, pw, " ".join(f"{a}x{b}" for a, b in grids),
                         " ".join(f"{a}x{b}" for a, b in strides), *d2])
    with open(sys.argv[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["min_size", "max_size", "height", "width", "tv_h", "tv_w", "tv_pad_h", "tv_pad_w",
                         "tv_grids", "tv_anchor_strides", "d2_h", "d2_w", "d2_pad_h", "d2_pad_w"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {sys.argv[1]} (torchvision {torchvision.__version__}, "
          f"torch {torch.__version__}), {len(by_padded)} padded sizes")


if __name__ == "__main__":
    main()
