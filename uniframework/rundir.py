"""A run directory: its context (`RunContext`: the config, the data, the saved models), how to
open a finished one (`open_run`, `final_stage`), and which config it belongs to.

A run directory belongs to one config: what a rerun may reuse, and what it must refuse.

A rerun compares its resolved config with the saved `config.yaml`. A difference *touches* a
stage when it can change that stage's result: a global key (seed, data, model, trainer) touches
every stage; a stage's option touches that stage and every later one (they read its output);
a change in the list of stages touches the first position where the lists part. Keys that
cannot change a result (`HARMLESS`) may differ. Reusing the directory is refused (UserError,
exit 2) when a touched stage has finished or has started (its checkpoint folder exists), unless
`--restart-from` redoes every touched stage; `--overwrite` starts the directory afresh.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError

from .config import Config, ModelConfig, load_config, renamed_keys
from .data import OpenWorldData
from .data.images import working_short_side
from .errors import UserError
from .io import load_matching, load_weights, read_json, save_weights
from .models import Classifier, build_classifier
from .models.backbones import pretrained_stats

log = logging.getLogger(__name__)

# the test-view preprocessing, in every classifier file's metadata (`RunContext.save_model`)
PREPROCESS = ("image_size", "mean", "std", "short_side")

# Where the run happens or how it is shown, not what it computes.
HARMLESS = {
    "name",
    "data.num_workers",
    "data.in_memory",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.logger",
    "trainer.mlflow_uri",
}
HARMLESS_STAGE_OPTIONS = {"figures"}

# What a run writes at the top of its directory (removed by --overwrite, nothing else is).
RUN_FILES = ["config.yaml", "metrics.json", "state.json", "report.html", "config-history"]
RUN_FOLDERS = ["checkpoints", "logs", "report", "lightning_logs"]


def config_hash(tree: dict[str, Any]) -> str:
    """A short, stable name for a resolved config."""
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def _stage_names(tree: dict[str, Any]) -> list[str]:
    return [next(iter(s)) for s in tree.get("stages", [])]


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any, int]]:
    """Every differing key of two resolved configs as (dotted key, old, new, first touched stage
    index); harmless keys are left out. Stage options are named `stages.<stage>.<option>`."""
    changes: list[tuple[str, Any, Any, int]] = []
    g_old = _flatten({k: v for k, v in old.items() if k != "stages"})
    g_new = _flatten({k: v for k, v in new.items() if k != "stages"})
    for key in sorted(set(g_old) | set(g_new)):
        if key not in HARMLESS and g_old.get(key) != g_new.get(key):
            changes.append((key, g_old.get(key), g_new.get(key), 0))
    names_old, names_new = _stage_names(old), _stage_names(new)
    parted = next(
        (i for i, (a, b) in enumerate(zip(names_old, names_new)) if a != b),
        min(len(names_old), len(names_new)),
    )
    for i in range(parted):
        name = names_new[i]
        label = name if names_new.count(name) == 1 else str(i)
        o, n = _flatten(old["stages"][i][name]), _flatten(new["stages"][i][name])
        for key in sorted(set(o) | set(n)):
            if key not in HARMLESS_STAGE_OPTIONS and o.get(key) != n.get(key):
                changes.append((f"stages.{label}.{key}", o.get(key), n.get(key), i))
    if names_old != names_new:
        changes.append(("stages", names_old, names_new, parted))
    return changes


def check_reuse(
    old: dict[str, Any],
    new: dict[str, Any],
    run_dir: Path,
    state: dict[str, Any],
    restart_from: str | None,
) -> None:
    """Refuse (UserError) to reuse `run_dir` when the config change touches a stage that has
    finished or started and `restart_from` does not redo it."""
    changes = config_changes(with_defaults(old), new)
    if not changes:
        return
    first = min(c[3] for c in changes)
    old_names = _stage_names(old)
    touched = old_names[first:]
    used = [
        s for s in touched if s in state.get("done", []) or (run_dir / "checkpoints" / s).exists()
    ]
    new_names = _stage_names(new)
    if not used:
        return
    if restart_from is not None and new_names.index(restart_from) <= first:
        return
    lines = [f"  {key}: {_show(a)} -> {_show(b)}" for key, a, b, _ in changes]
    ways = ["  --out NEW_DIR       run the new config in a fresh directory"]
    if 0 < first < len(new_names):
        ways.append(
            f"  --restart-from {new_names[first]}   redo '{new_names[first]}' and later stages "
            "with the new config (earlier results are kept)"
        )
    ways.append("  --overwrite         delete this run's results and start the directory afresh")
    raise UserError(
        f"run directory '{run_dir}' holds results of another config: stage(s) "
        f"{', '.join(used)} ran with it, and these keys differ (saved -> now):\n"
        + "\n".join(lines)
        + "\nNothing was changed. Ways out:\n"
        + "\n".join(ways)
    )


def with_defaults(tree: dict[str, Any]) -> dict[str, Any]:
    """A saved config with every default of today's code filled in, so that an option added
    since the run was written (absent there, at its default now) is no change. A saved config
    that no longer validates (an option since removed) is compared as it is."""
    try:
        return Config.model_validate(tree).to_dict()
    except (ValidationError, UserError):
        return tree


def _show(value: Any) -> str:
    return "(absent)" if value is None else json.dumps(value)


def read_saved_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(
            f"'{path}' is not valid YAML ({err}); rerun with --overwrite or another --out"
        ) from None
    return renamed_keys(tree) if isinstance(tree, dict) else None  # written before a rename


def clear_run_dir(run_dir: Path) -> None:
    """Remove what a run wrote in `run_dir` (and the stages' folders); nothing else."""
    if not run_dir.is_dir():
        return
    if not (run_dir / "state.json").is_file() and not (run_dir / "config.yaml").is_file():
        raise UserError(
            f"--overwrite: '{run_dir}' is not a run directory (no state.json or config.yaml); "
            "refusing to delete anything there — choose another --out"
        )
    from .registry import STAGES

    for name in [*RUN_FILES, *RUN_FOLDERS, *STAGES.names()]:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class RunContext:
    """What a stage gets: the config, the run directory, the data, saved models."""

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)

    @cached_property
    def data(self) -> OpenWorldData:
        data = OpenWorldData.build(self.cfg.data, self.cfg.seed)
        stats = pretrained_stats(self.cfg.model)
        if stats is None:
            return data
        # weights trained elsewhere expect their own normalisation, not the dataset's; every
        # view, `predict` and `export` read mean / std from these two sets
        log.info("images normalised as the pretrained weights expect: mean %s, std %s", *stats)
        train, test = copy.copy(data.train), copy.copy(data.test)
        for base in (train, test):
            base.mean, base.std = stats
        return dataclasses.replace(data, train=train, test=test)

    def weights_path(self, stage: str) -> Path:
        return self.run_dir / "checkpoints" / f"{stage}.safetensors"

    def model_start(self, key: str) -> tuple[ModelConfig, bool]:
        """The model config the fit `key` (`checkpoints/<key>/`) builds from, and whether the
        build loads its start weights (`model.weights`, or timm's hub for `model.pretrained`).
        Without such weights, a fit after `pretrain` starts from its encoder. A fit cut off
        earlier resumes from its `last.ckpt`, which holds every weight, so it loads none."""
        model, handoff = self.cfg.model, self.weights_path("pretrain")
        if model.weights is None and not model.pretrained and handoff.is_file():
            model = model.model_copy(update={"weights": str(handoff)})
        return model, not (self.run_dir / "checkpoints" / key / "last.ckpt").is_file()

    def save_model(self, stage: str, model: torch.nn.Module, **extra) -> Path:
        """Safetensors weights of a stage's model, with what is needed to rebuild it and to
        preprocess an image as the run's test view does (`predict` and `export` read these
        instead of rescanning the data: mean / std, image size, the working copy's short side)."""
        meta = {
            **extra,
            "stage": stage,
            "backbone": self.cfg.model.backbone,
            "num_classes": getattr(model, "num_classes", None),
            "class_order": self.data.split.class_order,
            "class_names": self.data.class_names,
            **self.test_preprocessing(),
        }
        path = self.weights_path(stage)
        save_weights(path, model.state_dict(), meta)
        return path

    def test_preprocessing(self) -> dict:
        """The run's test view (`PREPROCESS`): image size, the dataset's mean / std, and the
        short side of the working copy a scan keeps."""
        size, base = self.cfg.data.image_size, self.data.test
        return {
            "mean": [float(v) for v in base.mean],
            "std": [float(v) for v in base.std],
            "image_size": size,
            "short_side": working_short_side(size),
        }

    def load_classifier(self, stage: str) -> tuple[Classifier, dict]:
        """Rebuild a stage's classifier (its class count from the file) and load its weights
        (UserError on a mismatch); returns it with the file's metadata."""
        path = self.weights_path(stage)
        state, meta = load_weights(path)
        size, n = self.cfg.data.image_size, meta["num_classes"]
        model = build_classifier(self.cfg.model, size, n, start=False)  # no hub, no start file
        load_matching(model, state, str(path))
        return model, meta


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / cfg.name


