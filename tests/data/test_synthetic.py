"""Tests for maskrcnn.data.synthetic: determinism, COCO validity, visible masks, dropping."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskrcnn.data.synthetic import (
    CLASSES,
    SyntheticImage,
    keep_instance,
    make_demo_dataset,
    polygon_mask,
    render_image,
    shape_polygon,
    tight_box,
    visible_masks,
)
from maskrcnn.data.synthetic import generate as generate_dataset

# pycocotools' annToMask trips a NumPy 2 deprecation on every call.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SEED = 7
NUM_IMAGES = 200


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, COCO, list[SyntheticImage]]:
    """200 written images, their COCO index, and the same scenes rendered in memory."""
    root = tmp_path_factory.mktemp("synthetic")
    json_path = generate_dataset(root, num_images=NUM_IMAGES, seed=SEED, progress=False)
    scenes = [render_image(SEED, i) for i in range(NUM_IMAGES)]
    return json_path, COCO(str(json_path)), scenes


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_other_seeds_differ(tmp_path: Path) -> None:
    runs = {
        name: generate_dataset(tmp_path / name, num_images=4, seed=seed, split=split).parent
        for name, seed, split in [("a", 0, "train"), ("b", 0, "train"), ("c", 1, "train"), ("d", 0, "val")]
    }
    a, b, c = _files(runs["a"]), _files(runs["b"]), _files(runs["c"])
    assert set(a) == {"train.json"} | {f"train/{i:05d}.png" for i in range(4)}
    assert a == b
    assert set(a) == set(c)
    assert all(a[name] != c[name] for name in a)
    # The split name is part of the seed: "val" with seed 0 is not "train" with seed 0.
    d = _files(runs["d"])
    assert all(a[f"train/{i:05d}.png"] != d[f"val/{i:05d}.png"] for i in range(4))


def test_image_depends_only_on_seed_split_and_index(tmp_path: Path) -> None:
    short = generate_dataset(tmp_path / "short", num_images=2, seed=3)
    long = generate_dataset(tmp_path / "long", num_images=5, seed=3)
    for i in range(2):
        name = f"train/{i:05d}.png"
        assert (short.parent / name).read_bytes() == (long.parent / name).read_bytes()
    first = json.loads(short.read_text())["annotations"]
    assert first == [a for a in json.loads(long.read_text())["annotations"] if a["image_id"] <= 2]


# ---------------------------------------------------------------- COCO format


def test_json_is_coco_instances(dataset: tuple[Path, COCO, list[SyntheticImage]]) -> None:
    json_path, coco, _ = dataset
    assert [(c["id"], c["name"]) for c in coco.dataset["categories"]] == list(enumerate(CLASSES, 1))
    images = coco.dataset["images"]
    assert [im["id"] for im in images] == list(range(1, NUM_IMAGES + 1))
    for im in images[:5]:
        assert im["file_name"] == f"{im['id'] - 1:05d}.png"
        assert (im["height"], im["width"]) == (128, 128)
        with Image.open(json_path.parent / "train" / im["file_name"]) as picture:
            assert picture.mode == "RGB" and picture.size == (128, 128)
    ids = [a["id"] for a in coco.dataset["annotations"]]
    assert ids == list(range(1, len(ids) + 1))
    assert all(a["iscrowd"] == 0 for a in coco.dataset["annotations"])


def test_annotations_decode_to_visible_masks_with_tight_boxes(
    dataset: tuple[Path, COCO, list[SyntheticImage]],
) -> None:
    _, coco, scenes = dataset
    formats: Counter[str] = Counter()
    for image_id, scene in enumerate(scenes, 1):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert len(anns) == len(scene.annotated)
        for ann, obj in zip(anns, scene.annotated, strict=True):
            assert ann["category_id"] == obj.category_id
            decoded = coco.annToMask(ann).astype(bool)
            assert np.array_equal(decoded, obj.visible_mask)
            assert ann["area"] == decoded.sum()
            assert ann["bbox"] == mask_utils.toBbox(coco.annToRLE(ann)).tolist()
            x, y, w, h = (int(v) for v in ann["bbox"])
            inside = np.zeros_like(decoded)
            inside[y : y + h, x : x + w] = True
            assert not (decoded & ~inside).any()
            # Tight: every side of the box touches the mask.
            assert decoded[y].any() and decoded[y + h - 1].any()
            assert decoded[:, x].any() and decoded[:, x + w - 1].any()
            segmentation = ann["segmentation"]
            if isinstance(segmentation, list):
                formats["polygon"] += 1
                # Polygons only where they are the whole truth: no occlusion, no curve.
                assert obj.class_name != "circle"
                assert np.array_equal(obj.visible_mask, obj.full_mask)
                assert np.allclose(np.array(segmentation[0]).reshape(-1, 2), obj.polygon)
            else:
                formats["rle"] += 1
                assert isinstance(segmentation["counts"], str)
                assert segmentation["size"] == [128, 128]
    assert formats["polygon"] > 100 and formats["rle"] > 100


def test_every_class_appears(dataset: tuple[Path, COCO, list[SyntheticImage]]) -> None:
    _, coco, _ = dataset
    counts = Counter(a["category_id"] for a in coco.dataset["annotations"])
    assert set(counts) == {1, 2, 3, 4}
    # Uniform class draws: no class is rare.
    assert min(counts.values()) > 0.15 * sum(counts.values())


def test_colour_does_not_give_away_the_class(dataset: tuple[Path, COCO, list[SyntheticImage]]) -> None:
    _, _, scenes = dataset
    colours: dict[int, list[np.ndarray]] = {k: [] for k in range(1, len(CLASSES) + 1)}
    for scene in scenes:
        for obj in scene.annotated:
            colours[obj.category_id].append(scene.image[obj.visible_mask].mean(axis=0))
    means = np.array([np.mean(colours[k], axis=0) for k in colours])
    spreads = np.array([np.std(colours[k], axis=0) for k in colours])
    # Class mean colours are close together relative to the spread within a class.
    assert np.abs(means - means.mean(axis=0)).max() < 0.35 * spreads.min()


# ---------------------------------------------------------------- occlusion


def test_visible_masks_hand_computed() -> None:
    back = np.zeros((6, 6), dtype=bool)
    back[1:5, 1:5] = True  # 16 pixels
    middle = np.zeros((6, 6), dtype=bool)
    middle[3:6, 3:6] = True  # covers 4 of back's pixels
    front = np.zeros((6, 6), dtype=bool)
    front[0:2, 0:2] = True  # covers 1 of back's pixels
    inputs = [back.copy(), middle.copy(), front.copy()]
    seen = visible_masks([back, middle, front])
    assert all(np.array_equal(a, b) for a, b in zip(inputs, [back, middle, front], strict=True))
    expected_back = back.copy()
    expected_back[3:5, 3:5] = False
    expected_back[1, 1] = False
    assert np.array_equal(seen[0], expected_back)
    assert seen[0].sum() == 11
    assert np.array_equal(seen[1], middle)
    assert np.array_equal(seen[2], front)


def test_rendered_occluder_is_excluded(dataset: tuple[Path, COCO, list[SyntheticImage]]) -> None:
    _, _, scenes = dataset
    occluded = 0
    for scene in scenes:
        objects = scene.objects
        for i, obj in enumerate(objects):
            assert not (obj.visible_mask & ~obj.full_mask).any()
            for later in objects[i + 1 :]:
                assert not (obj.visible_mask & later.full_mask).any()
            if obj.annotated and obj.visible_mask.sum() < obj.full_mask.sum():
                occluded += 1
    assert occluded > 30


def test_visible_masks_partition_the_painted_area(
    dataset: tuple[Path, COCO, list[SyntheticImage]],
) -> None:
    _, _, scenes = dataset
    for scene in scenes[:50]:
        owners = np.sum([obj.visible_mask for obj in scene.objects], axis=0)
        union = np.any([obj.full_mask for obj in scene.objects], axis=0)
        # Every painted pixel is visible in exactly one object: the topmost.
        assert owners.max() == 1
        assert np.array_equal(owners == 1, union)


# ---------------------------------------------------------------- dropping


def test_keep_instance_thresholds() -> None:
    full = np.zeros((20, 20), dtype=bool)
    full[:10, :10] = True  # 100 pixels
    seen = full.copy()
    seen[:, :8] = False  # 20 % visible, 20 pixels
    assert keep_instance(full, seen, min_visible_fraction=0.2, min_visible_pixels=10)
    assert not keep_instance(full, seen, min_visible_fraction=0.25, min_visible_pixels=10)
    assert not keep_instance(full, seen, min_visible_fraction=0.2, min_visible_pixels=30)
    assert not keep_instance(full, np.zeros_like(full), min_visible_fraction=0.0, min_visible_pixels=0)


def test_hidden_and_tiny_instances_are_dropped(dataset: tuple[Path, COCO, list[SyntheticImage]]) -> None:
    _, _, scenes = dataset
    dropped = 0
    for scene in scenes:
        for obj in scene.objects:
            visible, full = int(obj.visible_mask.sum()), int(obj.full_mask.sum())
            assert obj.annotated == (visible >= 30 and visible >= 0.2 * full)  # the defaults
            dropped += not obj.annotated
    assert dropped > 0  # hidden objects do occur at the defaults


def test_visibility_thresholds_are_applied() -> None:
    everything = render_image(SEED, 0, min_visible_fraction=0.0, min_visible_pixels=1)
    assert all(obj.annotated for obj in everything.objects if obj.visible_mask.any())
    none = render_image(SEED, 0, min_visible_pixels=128 * 128 + 1)
    assert none.annotated == []
    assert np.array_equal(none.image, everything.image)  # thresholds never change the picture
    unoccluded = render_image(SEED, 0, min_visible_fraction=1.0, min_visible_pixels=1)
    assert all(np.array_equal(o.visible_mask, o.full_mask) for o in unoccluded.annotated)


# ---------------------------------------------------------------- shapes and options


def test_square_polygon_hand_computed() -> None:
    rng = np.random.default_rng(0)
    square = shape_polygon("square", center=(50.0, 40.0), radius=10.0, angle=0.0, rng=rng)
    assert square.shape == (4, 2)
    assert np.allclose(np.hypot(*(square - [50.0, 40.0]).T), 10.0)
    assert np.allclose(square.mean(axis=0), [50.0, 40.0])
    turned = shape_polygon(
        "square", center=(50.0, 40.0), radius=10.0, angle=np.pi / 2, rng=np.random.default_rng(0)
    )
    # A quarter turn swaps the rectangle's extents.
    assert np.allclose(np.ptp(turned, axis=0), np.ptp(square, axis=0)[::-1])


def test_star_alternates_outer_and_inner_radius() -> None:
    star = shape_polygon("star", center=(0.0, 0.0), radius=20.0, angle=0.3, rng=np.random.default_rng(1))
    radii = np.hypot(star[:, 0], star[:, 1])
    assert star.shape == (10, 2)
    assert np.allclose(radii[0::2], 20.0)
    assert np.all((radii[1::2] > 0.38 * 20 - 1e-9) & (radii[1::2] < 0.55 * 20 + 1e-9))
    with pytest.raises(ValueError, match="hexagon"):
        shape_polygon("hexagon", center=(0.0, 0.0), radius=5.0, angle=0.0, rng=np.random.default_rng(0))


def test_polygon_mask_and_tight_box() -> None:
    mask = polygon_mask(np.array([[2.0, 1.0], [6.0, 1.0], [6.0, 4.0], [2.0, 4.0]]), 8, 10)
    assert mask.shape == (8, 10)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert tight_box(mask) == mask_utils.toBbox(rle).tolist()
    assert tight_box(mask) == [2.0, 1.0, 4.0, 3.0]


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="min_objects"):
        render_image(0, 0, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="seed"):
        render_image(-1, 0)


def test_object_count_bounds_and_non_square_images(tmp_path: Path) -> None:
    for index in range(10):
        scene = render_image(1, index, image_size=(48, 80), min_objects=2, max_objects=3)
        assert scene.image.shape == (48, 80, 3) and scene.image.dtype == np.uint8
        assert 2 <= len(scene.objects) <= 3
        assert all(o.full_mask.shape == (48, 80) for o in scene.objects)


def test_make_demo_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train_json, train_dir, val_json, val_dir = make_demo_dataset(
        tmp_path, train_images=3, val_images=2, image_size=(48, 64), seed=5
    )
    assert (train_dir, val_dir) == (tmp_path / "train", tmp_path / "val")
    assert sorted(p.name for p in train_dir.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert sorted(p.name for p in val_dir.iterdir()) == ["00000.png", "00001.png"]
    train, val = COCO(str(train_json)), COCO(str(val_json))
    assert len(train.imgs) == 3 and len(val.imgs) == 2
    assert train.dataset["info"]["generator"]["seed"] != val.dataset["info"]["generator"]["seed"]
    with Image.open(train_dir / "00000.png") as picture:
        assert picture.size == (64, 48)
    assert (train_dir / "00000.png").read_bytes() != (val_dir / "00000.png").read_bytes()
    assert "synthetic" not in capsys.readouterr().err  # no progress bar for a handful of images
