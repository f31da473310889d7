"""The learners, written as data: what each keeps and which loss it adds (STYLE: data, not
branches). The stage reads these flags; the losses live in `losses.py`.

- finetune: new task's images only, cross-entropy — the lower bound (catastrophic forgetting).
- replay: new task + the herding exemplar memory, cross-entropy.
- lwf (Li & Hoiem 2016): new task only + distillation (T = 2) of the previous model's old-class
  logits; no memory as in the paper (`lwf_memory: true` adds the exemplars). Adapted to one
  growing head (class-incremental), as is usual since iCaRL's "LwF-MC".
- icarl (Rebuffi et al. 2017): new task + memory, sigmoid BCE with the previous model's
  outputs as old-class targets; nearest-mean-of-exemplars classifier at test time.
- ore (Joseph et al. 2021): new task + memory (cross-entropy), then a short fine-tune on the
  class-balanced exemplar set of old + new classes after each task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LearnerName = Literal["finetune", "replay", "lwf", "icarl", "ore"]


@dataclass(frozen=True)
class Learner:
    name: str
    memory: bool = False  # train on the exemplars beside the new task's images
    distill: Literal["lwf", "icarl"] | None = None  # loss against the previous model
    balanced_finetune: bool = False  # ORE: fine-tune on the balanced exemplar set after a task

    @property
    def keeps_memory(self) -> bool:
        """A memory is selected (for training, the balanced fine-tune, or NME)."""
        return self.memory or self.balanced_finetune


LEARNERS: dict[str, Learner] = {
    "finetune": Learner("finetune"),
    "replay": Learner("replay", memory=True),
    "lwf": Learner("lwf", distill="lwf"),
    "icarl": Learner("icarl", memory=True, distill="icarl"),
    "ore": Learner("ore", memory=True, balanced_finetune=True),
}


def get_learner(name: str, lwf_memory: bool = False) -> Learner:
    learner = LEARNERS[name]
    if name == "lwf" and lwf_memory:
        return Learner("lwf", memory=True, distill="lwf")
    return learner