def open_run(run_dir: str | Path) -> tuple[RunContext, dict]:
    """The run's context (its resolved config) and `state.json`; UserError naming the path when
    `run_dir` is missing or is not a folder `uniframework run` wrote."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(
            f"run directory '{run_dir}' does not exist: give the folder `uniframework run` "
            "wrote (runs/<name>, or its --out)"
        )
    missing = [f for f in ("config.yaml", "state.json") if not (run_dir / f).is_file()]
    if missing:
        raise UserError(
            f"'{run_dir}' is not a run directory (no {' or '.join(missing)}): give the folder "
            "`uniframework run` wrote (runs/<name>, or its --out)"
        )
    cfg = load_config(run_dir / "config.yaml", saved_run=True)
    return RunContext(cfg, run_dir), read_json(run_dir / "state.json")


def final_stage(ctx: RunContext) -> str | None:
    """The stage whose classifier is the run's last word: incremental, discover or supervised."""
    for stage in ("incremental", "discover", "supervised"):
        if ctx.weights_path(stage).is_file():
            return stage
    return None


def preprocessing(ctx, meta: dict) -> dict:
    """The run's test-view preprocessing (`PREPROCESS`: image_size, mean, std, short_side) from
    a classifier file's metadata; a file written without them gets them from the run's data,
    which is rebuilt for it (a scan of the training folder)."""
    if all(key in meta for key in PREPROCESS):
        return {key: meta[key] for key in PREPROCESS}
    return ctx.test_preprocessing()
