"""Per-rank shard writing for predict stages.

`trainer.predict` never gathers across ranks, so each rank writes the shards it computed
(atomically, the moment a shard's last image is done); rank 0 merges them after a barrier.
"""

from __future__ import annotations

from collections import defaultdict

from lightning.pytorch.callbacks import BasePredictionWriter

from distill.bank import shard_path, write_jsonl
from distill.scoring.plan import Shard


class ShardWriter(BasePredictionWriter):
    """Collects a rank's prediction records per shard and writes each shard when complete."""

    def __init__(self, bank_dir, stage: str, shards: list[Shard]):
        super().__init__(write_interval="batch")
        self.bank_dir, self.stage = bank_dir, stage
        self.expected = {s.id: len(s.items) for s in shards}
        self.shard_of = {i: s.id for s in shards for i in s.items}
        self.buffers: dict[int, list[dict]] = defaultdict(list)
        self.written: list[int] = []

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        for rec in prediction:
            k = self.shard_of[rec["index"]]
            buf = self.buffers[k]
            buf.append(rec)
            if len(buf) == self.expected[k]:
                write_jsonl(
                    shard_path(self.bank_dir, self.stage, k), sorted(buf, key=lambda r: r["index"])
                )
                del self.buffers[k]
                self.written.append(k)
