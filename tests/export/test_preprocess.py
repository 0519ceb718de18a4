"""The dense input transform equals ``make_batch``: in PyTorch, and exported to ONNX Runtime.

Both resize rules: torchvision's (``F.interpolate``) and Detectron2's (PIL on the uint8 image, bit for bit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.config import InputConfig
from maskrcnn.data.transforms import make_batch, resized_size
from maskrcnn.export.preprocess import (
    MAX_SIDE,
    pil_bilinear_coefficients,
    pil_bilinear_resize,
    prepare_batch,
    resample_fixed_point,
    resized_sizes,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = InputConfig(min_size=96, max_size=160)


def _padded(images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    height = max(im.shape[0] for im in images)
    width = max(im.shape[1] for im in images)
    batch = np.zeros((len(images), height, width, 3), np.uint8)
    for i, im in enumerate(images):
        batch[i, : im.shape[0], : im.shape[1]] = im
    return torch.from_numpy(batch), torch.tensor([im.shape[:2] for im in images])


def _random_batches(seed: int, count: int, side: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        count = int(rng.integers(1, 4))
        shapes = [(int(rng.integers(2, side)), int(rng.integers(2, side))) for _ in range(count)]
        batches.append([rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes])
    return batches


def test_sizes_follow_torchvisions_rule_everywhere() -> None:
    # Every (h, w) up to 300 px against the float64 rule of data/transforms.py, at the COCO settings too.
    side = torch.arange(1, 301)
    sizes = torch.cartesian_prod(side, side)
    for cfg in (SMALL, InputConfig()):
        got = resized_sizes(sizes, cfg).tolist()
        for (h, w), size in zip(sizes.tolist(), got, strict=True):
            try:
                assert size == list(resized_size(h, w, cfg)), (h, w)
            except ValueError:  # a side that resizes to nothing: refused before any export
                assert min(size) == 0, (h, w)


CAFFE = InputConfig(min_size=64, max_size=64, channel_order="BGR", pixel_range=255.0,
                    pixel_mean=(103.5, 116.3, 123.7), pixel_std=(1.0, 1.0, 1.0))


@pytest.mark.parametrize("cfg", [SMALL, CAFFE], ids=["rgb", "bgr-caffe"])
def test_equals_make_batch(cfg: InputConfig) -> None:
    for images in _random_batches(0, 40, 150):
        want = make_batch(images, cfg)
        got, sizes = prepare_batch(*_padded(images), cfg)
        assert sizes.tolist() == [list(s) for s in want.image_sizes]
        assert got.shape == want.tensor.shape
        scale = float(want.tensor.abs().max())
        # float32 sums in another order: within a few units in the last place of the largest value.
        torch.testing.assert_close(got, want.tensor, rtol=0, atol=2e-5 * max(scale, 1.0))


class _Prepare(torch.nn.Module):
    def forward(self, images: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return prepare_batch(images, sizes, SMALL)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="the deploy extra is not installed")
    from maskrcnn.export.onnx_ops import OPSET

    example = _padded(_random_batches(1, 1, 80)[0])
    program = torch.onnx.export(_Prepare(), example, dynamo=True, input_names=["images", "sizes"],
                                opset_version=OPSET,
                                dynamic_shapes={"images": {0: "n", 1: "h", 2: "w"}, "sizes": {0: "n"}})
    path = tmp_path_factory.mktemp("prepare") / "prepare.onnx"
    program.save(str(path))
    return path


def test_exported_to_onnxruntime_equals_make_batch(exported: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the deploy extra is not installed")
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for images in _random_batches(2, 12, 300):
        want = make_batch(images, SMALL)
        batch, sizes = _padded(images)
        got, got_sizes = session.run(None, {"images": batch.numpy(), "sizes": sizes.numpy()})
        assert got_sizes.tolist() == [list(s) for s in want.image_sizes]
        np.testing.assert_allclose(got, want.tensor.numpy(), rtol=0, atol=1e-4)


def test_exported_to_openvino_equals_make_batch(exported: Path) -> None:
    # OpenVINO computes float64 in float32: the sizes come from exact integer arithmetic instead
    # (200 x 30 at 160 px: 200 * (160 / 200) is 160 in float64, 159 in OpenVINO's float32).
    ov = pytest.importorskip("openvino", reason="the deploy extra is not installed")
    compiled = ov.Core().compile_model(str(exported), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    rng = np.random.default_rng(3)
    thin = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((200, 30, 3), (30, 200, 3))]
    for images in [thin, *_random_batches(4, 10, 300)]:
        want = make_batch(images, SMALL)
        batch, sizes = _padded(images)
        result = compiled({"images": batch.numpy(), "sizes": sizes.numpy()})
        assert result[1].tolist() == [list(s) for s in want.image_sizes]
        # OpenVINO's float32 division is not correctly rounded: interpolation weights differ in
        # the last bits, and a few pixels by up to ~1e-4 of their normalised value.
        np.testing.assert_allclose(result[0], want.tensor.numpy(), rtol=0, atol=5e-4)


def test_sizes_are_exact_where_float64_lands_below_an_integer() -> None:
    # side * fl(a / b) in float64 falls just below the exact integer side * a / b for these,
    # so Python (and torchvision) truncate to one less: 49 * (1 / 49) = 0.9999999999999999.
    from maskrcnn.export.preprocess import MAX_SIDE, _floor_of_double_product

    rng = np.random.default_rng(5)
    side = torch.tensor(rng.integers(1, 16384, 200000))
    a = torch.tensor(rng.integers(1, 5000, 200000))
    b = torch.where(torch.rand(200000, generator=torch.Generator().manual_seed(0)) < 0.5, side,
                    torch.tensor(rng.integers(1, 16384, 200000)))
    small = side * a // b <= MAX_SIDE  # resized sides are at most max_size
    side, a, b = side[small], a[small], b[small]
    want = [int(s * (x / y)) for s, x, y in zip(side.tolist(), a.tolist(), b.tolist(), strict=True)]
    exact = [s * x // y for s, x, y in zip(side.tolist(), a.tolist(), b.tolist(), strict=True)]
    below = sum(w != e for w, e in zip(want, exact, strict=True))
    assert below > 1000  # the table does hold such cases
    assert _floor_of_double_product(side, a, b).tolist() == want


# --- Detectron2's rule: ResizeShortestEdge sizes, PIL's bilinear filter on the uint8 image ----------------

# As the Detectron2 checkpoints are configured (config.py), at small sizes for speed.
D2 = InputConfig(min_size=64, max_size=100, resize_rule="detectron2", channel_order="BGR", pixel_range=255.0,
                 pixel_mean=(103.530, 116.280, 123.675), pixel_std=(1.0, 1.0, 1.0))
D2_RGB = InputConfig(min_size=96, max_size=160, resize_rule="detectron2", size_divisibility=1)
D2_COCO = InputConfig(min_size=800, max_size=1333, resize_rule="detectron2", channel_order="BGR",
                      pixel_range=255.0, pixel_mean=(103.530, 116.280, 123.675), pixel_std=(1.0, 1.0, 1.0))


def _pil(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def _sizes_to_check(seed: int) -> torch.Tensor:
    side = torch.arange(1, 301)
    random = np.random.default_rng(seed).integers(1, MAX_SIDE + 1, (20000, 2))
    return torch.cat([torch.cartesian_prod(side, side), torch.tensor(random)])


def _expected_sizes(sizes: torch.Tensor, cfg: InputConfig) -> list[list[int] | None]:
    want: list[list[int] | None] = []
    for h, w in sizes.tolist():
        try:
            want.append(list(resized_size(h, w, cfg)))
        except ValueError:  # a side that resizes to nothing (refused before any export): 0 here
            want.append(None)
    return want


def _assert_sizes(got: list[list[int]], want: list[list[int] | None]) -> None:
    for size, expected in zip(got, want, strict=True):
        if expected is None:
            assert min(size) == 0
        else:
            assert size == expected


def test_sizes_follow_detectron2s_rule_everywhere() -> None:
    # Every (h, w) up to 300 px and random ones up to MAX_SIDE against the float64 rule of data/transforms.py.
    sizes = _sizes_to_check(6)
    for cfg in (D2, D2_COCO):
        _assert_sizes(resized_sizes(sizes, cfg).tolist(), _expected_sizes(sizes, cfg))


def _size_pairs(seed: int) -> list[list[tuple[int, int]]]:
    """(in, out) sides in batches: up- and downscales, equal sides, 1-pixel sides, large downscales."""
    rng = np.random.default_rng(seed)
    pairs = [(int(rng.integers(1, 120)), int(rng.integers(1, 120))) for _ in range(300)]
    pairs += [(n, n) for n in (1, 2, 5, 64)]
    pairs += [(1, int(o)) for o in rng.integers(2, 100, 10)] + [(int(i), 1) for i in rng.integers(2, 400, 10)]
    large = [(int(i), max(1, int(i / rng.uniform(8, 200)))) for i in rng.integers(500, 3000, 40)]
    return [pairs[i : i + 40] for i in range(0, len(pairs), 40)] + [large[i : i + 4] for i in range(0, 40, 4)]


@pytest.mark.parametrize("vertical", [False, True], ids=["horizontal", "vertical"])
def test_one_pass_equals_pil(vertical: bool) -> None:
    # One axis resized: PIL runs that pass alone. Batches of pairs, each image in the top-left of a
    # tensor whose padding holds random values: the coefficients must ignore them.
    rng = np.random.default_rng(7)
    for chunk in _size_pairs(8):
        in_sizes = torch.tensor([i for i, _ in chunk])
        out_sizes = torch.tensor([o for _, o in chunk])
        in_length, out_length = int(in_sizes.max()), int(out_sizes.max())
        coefficients = pil_bilinear_coefficients(in_sizes, out_sizes, in_length, out_length)
        other = 3  # the side that keeps its size
        images = rng.integers(0, 256, (len(chunk), in_length, other, 3), dtype=np.uint8)
        images[::5] = 255  # the largest sums
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()  # (N, 3, I, 3)
        if not vertical:
            x = x.transpose(-1, -2)  # (N, 3, 3, I)
        got = resample_fixed_point(x, coefficients, vertical=vertical)
        if not vertical:
            got = got.transpose(-1, -2)
        for n, (i, o) in enumerate(chunk):
            image = images[n, :i]
            want = _pil(image, o, other) if vertical else _pil(image.transpose(1, 0, 2), other, o)
            result = got[n, :, :o].permute(1, 2, 0).numpy()
            if not vertical:
                result = result.transpose(1, 0, 2)
            np.testing.assert_array_equal(result, want, err_msg=f"{i} -> {o}")
            assert (got[n, :, o:] == 0).all()


def test_two_passes_equal_pil() -> None:
    # Both sides resized, in the order PIL picks per image (Pillow 13 shrinks some tall images
    # vertically first), in batches of different sizes.
    rng = np.random.default_rng(9)
    for _ in range(60):
        count = int(rng.integers(1, 8))
        shapes = rng.integers(1, 120, (count, 4))  # h, w, h', w'
        shapes[: count // 2, 2] = np.maximum(1, shapes[: count // 2, 0] // rng.integers(2, 6))  # tall shrinks
        height, width = int(shapes[:, 0].max()), int(shapes[:, 1].max())
        images = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
        new_height, new_width = int(shapes[:, 2].max()), int(shapes[:, 3].max())
        got = pil_bilinear_resize(torch.from_numpy(images), torch.tensor(shapes[:, :2]),
                                  torch.tensor(shapes[:, 2:]), new_height, new_width)
        for n, (h, w, new_h, new_w) in enumerate(shapes.tolist()):
            want = _pil(images[n, :h, :w], new_h, new_w)
            np.testing.assert_array_equal(got[n, :, :new_h, :new_w].permute(1, 2, 0).numpy(), want,
                                          err_msg=f"{h}x{w} -> {new_h}x{new_w}")


def test_pass_orders_of_other_pillow_releases() -> None:
    # Each order against PIL run one axis at a time in that order (one-axis resizes are the same
    # in every release): the horizontal pass first up to Pillow 12.1, then vertically first for
    # images over 100 times taller than wide (12.2, 12.3), or shrinking much more in height (13).
    from maskrcnn.export.preprocess import _pillow_pass_order

    releases = ("10.4.0", "12.1.1", "12.2.0", "12.3.0", "13.0.0", "14.1.0.dev0")
    assert [_pillow_pass_order(v) for v in releases] == ["horizontal"] * 2 + ["tall"] * 2 + ["shrink"] * 2
    rng = np.random.default_rng(15)
    shapes = np.array([[404, 4, 101, 3], [404, 4, 101, 5], [300, 4, 200, 3], [80, 60, 30, 50],
                       [80, 60, 30, 40], [60, 80, 30, 40], [50, 50, 70, 20]])  # h, w, h', w'
    images = rng.integers(0, 256, (len(shapes), 404, 80, 3), dtype=np.uint8)
    for order in ("horizontal", "tall", "shrink"):
        got = pil_bilinear_resize(torch.from_numpy(images), torch.tensor(shapes[:, :2]),
                                  torch.tensor(shapes[:, 2:]), 200, 50, order=order)
        for n, (h, w, new_h, new_w) in enumerate(shapes.tolist()):
            vertical_first = {"horizontal": False, "tall": h > 100 * w and new_h < h,
                              "shrink": new_h < h and h - new_h > 2 * (w - new_w)}[order]
            image = images[n, :h, :w]
            if vertical_first:
                want = _pil(_pil(image, new_h, w), new_h, new_w)
            else:
                want = _pil(_pil(image, h, new_w), new_h, new_w)
            np.testing.assert_array_equal(got[n, :, :new_h, :new_w].permute(1, 2, 0).numpy(), want,
                                          err_msg=f"{order}: {h}x{w} -> {new_h}x{new_w}")


def test_float32_sums_stay_exact_at_the_bound() -> None:
    # The largest downscale the bound allows: min(min_size, max_size) = 48 and sides up to MAX_SIDE.
    from maskrcnn.export.preprocess import _MAX_TAPS, _max_taps

    assert _max_taps(InputConfig(min_size=48, max_size=64)) <= _MAX_TAPS
    in_side, out_side = MAX_SIDE, 32  # 512 to 1: up to 1024 taps
    coefficients = pil_bilinear_coefficients(torch.tensor([in_side]), torch.tensor([out_side]),
                                             in_side, out_side)
    assert 1000 < int((coefficients > 0).sum(-1).max()) <= _MAX_TAPS
    high = (coefficients / 64).floor()
    assert float(255 * high.sum(-1).max()) < 2**24
    assert float(255 * (coefficients - 64 * high).sum(-1).max()) < 2**24
    rng = np.random.default_rng(10)
    white = np.full((1, in_side, 3), 255, np.uint8)
    for image in (white, rng.integers(0, 256, (1, in_side, 3), dtype=np.uint8)):
        got = resample_fixed_point(torch.from_numpy(image).permute(2, 0, 1).float()[None], coefficients,
                                   vertical=False)
        np.testing.assert_array_equal(got[0].permute(1, 2, 0).numpy(), _pil(image, 1, out_side))


def test_refuses_downscales_past_the_bound() -> None:
    images, sizes = _padded([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="exact for min\\(min_size, max_size\\) down to 48 px"):
        prepare_batch(images, sizes, InputConfig(min_size=40, max_size=60, resize_rule="detectron2"))


def _d2_batches(seed: int, count: int, side: int) -> list[list[np.ndarray]]:
    """Random batches, then tall images that Pillow 13 shrinks vertically first, alone and with a wide one."""
    rng = np.random.default_rng(seed)
    shapes = ((250, 60, 3), (300, 90, 3), (40, 300, 3))
    tall = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    return [*_random_batches(seed, count, side), tall[:1], tall]


@pytest.mark.parametrize("cfg", [D2, D2_RGB], ids=["bgr-caffe", "rgb"])
def test_detectron2_rule_equals_make_batch(cfg: InputConfig) -> None:
    for images in _d2_batches(11, 30, 300):
        want = make_batch(images, cfg)
        got, sizes = prepare_batch(*_padded(images), cfg)
        assert sizes.tolist() == [list(s) for s in want.image_sizes]
        # The same uint8 pixels, then the same float32 operations: equal, not merely close.
        torch.testing.assert_close(got, want.tensor, rtol=0, atol=0)


def test_detectron2_rule_equals_make_batch_at_coco_sizes() -> None:
    rng = np.random.default_rng(12)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((480, 640, 3), (427, 300, 3))]
    for batch in (images[:1], images, [rng.integers(0, 256, (1500, 600, 3), dtype=np.uint8)]):
        want = make_batch(batch, D2_COCO)
        got, sizes = prepare_batch(*_padded(batch), D2_COCO)
        assert sizes.tolist() == [list(s) for s in want.image_sizes]
        torch.testing.assert_close(got, want.tensor, rtol=0, atol=0)


class _PrepareDetectron2(torch.nn.Module):
    def forward(self, images: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return prepare_batch(images, sizes, D2)


class _SizesDetectron2(torch.nn.Module):
    def forward(self, sizes: torch.Tensor) -> torch.Tensor:
        return resized_sizes(sizes, D2_COCO)


def _export(module: torch.nn.Module, example: tuple[torch.Tensor, ...], names: list[str],
            dynamic: dict[str, dict[int, str]], path: Path) -> Path:
    from maskrcnn.export.onnx_ops import OPSET

    program = torch.onnx.export(module.eval(), example, dynamo=True, input_names=names, opset_version=OPSET,
                                dynamic_shapes=dynamic)
    program.save(str(path))
    return path


def _one_thread(ort: Any) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return options


def test_detectron2_rule_exported_to_onnxruntime_equals_make_batch(tmp_path: Path) -> None:
    # ONNX Runtime keeps float64 (sizes, coefficients) and computes the float32 products exactly.
    pytest.importorskip("onnx", reason="the deploy extra is not installed")
    ort = pytest.importorskip("onnxruntime", reason="the deploy extra is not installed")
    path = _export(_PrepareDetectron2(), _padded(_random_batches(1, 1, 80)[0]), ["images", "sizes"],
                   {"images": {0: "n", 1: "h", 2: "w"}, "sizes": {0: "n"}}, tmp_path / "prepare_d2.onnx")
    session = ort.InferenceSession(str(path), _one_thread(ort), providers=["CPUExecutionProvider"])
    for images in _d2_batches(13, 12, 300):
        want = make_batch(images, D2)
        batch, sizes = _padded(images)
        got, got_sizes = session.run(None, {"images": batch.numpy(), "sizes": sizes.numpy()})
        assert got_sizes.tolist() == [list(s) for s in want.image_sizes]
        np.testing.assert_allclose(got, want.tensor.numpy(), rtol=0, atol=1e-5)


def test_detectron2_sizes_exported_to_onnxruntime(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="the deploy extra is not installed")
    ort = pytest.importorskip("onnxruntime", reason="the deploy extra is not installed")
    path = _export(_SizesDetectron2(), (torch.tensor([[480, 640], [300, 200]]),), ["sizes"],
                   {"sizes": {0: "n"}}, tmp_path / "sizes_d2.onnx")
    session = ort.InferenceSession(str(path), _one_thread(ort), providers=["CPUExecutionProvider"])
    sizes = _sizes_to_check(14)
    (got,) = session.run(None, {"sizes": sizes.numpy()})
    _assert_sizes(got.tolist(), _expected_sizes(sizes, D2_COCO))
