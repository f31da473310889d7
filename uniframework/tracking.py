"""MLflow tracking (`trainer.logger: mlflow`): one MLflow run per run directory.

Recorded: the resolved config as params (`trainer.max_epochs`, `stages.supervised.lr`, ...;
`stages` lists the stage names), each stage's results under their `metrics.json` names
(`supervised.known_acc`) when the stage finishes, the Lightning training curves as
`<stage>/<metric>` (`supervised/train_loss`, by step), and `metrics.json`, `config.yaml` and
`report.html` as artifacts. The MLflow experiment is the config's `name`; the MLflow run is named
after the run directory. Its id and store sit in `state.json` (`mlflow`), so a rerun of the same
directory (resume after a kill, `--restart-from`, an appended stage) logs into the same MLflow
run; `--overwrite` starts a new one.

Store: `trainer.mlflow_uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` in the
working directory with artifacts in `./mlruns` — MLflow 3's own default, so `mlflow ui` started
in the same folder shows the runs, and no server is needed. MLflow 3 refuses the older file
store (a folder as the store, `file:./mlruns`) unless MLFLOW_ALLOW_FILE_STORE=true is set.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from . import console
from .config import Config
from .errors import UserError
from .io import read_json, write_json
from .rundir import _flatten

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACTS = ["metrics.json", "config.yaml", "report.html"]
MAX_PARAM_LENGTH = 500  # MLflow >= 1.28 accepts 500 characters (3.x: 6000); any server takes 500


def tracking_uri(uri: str | None) -> str:
    """The store: `uri`, $MLFLOW_TRACKING_URI or MLflow's default, with a relative sqlite path
    made absolute (a rerun started from another folder then finds the same store)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    prefix = "sqlite:///"
    path = unquote(uri[len(prefix) :])
    if uri.startswith(prefix) and not path.startswith("/") and path != ":memory:":
        return prefix + str(Path(path).resolve())
    return uri


def config_params(tree: dict[str, Any]) -> dict[str, str]:
    """The resolved config as flat MLflow params, named like `rundir.config_changes` names keys:
    `data.batch_size`, `stages.<stage>.<option>` (the stage's position when its name repeats)."""
    params = _flatten({k: v for k, v in tree.items() if k != "stages"})
    names = [next(iter(s)) for s in tree.get("stages", [])]
    params["stages"] = names
    for i, (name, entry) in enumerate(zip(names, tree.get("stages", []))):
        label = name if names.count(name) == 1 else str(i)
        params.update(_flatten(entry[name] or {}, f"stages.{label}"))
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    return {k: v[:MAX_PARAM_LENGTH] for k, v in text.items()}


class StageLogger(MLFlowLogger):
    """Lightning's MLFlowLogger writing one stage's curves into the run's MLflow run, as
    `<stage>/<metric>`. The pipeline owns that run: its params are the resolved config (a
    module's own hyperparameters would clash across stages — MLflow params never change), and it
    ends when the whole run does, not when a stage's fit does."""

    LOGGER_JOIN_CHAR = "/"

    def log_hyperparams(self, params: Any) -> None:
        pass

    def finalize(self, status: str = "success") -> None:
        pass


def stage_logger(run_dir: Path, stage: str) -> StageLogger | None:
    """The MLflow logger for `make_trainer` (rank 0), when the pipeline opened an MLflow run for
    `run_dir`; None otherwise (other ranks, a stage trained outside `pipeline.run`)."""
    saved = read_json(run_dir / "state.json", {}).get("mlflow")
    if not saved or rank_zero_only.rank != 0:
        return None
    return StageLogger(tracking_uri=saved["tracking_uri"], run_id=saved["run_id"], prefix=stage)


def _import_mlflow():
    try:
        import mlflow
    except ImportError:
        raise UserError(
            "trainer.logger=mlflow needs MLflow, which is not installed: "
            "pip install 'uniframework[mlflow]' (or choose trainer.logger=tensorboard)"
        ) from None
    if not console.verbose():  # "Creating initial MLflow database tables..." and the like
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


