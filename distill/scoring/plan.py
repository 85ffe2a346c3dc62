"""The work plan of a predict stage: aspect buckets, shards (the unit of resume), and batches.

Images are grouped by their resized size (aspect buckets) so every batch is one tensor, then
cut into shards of ``shard_size`` images. Shard membership depends only on the item list and
``shard_size``, never on batch size or device count, so a resumed run or a run on another
number of devices writes the same shards. Unfinished shards are dealt round-robin to ranks;
each rank cuts its shards into batches of one size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch.utils.data import Sampler


@dataclass(frozen=True)
class Shard:
    """Items (dataset indices) of one shard, grouped by bucket size in a fixed order."""

    id: int
    items: tuple[int, ...]


def make_shards(sizes: list[tuple[int, int]], shard_size: int) -> list[Shard]:
    """Sort items by (bucket size, index) and cut them into shards.

    Args:
        sizes: the resized (width, height) of each item, indexed like the dataset.
        shard_size: images per shard; the last shard may be smaller.
    """
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i][1], sizes[i][0], i))
    return [
        Shard(k, tuple(order[s : s + shard_size]))
        for k, s in enumerate(range(0, len(order), shard_size))
    ]


def assign(shards: list[Shard], rank: int, world: int) -> list[Shard]:
    """The shards of one rank: every ``world``-th of the list, starting at ``rank``."""
    return shards[rank::world]


def batches_of(shard: Shard, sizes: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Cut a shard into batches of at most ``batch_size`` items of one size."""
    out: list[list[int]] = []
    current: list[int] = []
    for i in shard.items:
        if current and (len(current) == batch_size or sizes[i] != sizes[current[0]]):
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    return out


class PlanSampler(Sampler[list[int]]):
    """Batch sampler over a rank's shards (used with ``use_distributed_sampler=False``)."""

    def __init__(self, shards: list[Shard], sizes: list[tuple[int, int]], batch_size: int):
        self.batches = [b for s in shards for b in batches_of(s, sizes, batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def pending(shards: list[Shard], is_done: Callable[[Shard], bool]) -> list[Shard]:
    """Shards still to compute (resume skips those whose file is complete)."""
    return [s for s in shards if not is_done(s)]
