"""Runs the stages of a config in order, passing artifacts through the run directory.

Run directory (`runs/<name>/` unless given): `config.yaml` (resolved), `metrics.json` (flat
`<stage>.<metric>` keys), `state.json` (finished stages, seconds per stage), `checkpoints/`,
`logs/`, figures. A rerun skips finished stages and resumes a cut-off one from `last.ckpt`;
`restart_from=STAGE` redoes that stage and every one after it.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.utilities import rank_zero_only

from .config import Config, save_config
from .errors import UserError, did_you_mean
from .io import (
    atomic_write_text,
    read_json,
    write_json,
)
from .registry import STAGES, load_plugins
from .report import try_write_report
from .rundir import (
    RunContext,
    check_reuse,
    clear_run_dir,
    config_hash,
    default_run_dir,
    read_saved_config,
)
from .tracking import MlflowRun, mlflow_run

log = logging.getLogger(__name__)


def run(
    cfg: Config,
    run_dir: Path | None = None,
    restart_from: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Run every stage of `cfg`; returns the merged metrics. A directory that holds results of
    another config is refused (see `rundir.check_reuse`) unless `restart_from` redoes what the
    change touches or `overwrite` starts it afresh."""
    load_plugins()
    run_dir = Path(run_dir or default_run_dir(cfg))
    stages = cfg.stage_list()
    names = [n for n, _ in stages]
    if restart_from is not None and restart_from not in names:
        raise UserError(
            f"--restart-from '{restart_from}' is not a stage of this config"
            f"{did_you_mean(restart_from, names)}; stages: {', '.join(names)}"
        )
    if overwrite and rank_zero_only.rank == 0:
        clear_run_dir(run_dir)
    state = read_json(run_dir / "state.json", {"done": [], "seconds": {}})
    metrics = read_json(run_dir / "metrics.json", {})
    tree = cfg.to_dict()
    if rank_zero_only.rank == 0:
        saved = read_saved_config(run_dir)
        if saved is not None:
            check_reuse(saved, tree, run_dir, state, restart_from)  # before anything is written
            _keep_history(saved, tree, run_dir, state)
    if restart_from is not None:
        redo = names[names.index(restart_from) :]
        state["done"] = [s for s in state["done"] if s not in redo]
        metrics = {k: v for k, v in metrics.items() if k.split(".")[0] not in redo}
        if rank_zero_only.rank == 0:
            for s in redo:  # forget their checkpoints (and sub-trainings'), so nothing resumes
                for path in [run_dir / "checkpoints" / s, *run_dir.glob(f"checkpoints/{s}_*/")]:
                    shutil.rmtree(path, ignore_errors=True)
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    with mlflow_run(cfg, run_dir, state, tree) as tracked:
        _run_stages(RunContext(cfg, run_dir), stages, state, metrics, tree, tracked)
        if rank_zero_only.rank == 0:
            try_write_report(run_dir)
    return metrics


def _run_stages(
    ctx: RunContext,
    stages: list,
    state: dict,
    metrics: dict,
    tree: dict,
    tracked: MlflowRun | None,
) -> None:
    """Run the stages not done yet; after each, rank 0 records its results (`metrics.json`,
    `state.json`, and the MLflow run when there is one)."""
    cfg, run_dir = ctx.cfg, ctx.run_dir
    for name, opts in stages:
        if name in state["done"]:
            log.info(
                "stage %s: finished earlier, skipped (--restart-from %s redoes it)", name, name
            )
            continue
        log.info("stage %s: starting (output in %s)", name, run_dir)
        start = time.perf_counter()
        # every stage starts from the seed: its numbers do not depend on which stages ran
        # before it in this process (a rerun after a kill, --restart-from)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        result = STAGES.get(name).run(ctx, opts)
        _barrier()  # later stages on every rank read what rank 0 wrote
        if rank_zero_only.rank != 0:
            continue
        metrics.update({f"{name}.{k}": v for k, v in result.items()})
        state["done"].append(name)
        state["seconds"][name] = round(time.perf_counter() - start, 2)
        state.setdefault("config_of", {})[name] = config_hash(tree)
        write_json(run_dir / "metrics.json", metrics)
        write_json(run_dir / "state.json", state)
        if tracked is not None:
            tracked.log_stage(name, result, run_dir)
        log.info(  # the stage logs its headline; every figure goes to metrics.json
            "stage %s: done in %.1f s (%d metrics)", name, state["seconds"][name], len(result)
        )


def _barrier() -> None:
    """Wait for every rank when a process group is up (DDP keeps it after `fit`)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _keep_history(saved: dict, tree: dict, run_dir: Path, state: dict) -> None:
    """When a finished stage came from the saved config and the run goes on under another,
    keep the saved one as `config-history/<hash>.yaml` (`state.json`'s `config_of` names it)."""
    if saved != tree and state["done"]:
        write_text = yaml.safe_dump(saved, sort_keys=False)
        atomic_write_text(run_dir / "config-history" / f"{config_hash(saved)}.yaml", write_text)
        for stage in state["done"]:  # runs from before `config_of` existed
            state.setdefault("config_of", {}).setdefault(stage, config_hash(saved))
