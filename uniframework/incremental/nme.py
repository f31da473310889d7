"""iCaRL's nearest-mean-of-exemplars classifier (Rebuffi et al., CVPR 2017, Alg. 1).

Class means are the means of the L2-normalised features of a class's exemplars, renormalised;
a sample goes to the class whose mean is nearest its normalised feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Normalised mean of normalised features per class, [num_classes, D] (zero rows for
    classes without exemplars, so they are never nearest)."""
    f = F.normalize(features.float(), dim=1)  # [N, D]
    sums = torch.zeros(num_classes, f.shape[1]).index_add_(0, labels.long(), f)
    return F.normalize(sums, dim=1)


def nme_predict(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Class of the nearest mean, [N]: argmin_y || phi(x)/|phi(x)| - mu_y ||."""
    f = F.normalize(features.float(), dim=1)  # [N, D]
    dist = torch.cdist(f, means.float())  # [N, C]
    dist[:, means.norm(dim=1) == 0] = float("inf")  # a class with no exemplar is never chosen
    return dist.argmin(1)
