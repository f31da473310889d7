import pytest
import yaml

from uniframework.config import load_config, parse_override
from uniframework.errors import UserError


def test_defaults_are_valid():
    cfg = load_config(None)
    assert cfg.data.dataset == "digits"
    assert [name for name, _ in cfg.stage_list()] == ["supervised"]


def test_yaml_and_overrides_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ndata:\n  batch_size: 16\nstages:\n  - supervised: {lr: 0.1}\n")
    cfg = load_config(path, ["data.batch_size=8", "stages.supervised.lr=2e-3", "seed=3"])
    assert cfg.data.batch_size == 8 and cfg.seed == 3
    ((_, opts),) = cfg.stage_list()
    assert opts.lr == pytest.approx(2e-3)
    cfg = load_config(path, ["stages.0.optimizer=sgd"])
    assert cfg.stage_list()[0][1].optimizer == "sgd"


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(
        UserError, match=r"'data\.batch_sze' is not known \(did you mean 'batch_size'"
    ):
        load_config(None, ["data.batch_sze=3"])
    with pytest.raises(UserError, match=r"'stages\.0\.supervised\.lrr' is not known.*'lr'"):
        load_config(None, ["stages.supervised.lrr=3"])


def test_wrong_type_and_range_name_the_key():
    with pytest.raises(UserError, match=r"'trainer\.max_epochs' = 'ten'"):
        load_config(None, ["trainer.max_epochs=ten"])
    with pytest.raises(UserError, match=r"'data\.labelled_fraction' = 1\.5.*less than or equal"):
        load_config(None, ["data.labelled_fraction=1.5"])
    with pytest.raises(UserError, match=r"'stages\.0\.supervised\.lr' = -1"):
        load_config(None, ["stages.supervised.lr=-1"])


def test_unknown_stage_and_bad_override_form():
    with pytest.raises(UserError, match=r"unknown stage 'supervisd' \(did you mean 'supervised'"):
        _bad_stage()
    with pytest.raises(UserError, match="has no '='"):
        parse_override("data.batch_size")
    with pytest.raises(UserError, match="no stage 'pretrain'"):
        load_config(None, ["stages.pretrain.lr=1"])


def _bad_stage():
    from uniframework.config import Config

    Config.model_validate({"stages": [{"supervisd": {}}]}).stage_list()


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["name=rt", "stages.supervised.lr=0.5"])
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    assert again.to_dict()["stages"][0]["supervised"]["weight_decay"] == 0.05  # defaults filled


def test_every_shipped_config_validates():
    from pathlib import Path

    for path in sorted(Path("configs").glob("*.yaml")):
        assert load_config(path).name, path


def test_detect_refuses_the_trainer_keys_it_cannot_honour():
    for override in ("trainer.precision=bf16-mixed", "trainer.devices=2", "trainer.logger=mlflow"):
        with pytest.raises(UserError, match="detect stage trains on one device") as err:
            load_config("configs/detect-digits.yaml", [override])
        assert override.split("=")[0] in str(err.value) and "config key ''" not in str(err.value)
    load_config("configs/detect-digits.yaml", ["trainer.max_epochs=2"])  # what it honours


@pytest.mark.parametrize(
    "override, new",
    [
        ("stages.incremental.epochs=3", "max_epochs"),
        ("stages.supervised.unknown_select=known_weibull", "auto_label"),
    ],
)
def test_a_renamed_key_is_refused_with_its_new_name(override, new):
    with pytest.raises(UserError, match=f"was renamed '{new}' \\(CHANGELOG.md\\)"):
        load_config("configs/demo.yaml", [override])


def test_a_run_directory_written_before_a_rename_still_reads(tmp_path):
    from uniframework.config import renamed_keys

    tree = {"stages": [{"supervised": {"unknown_select": "topk"}}, {"incremental": {"epochs": 2}}]}
    assert renamed_keys(tree)["stages"] == [
        {"supervised": {"auto_label": "topk"}},
        {"incremental": {"max_epochs": 2}},
    ]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree))
    cfg = load_config(tmp_path / "config.yaml", saved_run=True)
    assert dict(cfg.stage_list())["incremental"].max_epochs == 2
