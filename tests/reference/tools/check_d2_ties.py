"""Whether a Detectron2 fixture's calls depend on how ties are ordered, and how its class scores spread.

With synthetic weights, the zero padding of a batch that mixes image sizes
gives many anchors bit-identical objectness; which of them survive the RPN's
NMS then depends on the order ``topk`` happens to give ties, which no other
implementation can reproduce. This runs Detectron2's own RPN on each call
with the anchors of every level permuted at random (three times) and counts
the proposals that change: a fixture's seed should give 0 for every call.
With ``SCALES`` (e.g. ``1,3,6``) it also prints, per factor on the class
logits, the best class score and how many pass 0.05 (C4 and DC5 heads need a
factor: ``D2_SCALE`` of make_d2_reference.py).

Run like ``../shared/reference/tools/make_d2_reference.py`` (peer virtualenv,
detectron2 on PYTHONPATH, D2_CONFIGS, D2_CONFIG):
    python check_d2_ties.py SEED[,SEED...] IMAGE[,IMAGE...] ...
"""
import os
import sys

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from PIL import Image

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../../shared/reference")
sys.path.insert(0, os.environ.get("SYNTH_DIR", SHARED))
from synth_weights import synth_tensor  # noqa: E402

# NOISE > 0 also moves each objectness by up to that much: another implementation's
# logits differ from Detectron2's in the last bits (~1e-6), so near-ties may flip
# too. A stricter check, which natural images rarely pass: a few proposals at the
# top-k and NMS borders always move.
NOISE = float(os.environ.get("NOISE", "0"))


def tie_dependent_proposals(model: torch.nn.Module, images: object, feats: dict) -> tuple[int, list]:
    """Proposals that change when the anchors of every level are permuted and their
    objectness moved by up to ``NOISE`` (worst of 3), and the proposals."""
    rpn = model.proposal_generator
    features = [feats[f] for f in rpn.in_features]
    anchors = rpn.anchor_generator(features)
    logits, deltas = rpn.rpn_head(features)
    # as RPN.forward: (N, A, H, W) -> (N, HWA); (N, 4A, H, W) -> (N, HWA, 4)
    logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]
    deltas = [x.view(x.shape[0], -1, 4, *x.shape[-2:]).permute(0, 3, 4, 1, 2).flatten(1, -2) for x in deltas]
    boxes = rpn._decode_proposals(anchors, deltas)

    def propose(perms: list[torch.Tensor], noise: float = 0.0, g: torch.Generator | None = None) -> list:
        return find_top_rpn_proposals(
            [b[:, p] for b, p in zip(boxes, perms, strict=True)],
            [x[:, p] + noise * torch.rand(x.shape, generator=g) for x, p in zip(logits, perms, strict=True)],
            images.image_sizes, rpn.nms_thresh, rpn.pre_nms_topk[False], rpn.post_nms_topk[False],
            rpn.min_box_size, False)

    base = propose([torch.arange(x.shape[1]) for x in logits])
    changed = 0
    for t in range(3):
        g = torch.Generator().manual_seed(t)
        other = propose([torch.randperm(x.shape[1], generator=g) for x in logits], NOISE, g)
        for a, b in zip(base, other, strict=True):
            sa = {tuple(np.round(r, 2)) for r in a.proposal_boxes.tensor.numpy()}
            sb = {tuple(np.round(r, 2)) for r in b.proposal_boxes.tensor.numpy()}
            changed = max(changed, len(sa ^ sb))
    return changed, base


def class_scores(model: torch.nn.Module, feats: dict, proposals: list, scale: float) -> torch.Tensor:
    """Foreground class probabilities of the proposals with the class logits' weight scaled."""
    heads = model.roi_heads
    rois = [p.proposal_boxes for p in proposals]
    if hasattr(heads, "res5"):  # C4
        f = heads._shared_roi_transform([feats[k] for k in heads.in_features], rois).mean(dim=[2, 3])
    else:
        f = heads.box_head(heads.box_pooler([feats[k] for k in heads.box_in_features], rois))
    cls = heads.box_predictor.cls_score
    return (f @ (cls.weight * scale).T + cls.bias).softmax(1)[:, :-1]


def main() -> None:
    seeds, calls = [int(s) for s in sys.argv[1].split(",")], sys.argv[2:]
    scales = [float(s) for s in os.environ.get("SCALES", "").split(",") if s]
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(os.environ["D2_CONFIGS"], os.environ["D2_CONFIG"]))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    sd = model.state_dict()
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    for seed in seeds:
        model.load_state_dict({k: torch.from_numpy(synth_tensor(k, v.shape, seed)) for k, v in sd.items()})
        for call in calls:
            inputs = []
            for path in call.split(","):
                bgr = np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1]
                image = aug.get_transform(bgr).apply_image(bgr)
                inputs.append({"image": torch.as_tensor(image.astype("float32").transpose(2, 0, 1))})
            with torch.no_grad():
                images = model.preprocess_image(inputs)
                feats = model.backbone(images.tensor)
                changed, proposals = tie_dependent_proposals(model, images, feats)
                line = f"seed {seed} call {call}: {changed} proposals depend on the order of ties"
                for s in scales:
                    p = class_scores(model, feats, proposals, s)
                    line += f"; x{s:g}: best {float(p.max()):.3f}, {int((p > 0.05).sum())} > 0.05"
            print(line, flush=True)


if __name__ == "__main__":
    main()
