"""Process-level helpers shared by the predict stages: ranks, barriers, trainers, loggers."""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
import warnings

import hydra
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from distill.cpu import available_cores


class _DropTips(logging.Filter):
    """Lightning's advertising tips, and its "GPU available: False, used: False" lines that
    every Trainer repeats (a GPU left unused still gets Lightning's own warning)."""

    NOISE = ("GPU available:", "TPU available:", "HPU available:", "IPU available:")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "Tip:" not in msg and not msg.startswith(self.NOISE)


def quiet_third_party() -> None:
    """Silence messages that say nothing about the user's run (advertising tips, a warning
    about our own batch sampler, upstream deprecations), so real warnings stand out."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    if logging.getLogger().handlers:
        # Under Hydra the root logger prints (and files) every record; Lightning's own console
        # handlers would print each of its lines a second time.
        for name in ("lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            for h in list(logger.handlers):
                if type(h) is logging.StreamHandler:
                    logger.removeHandler(h)
            logger.propagate = True
    warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:  # "Loading weights: 36/36" for every model component says nothing about the run
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def machine_name() -> str:
    """The CPU model (and core count) or the GPU name, for reports."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def launch_rank() -> int:
    """This process's global rank as its launcher set it (0 before any DDP launch).

    Read from the environment because it is needed before a Trainer exists (to decide who
    writes the bank's meta): ``RANK`` (torchrun), ``SLURM_PROCID`` (``srun`` with several
    tasks, as Lightning's SLURM environment reads it), ``OMPI_COMM_WORLD_RANK`` (mpirun), or
    Lightning's own launcher's ``NODE_RANK`` and ``LOCAL_RANK``.
    """
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ["SLURM_PROCID"])
    if "OMPI_COMM_WORLD_RANK" in os.environ:
        return int(os.environ["OMPI_COMM_WORLD_RANK"])
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    local = int(os.environ.get("LOCAL_RANK", 0))
    # Off node 0 the exact number does not matter, only that it is not 0.
    return local if node == 0 else node * 1_000_000 + local + 1


def is_launch_rank_zero() -> bool:
    return launch_rank() == 0


def prepare_on_zero_first(prepare):
    """``prepare(write)`` on rank 0 first, then on the others, who only verify.

    Rank 0 may rewrite the bank's meta or drop a stale stage; if other ranks already exist
    (their process group started in an earlier stage) they wait for it, so none reads a meta
    or a shard list that rank 0 is about to change.
    """
    zero = is_launch_rank_zero()
    result = prepare(True) if zero else None
    barrier()
    return result if zero else prepare(False)


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def global_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return launch_rank()


def set_cpu_threads(trainer, requested: int | None) -> int | None:
    """Threads for CPU work in this process: ``requested``, or cores / processes per node.

    Several CPU ranks on one machine would each take every core and oversubscribe it. Note
    that oneDNN's results can change in the last bits with the thread count (never a pick);
    equal thread counts give bitwise-equal scores across batch sizes and device counts.
    """
    n = requested
    on_cpu = trainer is not None and getattr(trainer.strategy.root_device, "type", "cpu") == "cpu"
    if n is None and on_cpu and trainer.world_size > 1:
        n = max(1, (os.cpu_count() or 1) // max(1, trainer.num_devices))
    if n:
        torch.set_num_threads(int(n))
    return n


# The x86 flags that decide which kernels torch runs (and whether bf16 is native or emulated,
# 60-130x slower than fp32 without AVX512-BF16 or AMX).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> list[str]:
    """Which of `CPU_FLAGS` this CPU reports (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [fl for fl in CPU_FLAGS if fl in have]
    except OSError:
        pass
    return []


def numerics() -> dict:
    """What decides a run's floating-point results besides its config: the library versions,
    the CPU thread count and vector ISA, the GPU. The same command with another thread count
    or on another CPU sums in another order (students and teachers differ in the last digits
    and, through training, in accuracy); every output records this block to tell them apart.
    """
    import platform

    out = {
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_flags(),
        "machine": platform.machine(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_device_name(0)
    return out


def device_type(trainer_cfg) -> str:
    """The device kind a trainer config will use: ``cuda``, ``mps`` or ``cpu``."""
    acc = str(trainer_cfg.get("accelerator", "auto"))
    if acc in ("gpu", "cuda"):
        return "cuda"
    if acc == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return acc


def resolve_workers(value, trainer_cfg, key: str = "num_workers") -> int:
    """DataLoader workers for ``value``: an integer as given, or ``auto``.

    ``auto`` on an accelerator is the cores one device's process may use, less one for the
    process itself (capped at 16): decoding then runs beside the GPU. On the CPU the U-Net
    already uses every core and decoding is a few percent of a step, so ``auto`` is 0
    (workers would only take cores from the U-Net).
    """
    if value is None:
        return 0
    if str(value) != "auto":
        return int(value)
    if device_type(trainer_cfg) == "cpu":
        return 0
    devices = trainer_cfg.get("devices", 1)
    try:
        per_node = int(devices) if str(devices) not in ("auto", "-1") else None
    except (TypeError, ValueError):
        per_node = len(devices) if OmegaConf.is_list(devices) else None
    if per_node is None:
        per_node = max(1, torch.cuda.device_count())
    return max(1, min(16, available_cores() // max(1, per_node) - 1))


_LOGGERS: dict[int, list] = {}


def build_loggers(cfg: DictConfig) -> list:
    """Instantiate every logger under ``cfg.logger`` (a mapping of name -> _target_ config)."""
    if not cfg.get("logger"):
        return []
    return [hydra.utils.instantiate(c) for c in cfg.logger.values() if c and "_target_" in c]


def finish_loggers() -> None:
    """Flush and close the run's loggers (a W&B run is finished, not left open)."""
    for loggers in _LOGGERS.values():
        for lg in loggers:
            lg.finalize("success")
            if type(lg).__name__ == "WandbLogger":
                import wandb

                wandb.finish()
    _LOGGERS.clear()


def get_loggers(cfg: DictConfig) -> list:
    """The run's loggers, built once and shared by every stage (one W&B run per pipeline)."""
    key = id(cfg)
    if key not in _LOGGERS:
        _LOGGERS.clear()
        _LOGGERS[key] = build_loggers(cfg)
    return _LOGGERS[key]


class EndSpawnedGroup(Callback):
    """Destroy the process group at the end of a spawned worker's run (``ddp_spawn``).

    Each ``trainer.fit`` under ``ddp_spawn`` is a fresh set of processes that exit right
    after it. Left to the interpreter's shutdown, gloo's background threads could be torn
    down mid-flight and abort the worker ("terminate called without an active exception",
    SIGABRT) after its results were written; destroying the group first ends them cleanly.
    Other launchers keep their group for the next trainer of the same process.
    """

    def teardown(self, trainer, pl_module, stage: str) -> None:
        launcher = getattr(trainer.strategy, "launcher", None)
        spawned = getattr(launcher, "_start_method", None) in ("spawn", "fork", "forkserver")
        if spawned and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list | None = None, **overrides):
    """A Lightning Trainer from ``cfg.trainer`` with our callbacks, loggers and overrides."""
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    tcfg.update(overrides)
    tcfg["callbacks"] = [*callbacks, EndSpawnedGroup()]
    tcfg["logger"] = loggers if loggers else False
    return hydra.utils.instantiate(tcfg, _convert_="all")


