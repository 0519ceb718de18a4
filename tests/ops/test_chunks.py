"""size_chunks: a permutation, sorted by size, every chunk within budget, as few chunks as greedy allows."""

from __future__ import annotations

import math

import pytest
import torch

from maskrcnn.ops.chunks import size_chunks


def _random_sizes(seed: int) -> tuple[torch.Tensor, int]:
    """Sizes ``(N,)`` or ``(N, K)``, integer or float, with ties and items over budget; and a budget."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 300, (1,), generator=g))
    k = [0, 1, 2, 3][seed % 4]  # 0: a 1-D tensor
    shape = (n,) if k == 0 else (n, k)
    if seed % 2:
        sizes = torch.randint(0, 40, shape, generator=g)  # many ties, some 0
    else:
        sizes = torch.rand(shape, generator=g, dtype=torch.float64) ** 3 * 60
    budget = int(torch.randint(1, 5000, (1,), generator=g))
    return sizes, budget


def _extents(sizes: torch.Tensor) -> torch.Tensor:
    return (sizes[:, None] if sizes.dim() == 1 else sizes).clamp(min=1)


def _padded_cost(extents: torch.Tensor) -> float:
    return len(extents) * math.prod(extents.amax(dim=0).tolist())


def _check_permutation_and_order(sizes: torch.Tensor, chunks: list[torch.Tensor], stable: bool) -> None:
    order = torch.cat(chunks)
    assert order.dtype == torch.int64
    assert sorted(order.tolist()) == list(range(len(sizes)))  # every index exactly once
    assert all(len(chunk) > 0 for chunk in chunks)
    key = _extents(sizes).prod(dim=1)[order].tolist()
    for i in range(len(order) - 1):
        assert key[i] <= key[i + 1]  # sorted by size
        if stable and key[i] == key[i + 1]:
            assert order[i] < order[i + 1]  # ties keep their input order


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("seed", range(40))
def test_greedy_chunks_are_a_sorted_permutation_within_budget(seed: int, stable: bool) -> None:
    sizes, budget = _random_sizes(seed)
    chunks = size_chunks(sizes, budget, stable=stable)
    _check_permutation_and_order(sizes, chunks, stable)
    extents = _extents(sizes)
    for i, chunk in enumerate(chunks):
        # Within budget, unless a single item alone exceeds it.
        assert len(chunk) == 1 or _padded_cost(extents[chunk]) <= budget
        # Greedy: the next item would not have fitted, so no chunk could be longer.
        if i + 1 < len(chunks):
            grown = torch.cat((chunk, chunks[i + 1][:1]))
            assert _padded_cost(extents[grown]) > budget


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("seed", range(0, 40, 4))  # the 1-D cases
def test_octave_chunks_hold_one_power_of_two_each(seed: int, stable: bool) -> None:
    sizes, budget = _random_sizes(seed)
    chunks = size_chunks(sizes, budget, octaves=True, stable=stable)
    _check_permutation_and_order(sizes, chunks, stable)
    octave = [math.ceil(math.log2(max(float(s), 1.0))) for s in sizes.tolist()]
    previous = None
    for chunk in chunks:
        powers = {octave[i] for i in chunk.tolist()}
        assert len(powers) == 1  # never mixes sizes more than a factor of two apart
        g = powers.pop()
        assert len(chunk) <= max(1, budget >> g)
        # Hence within budget too, counting every item at its chunk's largest size.
        assert len(chunk) == 1 or len(chunk) * float(sizes[chunk].clamp(min=1).max()) <= budget
        if previous is not None and previous[0] == g:
            assert previous[1] == max(1, budget >> g)  # only an octave's last chunk is partial
        previous = (g, len(chunk))


def test_hand_case() -> None:
    # Sorted sizes 1, 2, 3, 5, 20 with a budget of 6: {1, 2} costs 2 * 2 = 4, adding 3
    # would cost 9; {3} then {5} (3 + 5 padded is 10); 20 exceeds the budget on its own.
    chunks = size_chunks([3, 1, 2, 5, 20], 6)
    assert [c.tolist() for c in chunks] == [[1, 2], [0], [3], [4]]
    # Two axes: 1 x 5 and 5 x 1 have the same size but pad each other to 5 x 5.
    chunks = size_chunks(torch.tensor([[1, 5], [5, 1], [2, 2]]), 12, stable=True)
    assert [c.tolist() for c in chunks] == [[2], [0], [1]]
    assert [c.tolist() for c in size_chunks([[1, 5], [5, 1]], 50)] == [[0, 1]]
    # Octaves with a budget of 8: 1 -> 8 per chunk (0.5 counts as 1), 2 -> 4, 3 and 4 -> 2, 5 .. 8 -> 1.
    chunks = size_chunks(torch.tensor([3.0, 1, 2, 4, 3, 7, 0.5]), 8, octaves=True, stable=True)
    assert [c.tolist() for c in chunks] == [[1, 6], [2], [0, 4], [3], [5]]


@pytest.mark.parametrize("octaves", [False, True])
def test_empty_input(octaves: bool) -> None:
    assert size_chunks([], 100, octaves=octaves) == []
    assert size_chunks(torch.zeros(0), 100, octaves=octaves) == []
    assert size_chunks(torch.zeros(0, 2), 100) == []


def test_octaves_need_one_size_per_item() -> None:
    with pytest.raises(ValueError, match="octaves"):
        size_chunks(torch.ones(3, 2), 100, octaves=True)


def test_one_item_and_a_budget_below_every_item() -> None:
    assert [c.tolist() for c in size_chunks([7], 1)] == [[0]]
    assert [c.tolist() for c in size_chunks([7, 8, 9], 1)] == [[0], [1], [2]]
    assert [c.tolist() for c in size_chunks([7, 8, 9], 1, octaves=True)] == [[0], [1], [2]]
