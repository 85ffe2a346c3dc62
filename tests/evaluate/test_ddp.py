"""Two CPU processes with ddp_spawn: the ranks split every global batch between them, the
step count is that of one process, and the all-reduced validation accuracy is exact."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from evaluate.data import EpochBatches
from tests.evaluate.test_training import make_module, trainer


class RecordPlan(Callback):
    """Each rank writes the batches it is served in each epoch (module level: picklable)."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_train_epoch_start(self, trainer, pl_module):
        batches = list(iter(pl_module._plan))
        path = Path(self.folder) / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.json"
        path.write_text(json.dumps({"batches": batches, "world": trainer.world_size}))

    def on_train_end(self, trainer, pl_module):
        path = Path(self.folder) / f"rank{trainer.global_rank}_end.json"
        path.write_text(json.dumps({"step": trainer.global_step, "acc": float(pl_module.last_acc)}))


def test_ddp_spawn_two_ranks(tmp_path):
    epochs = 2
    # val_batch 2: rank 0 validates 5 images in 3 batches, rank 1 4 images in 2.
    m = make_module(epochs=epochs, val_batch=2)
    t = trainer(tmp_path, epochs, [RecordPlan(str(tmp_path))], devices=2, strategy="ddp_spawn")
    t.fit(m)

    single = EpochBatches(10, 4, seed=0)
    for e in range(epochs):
        r0 = json.loads((tmp_path / f"rank0_epoch{e}.json").read_text())
        r1 = json.loads((tmp_path / f"rank1_epoch{e}.json").read_text())
        assert r0["world"] == r1["world"] == 2
        assert len(r0["batches"]) == len(r1["batches"]) == 3  # ceil(10 / 4) global steps
        single.set_epoch(e)
        for b0, b1, full in zip(r0["batches"], r1["batches"], single, strict=True):
            assert b0 and b1 and not set(b0) & set(b1)  # different data on each rank
            assert b0 + b1 == full  # together: the single-process batch
    ends = [json.loads((tmp_path / f"rank{r}_end.json").read_text()) for r in (0, 1)]
    assert ends[0]["step"] == ends[1]["step"] == epochs * 3
    assert ends[0]["acc"] == ends[1]["acc"]  # all-reduced

    # The weights and validation state came back to this process; one process measuring
    # the same weights on the whole validation set gets the same accuracy.
    acc_ddp = float(m.last_acc)
    assert acc_ddp == ends[0]["acc"] and int(m.last_epoch) == epochs
    check = make_module(epochs=epochs)
    check.model.load_state_dict(m.model.state_dict())
    trainer(tmp_path / "single", epochs).validate(check, verbose=False)
    assert torch.isclose(torch.tensor(float(check.last_acc)), torch.tensor(acc_ddp))
