"""End to end: `uniframework run` on digits writes the run directory; bad input exits 2."""

import json
import subprocess
import sys

import pytest
import yaml

from uniframework.cli import main

from .conftest import TINY

# the demo's whole loop, tiny: few discovery and incremental epochs
DEMO = [*TINY, "stages.discover.max_epochs=2", "stages.incremental.max_epochs=1"]


def test_run_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "configs/demo-novel.yaml", *DEMO, "name=e2e", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"supervised.known_acc", "supervised.val_acc", "supervised.epochs"} <= set(metrics)
    assert metrics["supervised.epochs"] == 3
    assert metrics["supervised.known_acc"] > 0.4  # 5 classes: chance is 0.2
    for scorer in ("msp", "maxlogit", "energy", "energy_weibull", "mahalanobis", "knn"):
        for m in ("auroc", "fpr95", "aupr_in", "aupr_out", "oscr"):
            assert 0.0 <= metrics[f"openset.{scorer}.{m}"] <= 1.0
    assert metrics["openset.auroc"] == metrics["openset.energy_weibull.auroc"]
    best = max(metrics[f"openset.{s}.auroc"] for s in ("msp", "energy", "mahalanobis", "knn"))
    assert best > 0.6  # better than chance, even for this tiny model
    # the rest of the loop: discovery on the flagged pool, then the classes join the classifier
    assert 0.0 <= metrics["discover.novel_acc"] <= 1.0 and metrics["discover.pool_size"] > 0
    for key in ("all_acc", "old_acc", "new_acc", "avg_acc", "forgetting", "icarl.avg_acc"):
        assert f"incremental.{key}" in metrics, key
    for f in ("openset/detector.json", "openset/energy_hist.png", "openset/roc.png"):
        assert (out / f).is_file(), f
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["name"] == "e2e" and resolved["stages"][0]["supervised"]["lr"] == 0.003
    for f in [
        "checkpoints/supervised.safetensors",
        "checkpoints/supervised/last.ckpt",
        "checkpoints/supervised/best.ckpt",
        "logs/supervised/csv/metrics.csv",
        "state.json",
    ]:
        assert (out / f).is_file(), f
    assert list((out / "logs/supervised/tensorboard").glob("events.out.tfevents.*"))

    # a rerun skips the finished stage; --restart-from redoes it
    capsys.readouterr()
    assert main(["run", "configs/demo-novel.yaml", *DEMO, "name=e2e", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text()) == metrics
    state = json.loads((out / "state.json").read_text())
    assert state["done"] == ["supervised", "openset", "discover", "incremental"]
    assert (
        main(
            [
                "run",
                "configs/demo-novel.yaml",
                *DEMO,
                "trainer.max_epochs=1",
                "--out",
                str(out),
                "--restart-from",
                "supervised",
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["supervised.epochs"] == 1


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    assert main(["run", "configs/demo-novel.yaml", "data.batchsize=3"]) == 2
    err = capsys.readouterr().err
    assert "data.batchsize" in err and "did you mean 'batch_size'" in err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert (
        main(
            [
                "run",
                "configs/demo-novel.yaml",
                *TINY,
                "data.dataset=imagefolder",
                f"data.root={tmp_path / 'nothing'}",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", "configs/demo-novel.yaml", "--restart-from", "pretrain"]) == 2


def test_list_and_help_from_a_real_process():
    out = subprocess.run(
        [sys.executable, "-m", "uniframework", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert "resnet_tiny" in out and "imagefolder" in out and "supervised" in out
    for cmd in ([], ["run"], ["demo"]):
        r = subprocess.run(
            [sys.executable, "-m", "uniframework", *cmd, "--help"], capture_output=True, text=True
        )
        assert r.returncode == 0 and "usage:" in r.stdout
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "uniframework",
            "run",
            "configs/demo-novel.yaml",
            "model.backbone=nope_net",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope_net" in r.stderr


@pytest.mark.slow
def test_resume_after_the_process_is_killed(tmp_path):
    """Kill a run after its first epoch checkpoint; the rerun resumes instead of restarting."""
    import time

    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "uniframework",
        "run",
        "configs/demo-novel.yaml",
        *DEMO,
        "trainer.max_epochs=8",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints/supervised/last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert last.exists() and not (out / "metrics.json").exists()
    r = subprocess.run(args, capture_output=True, text=True)  # the same command
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["supervised.epochs"] == 8


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes(tmp_path):
    out = tmp_path / "ddp"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "uniframework",
            "run",
            "configs/demo-novel.yaml",
            *DEMO,
            "trainer.devices=2",
            "trainer.strategy=ddp",
            "stages.supervised.contrastive=true",
            "stages.supervised.prototype_every=1",
            "--out",
            str(out),
            "-v",  # Lightning's own messages name the process group
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "world_size: 2" in r.stderr.lower() or "distributed_backend=gloo" in r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"supervised.known_acc", "supervised.val_acc", "supervised.epochs"} <= set(metrics)
    assert (out / "checkpoints/supervised.safetensors").is_file()
    assert (out / "checkpoints/supervised/last.ckpt").is_file()
    assert (out / "checkpoints/supervised_prototypes.safetensors").is_file()
    assert "openset.auroc" in metrics
    assert "discover.novel_acc" in metrics and "incremental.all_acc" in metrics


def test_the_demo_is_the_realistic_open_world_and_the_easy_setting_is_its_own_config():
    from uniframework.cli import demo_config
    from uniframework.config import load_config

    def discover(cfg):
        return next(s["discover"] for s in cfg.stages if "discover" in s)

    demo = load_config(demo_config())
    assert demo.name == "demo"  # runs/demo, as the README says
    assert demo.data.labelled_fraction < 1  # the known classes' other images are in the pool
    assert discover(demo)["num_novel"] == "auto" and discover(demo)["estimate_on"] == "heads"
    novel = load_config("configs/demo-novel.yaml")  # the transductive setting
    assert novel.data.labelled_fraction == 1.0 and discover(novel).get("num_novel") is None


def test_help_describes_every_command_with_an_example(capsys):
    from uniframework.cli import COMMANDS

    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    for name, (summary, _) in COMMANDS.items():
        assert name in top and summary.split(",")[0] in " ".join(top.split())
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert "example:" in out and f"uniframework {name}" in out.replace("demo.onnx", "")
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    flat = " ".join(capsys.readouterr().out.split())
    for stage in ("pretrain", "supervised", "openset", "discover", "incremental", "detect"):
        assert stage in flat.split("--restart-from STAGE")[-1]


def test_version_and_verbosity_anywhere(capsys):
    from uniframework import __version__
    from uniframework.cli import parser

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"uniframework {__version__}"
    p = parser()
    for argv in (["-q", "list"], ["list", "-q"], ["-q", "report", "r"], ["report", "r", "--quiet"]):
        args = p.parse_args(argv)
        assert args.quiet and not args.verbose, argv
    assert p.parse_args(["report", "r", "-v"]).verbose and not p.parse_args(["list"]).verbose
