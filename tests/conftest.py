"""Shared test helpers: tiny, fast configs on the embedded digits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# What tests may read from the checkout, linked into each test's working directory.
SHARED = ["configs", "docs"]
# What a run writes in its working directory; the checkout's copies must survive the suite.
RUN_OUTPUT = ["runs", "lightning_logs", "mlruns", "mlflow.db"]

# Under pytest-xdist (`pytest -n N`, as `make test` runs) each worker takes its share of the
# cores, so N workers do not each start a thread per core; processes the tests start inherit it.
# (A preset OMP_NUM_THREADS is left to rule both.)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    _THREADS = max(1, len(os.sched_getaffinity(0)) // _WORKERS)
    torch.set_num_threads(_THREADS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)

# Small, quick and deterministic: 8 px digits, a 1.2 M-parameter ResNet, 3 epochs.
TINY = [
    "data.dataset=digits",
    "data.image_size=8",
    "data.max_per_class=60",
    "data.batch_size=32",
    "model.backbone=resnet_tiny",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _work_in_a_temporary_directory(tmp_path_factory, monkeypatch):
    """Every test runs in a fresh folder, so a run without --out (runs/<name>) or a process the
    test starts never writes into the checkout; configs/ and docs/ are linked in."""
    cwd = tmp_path_factory.mktemp("cwd")
    for name in SHARED:
        (cwd / name).symlink_to(REPO / name)
    monkeypatch.chdir(cwd)
    yield


def _snapshot() -> dict[str, tuple[int, int]]:
    out = {}
    for name in RUN_OUTPUT:
        if (REPO / name).is_file():  # MLflow's default store
            st = os.stat(REPO / name)
            out[str(REPO / name)] = (st.st_size, st.st_mtime_ns)
        for root, _dirs, files in os.walk(REPO / name):
            for f in files:
                st = os.stat(os.path.join(root, f))
                out[os.path.join(root, f)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(autouse=True, scope="session")
def _checkout_left_alone():
    """The suite must leave the checkout's run directories (e.g. the demo's) as they were."""
    before = _snapshot()
    yield
    after = _snapshot()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"the tests changed files in the checkout: {changed[:10]}"
