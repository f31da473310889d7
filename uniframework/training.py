"""Lightning wiring every stage shares: the Trainer from the `trainer` section, checkpoints,
loggers, resume from `last.ckpt`, and plain evaluation loops for features and logits."""

from __future__ import annotations

import logging
import math
import random
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader

from . import console
from .config import TrainerConfig
from .errors import UserError
from .io import AtomicCheckpointIO
from .tracking import stage_logger

log = logging.getLogger(__name__)


def make_trainer(
    cfg: TrainerConfig,
    run_dir: Path,
    stage: str,
    max_epochs: int | None = None,
    monitor: str | None = None,
) -> L.Trainer:
    """A Trainer writing `checkpoints/<stage>/{last,best}.ckpt` and `logs/<stage>/` (CSV, and
    TensorBoard or the run's MLflow run by `trainer.logger`); best = highest `monitor`, lowest
    when it is a loss."""
    ckpt = ModelCheckpoint(
        dirpath=run_dir / "checkpoints" / stage,
        filename="best" if monitor else "last",
        monitor=monitor,
        mode="min" if monitor and monitor.endswith("loss") else "max",
        # Lightning (>= 2.5) writes `last` only in a step that also wrote a top-k file; without
        # a monitor the one top-k file, the latest epoch's, is `last.ckpt` itself
        save_top_k=1,
        save_last=monitor is not None,
        enable_version_counter=False,
    )
    ckpt.CHECKPOINT_NAME_LAST = "last"
    bar, progress = console.progress(cfg.enable_progress_bar, stage)
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        max_epochs=max_epochs or cfg.max_epochs,
        max_steps=cfg.max_steps,
        max_time=cfg.max_time,
        limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches,
        check_val_every_n_epoch=cfg.check_val_every_n_epoch,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.gradient_clip_val,
        log_every_n_steps=cfg.log_every_n_steps,
        deterministic=cfg.deterministic,
        enable_progress_bar=bar,
        enable_model_summary=console.verbose(),
        num_sanity_val_steps=0,
        callbacks=[
            RngState(),
            ckpt,
            *progress,
            *([ChannelsLast()] if cfg.channels_last else []),
            *([Compile()] if cfg.compile else []),
            AttentionPath(cfg.attention),
        ],
        logger=_loggers(cfg, run_dir, stage),
        plugins=[AtomicCheckpointIO()],
        default_root_dir=run_dir,
    )


def compile_targets(module: nn.Module) -> list[nn.Module]:
    """The submodules `trainer.compile` compiles: the top-most ones named `backbone` or
    `encoder` (where every stage's steps spend their FLOPs: they are called as modules, while a
    Classifier's own `forward` is not), else the module's `model` (MAE)."""
    found: list[str] = []
    for name, _ in module.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in ("backbone", "encoder") and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    if not found and isinstance(getattr(module, "model", None), nn.Module):
        found = ["model"]
    return [module.get_submodule(n) for n in found]


class Compile(L.Callback):
    """`trainer.compile`: `torch.compile` (inductor) on `compile_targets` for the fit, in place
    (`nn.Module.compile`: parameter names and saved weights unchanged), undone when the fit
    ends so evaluation after it runs eagerly. Costs a compile per new input shape. `backend`:
    torch.compile's (tests use `aot_eager`, which traces the same way without generating code)."""

    def __init__(self, backend: str = "inductor") -> None:
        self.backend = backend

    def setup(self, trainer, pl_module, stage: str) -> None:
        for m in compile_targets(pl_module):
            m.compile(backend=self.backend)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for m in compile_targets(pl_module):
            m._compiled_call_impl = None  # what `nn.Module.compile` set; None = eager again


class ChannelsLast(L.Callback):
    """`trainer.channels_last`: the module's 4-D weights NHWC for the fit — a convolution with
    NHWC weights takes an NCHW input and returns NHWC, so the whole network runs channels-last —
    and back to NCHW when the fit ends (saved weights are plain contiguous tensors)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        pl_module.to(memory_format=torch.channels_last)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        pl_module.to(memory_format=torch.contiguous_format)


def set_attention(module: nn.Module, fused: bool) -> dict[nn.Module, bool]:
    """Every attention layer in `module` with timm's `fused_attn` switch (ViT, Swin, the MAE /
    SimMIM / iBOT encoders and decoders) set to `fused`; returns each one's previous setting."""
    previous = {m: m.fused_attn for m in module.modules() if hasattr(m, "fused_attn")}
    for m in previous:
        m.fused_attn = fused
    return previous


