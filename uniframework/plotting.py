"""The one way figures are written: headless (Agg), tight layout, atomically, then closed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_write  # noqa: E402


def save_figure(fig: plt.Figure, path: Path, dpi: int = 110) -> None:
    """Write `fig` as a PNG at `path` (folders made, no half-written file), then free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    plt.close(fig)
