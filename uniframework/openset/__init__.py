"""Open-set stage: unknown scorers, ORE's energy + Weibull identifier, open-set metrics.

Importing the package imports ``weibull`` so that ``"energy_weibull"`` is in ``SCORERS``.
"""

from uniframework.openset import scores, weibull  # noqa: F401  (weibull registers a scorer)
from uniframework.openset.scores import SCORERS, make_scorer

__all__ = ["SCORERS", "make_scorer"]
