"""Items of different sizes in memory-bounded chunks of similar size.

RoIAlign, RoIPool, mask pasting and keypoint decoding each compute many
items (RoIs, detections) whose windows differ in size. Computing all of them
as one tensor padded to the largest window wastes memory and time; one at a
time wastes the vectorisation. ``size_chunks`` sorts the items by size and
cuts the sorted list into chunks whose padded tensor stays under a budget of
elements, so that each chunk is one batched computation of items that pad
little.

The cost model: item ``i`` has extents ``sizes[i] (K,)`` (e.g. the height and
width of its window); a chunk computed as one tensor is padded to the largest
extent on each axis, so it costs ``len(chunk) * prod_k max(sizes[chunk, k])``
elements. An extent below 1 counts as 1.

Shapes: ``sizes (N,)`` or ``(N, K)``; the result is a list of int64 index
tensors whose concatenation is a permutation of ``0 .. N-1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def size_chunks(
    sizes: Tensor | Sequence[float] | Sequence[Sequence[float]],
    budget: int,
    *,
    octaves: bool = False,
    stable: bool = False,
) -> list[Tensor]:
    """Indices of the items, sorted by size, in chunks whose padded cost fits ``budget`` elements.

    Items are sorted by the product of their extents (``stable`` as in
    ``torch.argsort``: True keeps equal sizes in input order, False leaves
    their order to torch's default sort), and the sorted list is cut
    greedily: each chunk takes the next items as long as its padded cost
    (see the module docstring) stays at most ``budget``. A single item that
    costs more than the budget is a chunk of its own. Since the cost only
    grows as items are added, this gives the fewest chunks of consecutive
    sorted items.

    ``octaves=True`` (1-D ``sizes`` only) instead never mixes sizes more than
    a factor of two apart: item sizes are rounded up to powers of two, a
    chunk holds one power ``2^g`` only, and ``max(1, budget >> g)`` items of
    it. Padding then at most doubles any item's work, for at most one
    partial chunk per power of two.

    The indices are on the device of ``sizes``; the greedy cut runs on a CPU
    copy of the sorted sizes, and either way the chunk lengths are read back
    to the host once.
    """
    sizes = torch.as_tensor(sizes)
    n = sizes.shape[0]
    extents = (sizes[:, None] if sizes.dim() == 1 else sizes.flatten(1)).clamp(min=1)  # (N, K)
    if octaves and extents.shape[1] != 1:
        raise ValueError(f"octaves needs one size per item, got sizes of shape {tuple(sizes.shape)}")
    if n == 0:
        return []
    order = torch.argsort(extents.prod(dim=1), stable=stable)
    ordered = extents[order]
    counts = _octave_counts(ordered[:, 0], budget) if octaves else _greedy_counts(ordered.cpu(), budget)
    return list(order.split(counts))


def _greedy_counts(ordered: Tensor, budget: int) -> list[int]:
    """Chunk lengths along ``ordered (N, K)``, sorted by product: each the longest that fits."""
    n = ordered.shape[0]
    counts = []
    start = 0
    while start < n:
        # Every later item costs at least the first one, so no chunk is longer than this.
        limit = min(n - start, max(1, int(budget // ordered[start].prod())))
        # Padded cost of the chunks start .. start + j for j < limit; it grows with j.
        peak = ordered[start : start + limit].cummax(dim=0).values.prod(dim=1)
        cost = peak * torch.arange(1, limit + 1)
        count = max(1, int((cost <= budget).sum()))
        counts.append(count)
        start += count
    return counts


def _octave_counts(ordered: Tensor, budget: int) -> list[int]:
    """Chunk lengths along ``ordered (N,)``: runs of one power of two, ``budget >> g`` items each."""
    # log2 on the sizes' own device: another device's log2 may round a size
    # within an ulp of a power of two into the neighbouring octave.
    octave = torch.log2(ordered).ceil().long()
    counts = []
    powers, lengths = torch.unique_consecutive(octave, return_counts=True)
    for g, length in zip(powers.tolist(), lengths.tolist(), strict=True):
        per_chunk = max(1, budget >> g)
        counts += [per_chunk] * (length // per_chunk) + ([length % per_chunk] if length % per_chunk else [])
    return counts