class ImageRateBar(TQDMProgressBar):
    """The predict progress bar, showing images per second rather than batches."""

    def __init__(self, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self._t0 = 0.0
        self._n = 0

    def init_predict_tqdm(self):
        """Lightning's bar, drawn only once its first batch starts: at creation it knows
        neither its total nor its loader and printed an empty "Predicting: 0/?" line."""
        from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

        return Tqdm(
            desc=self.predict_description,
            position=(2 * self.process_position),
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
            delay=1e-6,
        )

    def on_predict_start(self, trainer, pl_module) -> None:
        super().on_predict_start(trainer, pl_module)
        self._t0, self._n = time.perf_counter(), 0

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        # Lightning's version redraws the bar under its old name before renaming it.
        if not self.has_dataloader_changed(dataloader_idx):
            return
        from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

        bar = self.predict_progress_bar
        bar.set_description(f"{self.predict_description} DataLoader {dataloader_idx}", False)
        bar.reset(total=convert_inf(self.total_predict_batches_current_dataloader))

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._n += len(batch.get("source", [])) + len(batch.get("failed", []))
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        dt = time.perf_counter() - self._t0
        if self.predict_progress_bar is not None and dt > 0:
            self.predict_progress_bar.set_postfix(img_s=f"{self._n / dt:.2f}", refresh=False)


def predict_then_merge(
    cfg: DictConfig,
    stage: str,
    bank_dir,
    todo: list,
    n_items: int,
    make_inputs,
    merge,
    loggers: list | None = None,
) -> dict | None:
    """Run a sharded predict stage on every rank, then ``merge()`` once on rank 0.

    ``make_inputs()`` returns ``(module, datamodule)`` and is only called when shards are left.
    Each rank writes its own shards (`distill.writer.ShardWriter`); the barriers make sure
    every shard is on disk before rank 0 merges, and the merged result is on disk before any
    rank goes on to a later stage. Returns the throughput stats of this call (or None).
    """
    from distill.writer import ShardWriter

    trainer, stats = None, None
    if todo:
        module, data = make_inputs()
        callbacks = [ShardWriter(bank_dir, stage, todo)]
        if cfg.trainer.get("enable_progress_bar", True):
            callbacks.append(ImageRateBar())
        trainer = build_trainer(cfg, callbacks, loggers, use_distributed_sampler=False)
        t0 = time.perf_counter()
        # Forked DataLoader workers share the parent's pages until they write to them; the
        # cyclic GC writes to every object it visits, so without this each worker would copy
        # the listing and the bank bit by bit (`distill.data.item_table`).
        gc.freeze()
        try:
            trainer.predict(module, datamodule=data, return_predictions=False)
        finally:
            gc.unfreeze()
        stats = {"images": n_items, "seconds": time.perf_counter() - t0}
    barrier()
    if trainer.is_global_zero if trainer is not None else global_rank() == 0:
        merge(stats)
    barrier()
    return stats
