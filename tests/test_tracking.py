"""`trainer.logger: mlflow`: one MLflow run per run directory, in a local store, no server."""

import json
import sys
from pathlib import Path

import pytest

from uniframework.cli import main
from uniframework.config import load_config
from uniframework.errors import UserError
from uniframework.tracking import config_params, tracking_uri

from .conftest import TINY

RUN = ["run", "configs/digits.yaml", *TINY, "trainer.max_epochs=1", "trainer.logger=mlflow"]


@pytest.fixture(autouse=True)
def _no_mlflow_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)


def test_a_run_and_its_rerun_land_in_one_mlflow_run(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    out = tmp_path / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    # MLflow 3's default store, in the working directory: mlflow.db + artifacts in mlruns/
    assert Path("mlflow.db").is_file() and Path("mlruns").is_dir()
    client = mlflow.MlflowClient(tracking_uri(None))
    exp = client.get_experiment_by_name("digits")
    (run,) = client.search_runs([exp.experiment_id])
    state = json.loads((out / "state.json").read_text())
    assert state["mlflow"]["run_id"] == run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    metrics = json.loads((out / "metrics.json").read_text())
    known_acc = metrics["supervised.known_acc"]
    assert run.data.metrics["supervised.known_acc"] == pytest.approx(known_acc)
    assert "supervised/train_loss" in run.data.metrics  # Lightning's curve, by step
    params = run.data.params
    assert params["trainer.logger"] == "mlflow" and params["stages"] == '["supervised"]'
    assert params["stages.supervised.lr"] == "0.003" and params["data.image_size"] == "8"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "config.yaml", "report.html"} <= artifacts

    # --restart-from redoes the stage into the same MLflow run
    assert main([*RUN, "--out", str(out), "--restart-from", "supervised"]) == 0
    (again,) = client.search_runs([exp.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "supervised.known_acc")
    assert len(history) == 2


def test_bad_logger_and_store_are_clear_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(UserError, match=r"'trainer\.logger' = 'wandb'.*'tensorboard', 'mlflow'"):
        load_config(None, ["trainer.logger=wandb"])
    pytest.importorskip("mlflow")
    # MLflow 3 refuses the old file store unless MLFLOW_ALLOW_FILE_STORE is set: exit 2, named
    uri = "trainer.mlflow_uri=file:./store"
    assert main([*RUN, uri, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "trainer.mlflow_uri" in err and "MLFLOW_ALLOW_FILE_STORE" in err
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    assert main([*RUN, "--out", str(tmp_path / "b")]) == 2
    assert "pip install 'uniframework[mlflow]'" in capsys.readouterr().err


def test_tracking_uri_and_params(monkeypatch):
    assert tracking_uri(None) == f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    assert tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{Path.cwd() / 'sub/x.db'}"
    assert tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert tracking_uri("http://host:5000") == "http://host:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking_uri(None) == "http://env:5000"
    tree = {"seed": 0, "stages": [{"a": {"x": 1}}, {"b": {"t": [1, 2]}}, {"a": {"x": None}}]}
    assert config_params(tree) == {
        "seed": "0",
        "stages": '["a", "b", "a"]',
        "stages.0.x": "1",
        "stages.b.t": "[1, 2]",
        "stages.2.x": "null",
    }
