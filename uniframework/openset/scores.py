"""Unknown scorers: one number per sample, **higher = more likely unknown**.

Logit scorers (pure functions over ``logits: [N, C]`` of the known classes):

- MSP (Hendrycks & Gimpel, ICLR 2017): ``-max softmax``.
- MaxLogit (Hendrycks et al., ICML 2022): ``-max logit``.
- Energy (Liu et al., NeurIPS 2020; ORE, Joseph et al., CVPR 2021 §4.3): the free energy
  ``E(x) = -T * logsumexp(logits / T)``, already low for knowns and high for unknowns.

Feature scorers (fitted on the known training features ``[M, D]``):

- Mahalanobis (Lee et al., NeurIPS 2018): class means, one tied covariance (Ledoit-Wolf).
- KNN (Sun et al., ICML 2022): cosine similarity to the k-th nearest normalised training feature.
- KNN against the pool (``knn_pool``): the k-th nearest similarity to the unlabelled pool minus
  that to the known training features (the pool as outlier exposure, no training).

Every scorer object follows one protocol, so the open-set stage can pick one by name::

    scorer = make_scorer("knn", k=50).fit(features, logits, labels)
    s = scorer.score(features, logits)  # [N], higher = more unknown

Energy + Weibull (ORE's unknown identifier) lives in ``weibull.py`` and registers itself here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf
from torch import Tensor


def msp_score(logits: Tensor) -> Tensor:
    """Negative maximum softmax probability. ``logits: [N, C]`` -> ``[N]`` in ``[-1, -1/C]``."""
    return -logits.float().softmax(dim=-1).amax(dim=-1)


def maxlogit_score(logits: Tensor) -> Tensor:
    """Negative maximum logit. ``logits: [N, C]`` -> ``[N]``."""
    return -logits.float().amax(dim=-1)


def energy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Helmholtz free energy ``E(x) = -T * logsumexp(logits / T)`` (ORE eq. 4; Liu et al. 2020).

    ``logits: [N, C]`` over the *known* classes only -> ``[N]``. Knowns get low (very negative)
    energy, unknowns high. ORE's official code uses ``T = 1.5``.
    """
    return -temperature * torch.logsumexp(logits.float() / temperature, dim=-1)


