"""A run directory belongs to one config: what a rerun may reuse, and what it must refuse.

A rerun compares its resolved config with the saved `config.yaml`. A difference *touches* a
stage when it can change that stage's result: a global key (seed, data, model, trainer) touches
every stage; a stage's option touches that stage and every later one (they read its output);
a change in the list of stages touches the first position where the lists part. Keys that
cannot change a result (`HARMLESS`) may differ. Reusing the directory is refused (UserError,
exit 2) when a touched stage has finished or has started (its checkpoint folder exists), unless
`--restart-from` redoes every touched stage; `--overwrite` starts the directory afresh.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

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
    changes = config_changes(old, new)
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
    return tree if isinstance(tree, dict) else None


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
