"""What a run prints: each event once, one line per epoch in a log, a bar per epoch on a terminal.

Verbosity: -1 quiet (warnings and errors), 0 normal (our stage and epoch lines), 1 verbose
(also Lightning's own messages: devices, model summaries). Lightning puts a handler of its own
on the `lightning` logger that also propagates to the root, so every message came out twice;
here the root holds the only handler. Dependencies' deprecation warnings are filtered where
they are raised (their modules), not ours.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

log = logging.getLogger("uniframework")

DEPENDENCIES = (
    r"(lightning|lightning_fabric|lightning_utilities|pytorch_lightning|torch|torchvision|timm"
    r"|torchmetrics|sklearn|matplotlib|tensorboard|google|pydantic|mlflow|alembic|sqlalchemy)"
    r"(\..*)?$"
)
_verbosity = 0


def setup(verbosity: int = 0) -> None:
    """Configure logging and warnings for a CLI process (idempotent)."""
    global _verbosity
    _verbosity = verbosity
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[uniframework] %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    log.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        dep = logging.getLogger(name)
        for h in list(dep.handlers):  # Lightning's own console handler: the duplicate line
            dep.removeHandler(h)
        dep.propagate = True
        dep.setLevel(logging.INFO if verbosity >= 1 else logging.WARNING)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=DEPENDENCIES)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")


def verbose() -> bool:
    return _verbosity >= 1


def progress(enable: bool, stage: str) -> tuple[bool, list[Callback]]:
    """(Lightning's `enable_progress_bar`, callbacks): a bar per epoch (kept) on a terminal;
    one log line per epoch otherwise; nothing when quiet or disabled."""
    if not enable or _verbosity < 0:
        return False, []
    if sys.stdout.isatty():
        return True, [TQDMProgressBar(leave=True)]
    return False, [EpochLine(stage)]


def _fmt(value) -> str:
    return f"{float(value):.4g}"


class EpochLine(Callback):
    """One line per finished epoch: the stage, epoch i/n, the logged metrics and seconds."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {
            k: v for k, v in trainer.callback_metrics.items() if v.numel() == 1 and "step" not in k
        }
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(metrics.items()))
        seconds = time.perf_counter() - getattr(self, "_start", time.perf_counter())
        log.info(
            "%s epoch %d/%d: %s (%.1f s)",
            self.stage,
            trainer.current_epoch + 1,
            trainer.max_epochs,
            shown or "-",
            seconds,
        )
