"""Class-incremental learning: herding exemplar memory, learners (fine-tune, replay, LwF, iCaRL,
ORE's class-balanced fine-tune), their losses, the nearest-mean-of-exemplars classifier and the
accuracy-matrix metrics; `stage.py` runs them task by task."""

from .memory import ExemplarMemory, herding

__all__ = ["ExemplarMemory", "herding"]
