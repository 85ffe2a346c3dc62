"""Per-rank shard writing for predict stages.

`trainer.predict` never gathers across ranks, so each rank writes the shards it computed
(atomically, the moment a shard's last image is done); rank 0 merges them after a barrier.
"""

from __future__ import annotations

from collections import defaultdict

from lightning.pytorch.callbacks import BasePredictionWriter

from distill.bank import shard_path, write_shard
from distill.scoring.plan import Shard


class ShardWriter(BasePredictionWriter):
    """Collects a rank's prediction records per shard and writes each shard when complete.

    A shard is complete when every one of its images has reported (records are keyed by the
    dataset ``index``; an image may yield several records, one per patch).
    """

    def __init__(self, bank_dir, stage: str, shards: list[Shard]):
        super().__init__(write_interval="batch")
        self.bank_dir, self.stage = bank_dir, stage
        self.expected = {s.id: len(s.items) for s in shards}
        self.shard_of = {i: s.id for s in shards for i in s.items}
        self.buffers: dict[int, list[dict]] = defaultdict(list)
        self.seen: dict[int, set[int]] = defaultdict(set)
        self.written: list[int] = []

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        touched = set()
        for rec in prediction:
            k = self.shard_of[rec["index"]]
            self.buffers[k].append(rec)
            self.seen[k].add(rec["index"])
            touched.add(k)
        for k in sorted(touched):
            if len(self.seen[k]) == self.expected[k]:
                recs = sorted(self.buffers.pop(k), key=lambda r: (r["index"], r.get("k", 0)))
                write_shard(shard_path(self.bank_dir, self.stage, k), recs)
                del self.seen[k]
                self.written.append(k)
