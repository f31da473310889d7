"""The rows `predict` answers with, one per image, from class probabilities and the unknown
detector's decisions: the same for a run directory (`predict.RunClassifier`) and an exported
ONNX file (`export.OnnxClassifier`). Columns: `predict`'s module docstring."""

from __future__ import annotations

from pathlib import Path

import torch


def learned_rows(
    paths: list[Path],
    names: list[str],
    k: int,
    logits: torch.Tensor,
    score: torch.Tensor,
    unknown: torch.Tensor,
) -> list[dict]:
    """The rows of a detector refitted on the final classifier: `logits [N, n]` over every
    learned class (`names`: the k known ones, then the new ones), its scores / decisions `[N]`.
    An unflagged image is its best learned class (`discovered_class` too when that is a new
    one); a flagged one is unknown, with no class."""
    best = logits.argmax(1)
    new = {i: names[int(b)] for i, b in enumerate(best) if int(b) >= k and not bool(unknown[i])}
    return make_rows(paths, names, logits.softmax(1), score, unknown, new)


def make_rows(
    paths: list[Path],
    names: list[str],
    probs: torch.Tensor,
    score: torch.Tensor | None,
    unknown: torch.Tensor | None,
    found: dict[int, str],
) -> list[dict]:
    """The rows of the module docstring from class probabilities `[N, m]` (`names`: the m
    classes), the detector's scores / decisions `[N]` (None without a detector) and the
    discovered class name of image i, `found[i]` (a flagged image's discovered class, or an
    unflagged image's new class)."""
    rows = []
    for i, p in enumerate(paths):
        known = names[int(probs[i].argmax())]
        is_unknown = bool(unknown[i]) if unknown is not None else False
        rows.append(
            {
                "path": str(p),
                "prediction": (found.get(i) or "unknown") if is_unknown else known,
                "known_class": known,
                "known_prob": round(float(probs[i].max()), 4),
                "unknown_score": None if score is None else round(float(score[i]), 4),
                "is_unknown": is_unknown,
                "discovered_class": found.get(i),  # None (blank) unless flagged unknown
                "scores": {n: round(float(v), 4) for n, v in zip(names, probs[i], strict=True)},
            }
        )
    return rows