class AttentionPath(L.Callback):
    """`trainer.attention`: the attention path of the module's timm layers for the fit, put back
    when it ends. `auto`: F.scaled_dot_product_attention on a GPU; on a CPU the explicit
    softmax(q k^T) v, whose backward is plain matrix products (the fused CPU kernel's backward
    costs ~30% of a ViT-Ti step there, and bf16 widens the gap)."""

    def __init__(self, mode: str = "auto") -> None:
        self.mode, self.previous = mode, {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        on_cpu = trainer.strategy.root_device.type == "cpu"
        fused = self.mode == "fused" or (self.mode == "auto" and not on_cpu)
        self.previous = set_attention(pl_module, fused)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for m, fused in self.previous.items():
            m.fused_attn = fused
        self.previous = {}


def _loggers(cfg: TrainerConfig, run_dir: Path, stage: str) -> list[Logger]:
    """CSV always (the run directory's own record), plus the one `trainer.logger` names."""
    folder = run_dir / "logs" / stage
    loggers: list[Logger] = [CSVLogger(folder, name="", version=_fresh(folder, "csv"))]
    if cfg.logger == "tensorboard":
        loggers.append(TensorBoardLogger(folder, name="", version="tensorboard"))
    elif cfg.logger == "mlflow" and (mlflow := stage_logger(run_dir, stage)) is not None:
        loggers.append(mlflow)
    return loggers


class RngState(Callback):
    """The global random states (torch, CUDA, numpy, Python) in every checkpoint, put back on
    resume, so a resumed fit draws the shuffles, augmentations and masks an uninterrupted one
    draws. Tensors, numbers and tuples only: `weights_only` loading reads them."""

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "python": random.getstate(),
        }

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])


def _fresh(folder: Path, name: str) -> str:
    """`name`, or `name-2`, `name-3`... when a cut-off run already wrote there (Lightning's
    CSV logger would otherwise overwrite the earlier epochs' rows on resume)."""
    n = 1
    while (folder / (name if n == 1 else f"{name}-{n}")).exists():
        n += 1
    return name if n == 1 else f"{name}-{n}"


def fit(
    trainer: L.Trainer,
    module: L.LightningModule,
    train: DataLoader,
    val: DataLoader | None,
) -> None:
    """`trainer.fit`, resuming from `last.ckpt` when an earlier run of this stage was cut off."""
    last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
    resume = str(last) if last.is_file() else None
    if resume:
        log.info("resuming from %s", last)
    with warnings.catch_warnings():
        # the folder holds this fit's own checkpoints, the ones it resumes from
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
        trainer.fit(module, train, val, ckpt_path=resume)


def best_state(trainer: L.Trainer) -> dict[str, torch.Tensor] | None:
    """The LightningModule state of the best checkpoint (None when none was kept)."""
    path = trainer.checkpoint_callback.best_model_path
    if not path or not Path(path).is_file():
        return None
    return AtomicCheckpointIO().load_checkpoint(path)["state_dict"]


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up for `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def process_count(cfg: TrainerConfig) -> int:
    """How many processes a fit with `cfg` runs: devices per node x nodes, `devices` read as
    Lightning reads it (a list or "0,1": its length; `auto` / -1: every GPU when the accelerator
    is a GPU one, or `auto` on a machine with a GPU; else 1)."""
    devices = cfg.devices
    gpu = cfg.accelerator in ("gpu", "cuda") or (
        cfg.accelerator == "auto" and torch.cuda.is_available()
    )
    if devices in ("auto", -1, "-1"):
        per_node = max(1, torch.cuda.device_count()) if gpu else 1
    elif isinstance(devices, list):
        per_node = len(devices)
    elif isinstance(devices, str) and "," in devices:
        per_node = len([d for d in devices.split(",") if d.strip()])
    elif isinstance(devices, str) and not devices.strip().isdigit():
        raise UserError(
            f"trainer.devices = {devices!r}: give a number, a list of device indices, or auto"
        )
    else:
        per_node = int(devices)
    return per_node * cfg.num_nodes


def from_rank_zero(compute):
    """`compute()` as rank 0 computes it, on every rank when a process group is up (DDP keeps it
    after `fit`), so that every rank goes on with the same decision; without a group (one
    process, or a rank whose first fit is still to come) each process computes it itself."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return compute()
    box = [compute() if torch.distributed.get_rank() == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def planned_epochs(trainer: L.Trainer) -> int:
    """The epochs a fit will run: `max_epochs`, or fewer when `max_steps` ends it first (an
    epoch is ceil(batches / accumulate_grad_batches) optimizer steps)."""
    epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else math.inf
    batches = trainer.num_training_batches
    if trainer.max_steps > 0 and math.isfinite(batches) and batches > 0:
        per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
        epochs = min(epochs, math.ceil(trainer.max_steps / per_epoch))
    return max(1, epochs) if math.isfinite(epochs) else 1


@torch.no_grad()
def extract(
    model: torch.nn.Module, loader: DataLoader, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Features [N, D], logits [N, C], labels [N] and dataset indices [N] over a loader."""
    was_training = model.training
    model.eval().to(device)
    out: dict[str, list[torch.Tensor]] = {"features": [], "logits": [], "labels": [], "index": []}
    for x, y, idx in loader:
        f = model.forward_features(x.to(device))
        out["features"].append(f.float().cpu())
        out["logits"].append(model.forward_head(f).float().cpu())
        out["labels"].append(y)
        out["index"].append(idx)
    model.train(was_training)
    if not out["index"]:  # an empty view (e.g. no test folder): empty tensors of the same kind
        d, c = getattr(model, "feature_dim", 0), getattr(model, "num_classes", 0)
        empty = torch.zeros(0, dtype=torch.long)
        return {
            "features": torch.zeros(0, d),
            "logits": torch.zeros(0, c),
            "labels": empty,
            "index": empty.clone(),
        }
    return {k: torch.cat(v) for k, v in out.items()}
