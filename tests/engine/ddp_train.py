"""Train the demo preset for a few iterations; run by ``test_distributed.py`` alone or under ``torchrun``.

    python ddp_train.py JSON IMAGE_DIR OUT [--iterations N] [--batch-size B]
    torchrun --standalone --nproc_per_node 2 ddp_train.py JSON IMAGE_DIR OUT ...

``--batch-size`` is the global batch, split over the processes. The input
has one fixed size and no flips, so each image's network input is the same
whichever process reads it. Rank 0 writes ``OUT/model_final.pth``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch.distributed as dist

from maskrcnn.config import PRESETS
from maskrcnn.data.coco import CocoDataset
from maskrcnn.dist import setup_distributed
from maskrcnn.engine.train import Trainer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("json")
    p.add_argument("images")
    p.add_argument("out")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()

    setup_distributed()
    dataset = CocoDataset(args.json, args.images)
    preset = PRESETS["demo-r18-fpn"]
    base = preset.model
    cfg = base.replace(
        num_classes=len(dataset.class_names),
        class_names=dataset.class_names,
        category_ids=dataset.category_ids,
        input=dataclasses.replace(base.input, min_size=64, max_size=64, train_min_sizes=(64,), flip_prob=0.0),
        rpn=dataclasses.replace(
            base.rpn, sampler=dataclasses.replace(base.rpn.sampler, batch_size_per_image=32),
            pre_nms_topk_train=200, post_nms_topk_train=100,
        ),
        box_head=dataclasses.replace(
            base.box_head, sampler=dataclasses.replace(base.box_head.sampler, batch_size_per_image=32)
        ),
    )
    solver = dataclasses.replace(
        preset.solver, iterations=args.iterations, batch_size=args.batch_size, warmup_iters=0,
        base_lr=0.02, reference_batch_size=args.batch_size, checkpoint_period=0, log_period=1,
        num_workers=0, eval_period=0, amp=False, seed=0,
    )
    trainer = Trainer(model_cfg=cfg, solver=solver, dataset=dataset, out_dir=Path(args.out), device="cpu",
                      progress=False)
    trainer.train()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