class MlflowRun:
    """The MLflow run of one run directory (rank 0 only)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log_params(self, tree: dict[str, Any]) -> None:
        """The resolved config; keys the run already holds keep their first value (MLflow
        params cannot change; the current config is the `config.yaml` artifact)."""
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        params = config_params(tree)
        changed = sorted(k for k, v in params.items() if k in have and have[k] != v)
        if changed:
            log.warning(
                "MLflow run %s keeps its first values of %s (MLflow params cannot change); "
                "the current config is its config.yaml artifact",
                self.run_id,
                ", ".join(changed),
            )
        new = [Param(k, v) for k, v in params.items() if k not in have]
        for i in range(0, len(new), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def log_stage(self, stage: str, result: dict[str, Any], run_dir: Path) -> None:
        """A finished stage's results as `<stage>.<metric>`, and the updated `metrics.json`."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(f"{stage}.{k}", float(v), now, 0)
            for k, v in result.items()
            if isinstance(v, int | float)
        ]
        self._safely(self.client.log_batch, self.run_id, metrics=metrics)
        self._safely(self.client.log_artifact, self.run_id, str(run_dir / "metrics.json"))

    def end(self, run_dir: Path, status: str) -> None:
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self._safely(self.client.log_artifact, self.run_id, str(run_dir / name))
        self._safely(self.client.set_terminated, self.run_id, status)

    def _safely(self, call, *args, **kwargs) -> None:
        """A tracking call that fails (a server gone) warns; the training goes on."""
        from mlflow.exceptions import MlflowException

        try:
            call(*args, **kwargs)
        except (MlflowException, OSError) as err:
            log.warning("MLflow run %s: %s failed: %s", self.run_id, call.__name__, err)


def _reuse(client: Any, saved: dict | None, uri: str) -> str | None:
    """The run id saved in `state.json`, when it is in this store and not deleted."""
    from mlflow.exceptions import MlflowException

    if not saved or saved.get("tracking_uri") != uri:
        return None
    try:
        run = client.get_run(saved["run_id"])
    except MlflowException:
        log.warning("MLflow run %s is not in %s any more: starting a new one", saved["run_id"], uri)
        return None
    if run.info.lifecycle_stage != "active":
        log.warning("MLflow run %s was deleted: starting a new one", saved["run_id"])
        return None
    return run.info.run_id


def _create(client: Any, cfg: Config, run_dir: Path) -> str:
    from mlflow.tracking.context.registry import resolve_tags

    exp = client.get_experiment_by_name(cfg.name)
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise UserError(
            f"the MLflow experiment '{cfg.name}' is deleted in the tracking store: restore it "
            "(`mlflow experiments restore`), remove it for good (`mlflow gc`), or rename the run "
            "(name=...)"
        )
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(cfg.name)
    where = run_dir.resolve()
    tags = {"mlflow.runName": where.name, "uniframework.run_dir": str(where)}
    return client.create_run(exp_id, tags=resolve_tags(tags)).info.run_id


def open_run(cfg: Config, run_dir: Path, state: dict) -> MlflowRun:
    """Reopen the MLflow run `state` names, or start one; `state["mlflow"]` names it after."""
    mlflow = _import_mlflow()
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(cfg.trainer.mlflow_uri)
    try:
        client = mlflow.MlflowClient(uri)
        run_id = _reuse(client, state.get("mlflow"), uri) or _create(client, cfg, run_dir)
        client.update_run(run_id, status="RUNNING")
    except (MlflowException, ImportError) as err:
        raise UserError(
            f"MLflow could not open the tracking store '{uri}' (trainer.mlflow_uri): {err}\n"
            "Fix trainer.mlflow_uri (e.g. sqlite:///mlflow.db, no server needed), or choose "
            "trainer.logger=tensorboard."
        ) from None
    state["mlflow"] = {"tracking_uri": uri, "run_id": run_id}
    log.info("MLflow: experiment '%s', run %s in %s", cfg.name, run_id, uri)
    return MlflowRun(client, run_id)


@contextmanager
def mlflow_run(cfg: Config, run_dir: Path, state: dict, tree: dict) -> Iterator[MlflowRun | None]:
    """The run's MLflow run while the stages run (None unless `trainer.logger` is mlflow, and on
    ranks other than 0); it ends FINISHED, FAILED on an error, KILLED on Ctrl-C."""
    if cfg.trainer.logger != "mlflow" or rank_zero_only.rank != 0:
        yield None
        return
    run = open_run(cfg, run_dir, state)
    run.log_params(tree)
    write_json(run_dir / "state.json", state)  # `stage_logger` reads the run id there
    try:
        yield run
    except BaseException as err:
        run.end(run_dir, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    run.end(run_dir, "FINISHED")
