"""The dense input transform equals ``make_batch``: in PyTorch, and exported to ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from maskrcnn.config import InputConfig
from maskrcnn.data.transforms import make_batch, resized_size
from maskrcnn.export.preprocess import prepare_batch, resized_sizes

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


def test_refuses_the_detectron2_rule() -> None:
    with pytest.raises(ValueError, match="torchvision resize rule, not 'detectron2'"):
        resized_sizes(torch.tensor([[10, 20]]), InputConfig(resize_rule="detectron2"))


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