def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Energy oriented as an unknown score: it is ``E(x)`` itself (higher = more unknown)."""
    return energy(logits, temperature)


class Scorer:
    """Protocol: ``fit(features, logits, labels) -> self`` then ``score(features, logits) -> [N]``.

    ``features: [N, D]`` penultimate features, ``logits: [N, C]`` known-class logits,
    ``labels: [N]`` known labels (``-1`` marks an unknown sample). Arguments a scorer does not
    need may be ``None``.
    """

    def fit(
        self, features: Tensor | None, logits: Tensor | None, labels: Tensor | None = None
    ) -> Scorer:
        return self

    def score(self, features: Tensor | None, logits: Tensor | None) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Tensor | float | int]:
        """What `from_state_dict` needs to rebuild the fitted scorer (tensors and numbers)."""
        return {}

    @classmethod
    def from_state_dict(cls, state: dict) -> Scorer:
        return cls(**state)


SCORERS: dict[str, type[Scorer]] = {}


def register_scorer(name: str) -> Callable[[type[Scorer]], type[Scorer]]:
    """Class decorator adding a scorer to ``SCORERS`` under ``name``."""

    def wrap(cls: type[Scorer]) -> type[Scorer]:
        SCORERS[name] = cls
        return cls

    return wrap


def make_scorer(name: str, **kwargs) -> Scorer:
    """Build a registered scorer by name, e.g. ``make_scorer("energy", temperature=1.5)``."""
    if name not in SCORERS:
        raise ValueError(f"unknown open-set scorer {name!r}; choose one of {sorted(SCORERS)}")
    return SCORERS[name](**kwargs)


@register_scorer("msp")
class MSPScorer(Scorer):
    """MSP as a scorer object (no fitting)."""

    def score(self, features: Tensor | None, logits: Tensor | None) -> Tensor:
        return msp_score(logits)


@register_scorer("maxlogit")
class MaxLogitScorer(Scorer):
    """MaxLogit as a scorer object (no fitting)."""

    def score(self, features: Tensor | None, logits: Tensor | None) -> Tensor:
        return maxlogit_score(logits)


@register_scorer("energy")
class EnergyScorer(Scorer):
    """Free energy as a scorer object (no fitting); ``temperature`` as in ``energy``."""

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def score(self, features: Tensor | None, logits: Tensor | None) -> Tensor:
        return energy_score(logits, self.temperature)

    def state_dict(self) -> dict[str, float]:
        return {"temperature": float(self.temperature)}


@register_scorer("mahalanobis")
class MahalanobisScorer(Scorer):
    """Min over classes of the squared Mahalanobis distance (Lee et al. 2018, without input
    pre-processing or layer ensembles), i.e. minus their confidence score ``M(x)``.

    The tied covariance of the class-centred features is estimated with sklearn's Ledoit-Wolf
    shrinkage, so it stays invertible when ``D`` is large against the sample count.
    """

    def __init__(self) -> None:
        self.means: Tensor | None = None  # [C, D]
        self.whiten: Tensor | None = None  # [D, D], whiten @ whiten.T = precision

    def fit(
        self, features: Tensor | None, logits: Tensor | None = None, labels: Tensor | None = None
    ) -> MahalanobisScorer:
        if labels is None:
            raise ValueError("MahalanobisScorer.fit needs the class labels of the features")
        keep = labels >= 0  # unknowns (-1) do not enter the class statistics
        x, y = features[keep].double().cpu(), labels[keep].cpu()
        classes = torch.unique(y)
        self.means = torch.stack([x[y == c].mean(0) for c in classes])  # [C, D]
        centred = x - self.means[torch.searchsorted(classes, y)]
        precision = torch.from_numpy(
            LedoitWolf(assume_centered=True).fit(centred.numpy()).precision_
        )
        self.whiten = torch.linalg.cholesky(precision)  # lower L with L @ L.T = precision
        return self

    def score(self, features: Tensor | None, logits: Tensor | None = None) -> Tensor:
        if self.means is None:
            raise RuntimeError("MahalanobisScorer.score called before fit")
        w = self.whiten.to(features.device)
        # (f - mu)^T P (f - mu) = ||(f - mu) @ L||^2 with P = L L^T
        d = torch.cdist(features.double() @ w, self.means.to(features.device) @ w)  # [N, C]
        return d.amin(dim=1).pow(2).float()

    def state_dict(self) -> dict[str, Tensor]:
        if self.means is None:
            raise RuntimeError("MahalanobisScorer.state_dict called before fit")
        return {"means": self.means, "whiten": self.whiten}

    @classmethod
    def from_state_dict(cls, state: dict) -> MahalanobisScorer:
        scorer = cls()
        scorer.means, scorer.whiten = state["means"].double(), state["whiten"].double()
        return scorer


@register_scorer("knn")
class KNNScorer(Scorer):
    """Deep nearest neighbours (Sun et al., ICML 2022): ``-cos(f, z_(k))`` where ``z_(k)`` is the
    k-th nearest L2-normalised training feature. Equivalent ranking to their Euclidean k-th
    distance on the unit sphere (``||a - b||^2 = 2 - 2 cos``). Paper: ``k = 50`` on CIFAR-10.
    """

    def __init__(self, k: int = 50, chunk: int = 4096) -> None:
        self.k, self.chunk = k, chunk
        self.bank: Tensor | None = None  # [M, D], unit norm

    def fit(
        self, features: Tensor | None, logits: Tensor | None = None, labels: Tensor | None = None
    ) -> KNNScorer:
        if labels is not None:
            features = features[labels >= 0]  # the bank holds known samples only
        if len(features) < self.k:
            raise ValueError(f"KNNScorer needs at least k={self.k} training features")
        self.bank = F.normalize(features.float(), dim=1)
        return self

    def score(self, features: Tensor | None, logits: Tensor | None = None) -> Tensor:
        if self.bank is None:
            raise RuntimeError("KNNScorer.score called before fit")
        bank = self.bank.to(features.device)
        q = F.normalize(features.float(), dim=1)
        # chunk the queries so the [n, M] similarity matrix stays small; one chunk when they fit
        # (so an ONNX trace, export.py, holds no fixed-size Split that later batches would break)
        parts = q.split(self.chunk) if len(q) > self.chunk else [q]
        kth = [(part @ bank.T).topk(self.k, dim=1).values[:, -1] for part in parts]
        return -torch.cat(kth)

    def state_dict(self) -> dict[str, Tensor | int]:
        if self.bank is None:
            raise RuntimeError("KNNScorer.state_dict called before fit")
        return {"k": self.k, "bank": self.bank}

    @classmethod
    def from_state_dict(cls, state: dict) -> KNNScorer:
        scorer = cls(k=int(state["k"]))
        scorer.bank = state["bank"].float()
        return scorer


@register_scorer("knn_pool")
class PoolKNNScorer(Scorer):
    """KNN against two banks: ``cos(f, p_(k)) - cos(f, z_(k))``, the k-th nearest similarity to
    the unlabelled pool's normalised features minus that to the labelled known ones.

    Sun et al.'s KNN asks only "how far is the k-th known neighbour?"; an open world also holds
    an unlabelled pool, which contains the new classes. An image whose neighbourhood is pool
    rather than labelled data is likely new — outlier exposure from the pool without training
    (and without picking which pool images are unknown: known images in a mixed pool sit near
    labelled ones too, so they score near 0). ``fit(features, logits, labels)``: ``labels >= 0``
    rows form the known bank, ``-1`` rows the pool bank.
    """

    def __init__(self, k: int = 50) -> None:
        self.k = k
        self.known: KNNScorer | None = None
        self.pool: KNNScorer | None = None

    def fit(
        self, features: Tensor | None, logits: Tensor | None = None, labels: Tensor | None = None
    ) -> PoolKNNScorer:
        if labels is None or not bool((labels < 0).any()):
            raise ValueError("PoolKNNScorer needs pool samples (label -1) beside the known ones")
        known, pool = features[labels >= 0], features[labels < 0]
        self.k = max(1, min(self.k, len(known), len(pool)))  # a small pool: its k-th at most
        self.known, self.pool = KNNScorer(self.k).fit(known), KNNScorer(self.k).fit(pool)
        return self

    def score(self, features: Tensor | None, logits: Tensor | None = None) -> Tensor:
        if self.known is None or self.pool is None:
            raise RuntimeError("PoolKNNScorer.score called before fit")
        # KNNScorer.score = -cos to the k-th neighbour: known's minus pool's
        return self.known.score(features) - self.pool.score(features)

    def state_dict(self) -> dict[str, Tensor | int]:
        if self.known is None or self.pool is None:
            raise RuntimeError("PoolKNNScorer.state_dict called before fit")
        return {"k": self.k, "bank": self.known.bank, "pool_bank": self.pool.bank}

    @classmethod
    def from_state_dict(cls, state: dict) -> PoolKNNScorer:
        scorer = cls(k=int(state["k"]))
        scorer.known = KNNScorer.from_state_dict({"k": state["k"], "bank": state["bank"]})
        scorer.pool = KNNScorer.from_state_dict({"k": state["k"], "bank": state["pool_bank"]})
        return scorer
