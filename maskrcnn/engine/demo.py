"""``maskrcnn demo``: the whole method learning on this machine, with nothing downloaded.

1. Generate a synthetic instance-segmentation dataset (``data/synthetic.py``):
   circles, triangles, squares and stars of random sizes, colours and
   textures, occluding each other on cluttered backgrounds, as COCO JSON.
2. Train the ``demo-r18-fpn`` preset (a narrow ResNet-18-FPN with group norm,
   small enough for 2 CPU cores) from scratch on the training split.
3. Evaluate COCO box and mask AP on the held-out split, and write the metrics
   (``final_metrics.json``), the loss curve and prediction pictures.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from ..data.coco import CocoDataset
from ..data.images import load_image
from ..data.synthetic import make_demo_dataset
from .configure import configure
from .evaluate import format_table
from .predict import Predictor
from .train import Trainer, ValidationSet
from .visualize import draw_detections

PRESET = "demo-r18-fpn"
TRAIN_IMAGES = 1000
VAL_IMAGES = 100
PICTURES = 8


def demo(out: Path, *, iterations: int | None = None, seed: int = 0) -> int:
    """Run the demo into ``out``; returns the exit status."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    print(f"1/3 generating {TRAIN_IMAGES} training and {VAL_IMAGES} validation images in {out / 'data'}",
          file=sys.stderr)
    train_json, train_dir, val_json, val_dir = make_demo_dataset(
        out / "data", train_images=TRAIN_IMAGES, val_images=VAL_IMAGES, seed=seed
    )
    dataset = CocoDataset(train_json, train_dir)
    cfg, solver = configure(dataset, preset=PRESET, iterations=iterations)  # as `maskrcnn train` would
    print(f"2/3 training {PRESET} from scratch: {solver.iterations} iterations of {solver.batch_size} images",
          file=sys.stderr)
    trainer = Trainer(model_cfg=cfg, solver=solver, dataset=dataset, out_dir=out / "train",
                      validation=ValidationSet(val_json, val_dir))
    metrics = trainer.train()
    assert metrics is not None
    print("3/3 held-out COCO AP (x100):", file=sys.stderr)
    print(format_table(metrics))
    pictures = out / "pictures"
    pictures.mkdir(exist_ok=True)
    predictor = Predictor(trainer.model, cfg, score_threshold=0.5)
    for path in sorted(val_dir.iterdir())[:PICTURES]:
        image = load_image(path)
        with torch.no_grad():
            det = predictor.predict_arrays([image])[0]
        draw_detections(image, det.boxes, det.names, det.scores, det.masks).resize(
            (image.shape[1] * 3, image.shape[0] * 3)
        ).save(pictures / path.name)
    minutes = (time.perf_counter() - start) / 60
    segm, bbox = metrics["segm"]["AP"], metrics["bbox"]["AP"]
    print(f"done in {minutes:.1f} min: mask AP {segm:.3f}, box AP {bbox:.3f}\n"
          f"  metrics      {out / 'train' / 'final_metrics.json'}\n"
          f"  loss curve   {out / 'train' / 'loss_curve.png'}\n"
          f"  pictures     {pictures}/\n"
          f"  model        {out / 'train' / 'model_final.pth'} (maskrcnn predict --weights ...)",
          file=sys.stderr)
    return 0
