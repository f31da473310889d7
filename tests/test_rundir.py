"""A run directory belongs to one config: a changed config that touches a finished stage is
refused (exit 2, nothing written); --restart-from and --overwrite are the ways out."""

import json

import yaml

from uniframework.cli import main
from uniframework.rundir import config_changes, config_hash

from .conftest import TINY

# supervised + openset only: seconds on 8 px digits
TWO_STAGES = [
    *TINY,
    "trainer.max_epochs=1",
    "stages=[{supervised: {}}, {openset: {figures: false}}]",
]


def _tree(**over):
    tree = {
        "name": "a",
        "seed": 0,
        "data": {"image_size": 8, "num_workers": 0},
        "model": {"backbone": "resnet_tiny"},
        "trainer": {"devices": 1, "max_epochs": 3},
        "stages": [{"supervised": {"lr": 0.1}}, {"openset": {"temperature": 1.5, "figures": True}}],
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            tree[section][field] = value
        else:
            tree[section] = value
    return tree


def test_changes_name_keys_and_the_first_stage_they_touch():
    old = _tree()
    # harmless keys: where and how the run is shown, not what it computes
    assert config_changes(old, _tree(name="b", data__num_workers=4, trainer__devices=2)) == []
    # a global key touches every stage
    assert config_changes(old, _tree(model__backbone="vit_tiny")) == [
        ("model.backbone", "resnet_tiny", "vit_tiny", 0)
    ]
    # a stage option touches that stage (and the later ones)
    stages = [{"supervised": {"lr": 0.1}}, {"openset": {"temperature": 2.0, "figures": False}}]
    assert config_changes(old, _tree(stages=stages)) == [
        ("stages.openset.temperature", 1.5, 2.0, 1)
    ]
    # a stage added at the end touches only itself
    more = [*old["stages"], {"discover": {}}]
    assert config_changes(old, _tree(stages=more)) == [
        ("stages", ["supervised", "openset"], ["supervised", "openset", "discover"], 2)
    ]
    assert config_hash(old) == config_hash(_tree()) != config_hash(_tree(seed=1))


def _files(out):
    return {f: (out / f).read_bytes() for f in ("config.yaml", "metrics.json", "report.html")}


def test_a_changed_config_is_refused_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["run", "configs/demo-novel.yaml", *TWO_STAGES, "--out", str(out)]
    assert main(base) == 0
    before = _files(out)
    capsys.readouterr()

    assert main([*base, "model.backbone=nope_net"]) == 2
    err = capsys.readouterr().err
    assert 'model.backbone: "resnet_tiny" -> "nope_net"' in err
    assert "--out NEW_DIR" in err and "--overwrite" in err
    assert "--restart-from" not in err  # a model change touches the first stage: no restart
    assert _files(out) == before

    # harmless keys may differ: the finished stages are skipped, the results kept
    assert main([*base, "trainer.enable_progress_bar=true", "data.num_workers=0"]) == 0
    assert json.loads((out / "metrics.json").read_bytes()) == json.loads(before["metrics.json"])

    # --overwrite starts afresh under the new config
    assert main([*base, "seed=1", "--overwrite"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 1
    assert json.loads((out / "state.json").read_text())["done"] == ["supervised", "openset"]


def test_restart_from_a_changed_later_stage_records_which_config_made_which(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["run", "configs/demo-novel.yaml", *TWO_STAGES, "--out", str(out)]
    assert main(base) == 0
    old = yaml.safe_load((out / "config.yaml").read_text())
    capsys.readouterr()

    changed = [*base, "stages.openset.temperature=1.0"]
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "stages.openset.temperature: 1.5 -> 1.0" in err and "--restart-from openset" in err

    # restarting from the stage the change touches is allowed
    assert main([*changed, "--restart-from", "openset"]) == 0
    new = yaml.safe_load((out / "config.yaml").read_text())
    assert new["stages"][1]["openset"]["temperature"] == 1.0
    state = json.loads((out / "state.json").read_text())
    assert state["config_of"] == {"supervised": config_hash(old), "openset": config_hash(new)}
    history = out / "config-history" / f"{config_hash(old)}.yaml"
    assert yaml.safe_load(history.read_text()) == old

    # but not from a later stage than the change touches
    assert main([*base, "stages.supervised.lr=0.01", "--restart-from", "openset"]) == 2
    assert "stages.supervised.lr" in capsys.readouterr().err


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert (
        main(["run", "configs/demo-novel.yaml", *TWO_STAGES, "--out", str(tmp_path), "--overwrite"])
        == 2
    )
    assert "not a run directory" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_a_run_written_before_an_option_existed_is_reused(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["run", "configs/demo-novel.yaml", *TWO_STAGES, "--out", str(out)]
    assert main(base) == 0
    before = _files(out)
    # the saved config of an older version: an option (at its default now) did not exist yet
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["stages"][0]["supervised"]["simgcd_weight"]
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    capsys.readouterr()
    assert main(base) == 0  # absent there, at its default now: no change, the stages skipped
    assert json.loads((out / "metrics.json").read_bytes()) == json.loads(before["metrics.json"])

    # a saved option that today's code no longer knows is still a difference
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["stages"][0]["supervised"]["gone_option"] = 1
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert main(base) == 2
    assert "stages.supervised.gone_option: 1 -> (absent)" in capsys.readouterr().err
