"""Which pool images the supervised stage trains as unknown, re-selected once per epoch.

ORE's auto-labelling takes the `unknown_topk` least-known samples of every pool batch
(`module.least_known`). On a pool of novel images only that is always right; on a pool that
mixes known and novel images it feeds on itself: whatever is picked is pushed to high energy, so
it is picked again. The `known_weibull` rule reads the knowns instead: at the start of each epoch
(from `unknown_start_epoch`), a frozen snapshot of the model scores the held-out known images
(`val`, never trained on) and the whole pool; ORE's Weibull (`openset.weibull.fit_weibull`) is
fitted to the knowns' negative free energy (T = 1, the energy-bounded loss's temperature), and
the pool images in its lower tail, CDF < `unknown_alpha`, are the epoch's unknowns. The rule's
threshold comes from images the loss never touches, so it holds whatever the pool's share of
novel images.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..openset.stage import auto_label_unlikely
from ..training import extract


class UnknownSelection(L.Callback):
    """Sets `module.selected` ([train-set size] bool, by dataset index) at each epoch start."""

    def __init__(self, val: DataLoader, pool: DataLoader, size: int, opts, num_known: int):
        self.val, self.pool, self.size, self.opts, self.k = val, pool, size, opts, num_known

    def on_train_epoch_start(self, trainer, module) -> None:
        selected = torch.zeros(self.size, dtype=torch.bool)
        if trainer.current_epoch >= self.opts.unknown_start_epoch:
            with torch.no_grad():  # `extract` scores in eval mode and restores the train mode
                val = extract(module.model, self.val, module.device)["logits"][:, : self.k]
                pool = extract(module.model, self.pool, module.device)
            picked = auto_label_unlikely(
                pool["logits"][:, : self.k], val, 1.0, self.opts.unknown_alpha
            )
            selected[pool["index"][picked]] = True
        module.selected = selected.to(module.device)
