"""`uniframework run | demo | predict | label | export | report | list`: exit 0, or 2 on bad
input."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.resources import files
from pathlib import Path

from . import __version__
from .errors import UserError
from .registry import LOOP_ORDER

OVERRIDES = "Overrides: key.sub=value, e.g. data.batch_size=32 stages.supervised.lr=0.01"

# one line each (`uniframework -h`), then what `uniframework COMMAND -h` adds: an example
COMMANDS = {
    "run": (
        "run the stages of a config, resuming where it stopped",
        "example:\n  uniframework run configs/my-photos.yaml data.root=PHOTOS --out runs/photos\n"
        "  uniframework run configs/demo.yaml --out runs/demo --restart-from incremental",
    ),
    "demo": (
        "the open-world loop on the embedded digits (configs/demo.yaml), ~2 min on a CPU",
        "example:\n  uniframework demo                      # writes runs/demo\n"
        "  uniframework demo seed=1 --out runs/demo-seed1",
    ),
    "list": (
        "the registered backbones, datasets and stages",
        "example:\n  uniframework list",
    ),
    "predict": (
        "a learned class or unknown for each image, with scores (CSV or JSON)",
        "example:\n  uniframework predict runs/demo my_images/ extra.png --out rows.csv\n"
        "  uniframework predict demo.onnx my_images/ --format json",
    ),
    "label": (
        "a local page to name, merge, split or reject the discovered groups",
        "example:\n  uniframework label runs/demo --open\n"
        "  uniframework run configs/demo.yaml --out runs/demo --restart-from incremental",
    ),
    "export": (
        "the run's classifier + unknown detector as one ONNX file",
        "example:\n  uniframework export runs/demo --out demo.onnx",
    ),
    "report": (
        "(re)write a run's report.html",
        "example:\n  uniframework report runs/demo",
    ),
}


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<name>)")
    p.add_argument(
        "--restart-from",
        metavar="STAGE",
        help=f"redo STAGE and every stage after it; STAGE is one of the config's stages "
        f"({', '.join(LOOP_ORDER)})",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run directory's results first and start afresh",
    )


def _add_verbosity(p: argparse.ArgumentParser, default) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="print only warnings and errors"
    )
    g.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="also Lightning's messages (model summaries)",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uniframework",
        description="Open-world visual recognition: train on the classes you know, flag what is "
        "unknown, discover new classes, learn them.",
        epilog="`uniframework COMMAND -h` shows a command's options and an example. " + OVERRIDES,
    )
    p.add_argument("--version", action="version", version=f"uniframework {__version__}")
    _add_verbosity(p, False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str) -> argparse.ArgumentParser:
        summary, example = COMMANDS[name]
        c = sub.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=example + (f"\n\n{OVERRIDES}" if name in ("run", "demo") else ""),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_verbosity(c, argparse.SUPPRESS)  # -q / -v before or after the command
        return c

    r = command("run")
    r.add_argument("config", type=Path, help="YAML config file")
    _add_run_args(r)
    _add_run_args(command("demo"))
    command("list")
    pr = command("predict")
    pr.add_argument(
        "run_dir", type=Path, help="run directory (runs/<name> or run --out), or an exported .onnx"
    )
    pr.add_argument("images", nargs="+", type=Path, help="image files or folders of them")
    pr.add_argument("--out", type=Path, help="output file (default: stdout)")
    pr.add_argument(
        "--format", choices=["csv", "json"], help="default: json for a .json --out, else csv"
    )
    lb = command("label")
    lb.add_argument("run_dir", type=Path, help="run directory with a finished discover stage")
    lb.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    lb.add_argument("--open", action="store_true", help="open the page in the default browser")
    ex = command("export")
    ex.add_argument("run_dir", type=Path, help="run directory (runs/<name> or run --out)")
    ex.add_argument("--out", type=Path, help="model file (default: RUN_DIR/model.onnx)")
    rp = command("report")
    rp.add_argument("run_dir", type=Path, help="run directory (runs/<name> or run --out)")
    return p


def demo_config() -> Path:
    return Path(str(files("uniframework") / "configs" / "demo.yaml"))


def cmd_run(config: Path | None, args: argparse.Namespace) -> int:
    from .config import load_config
    from .pipeline import default_run_dir, run

    cfg = load_config(config, args.overrides)
    out = args.out or default_run_dir(cfg)
    metrics = run(cfg, out, restart_from=args.restart_from, overwrite=args.overwrite)
    if metrics:
        print(json.dumps(metrics, indent=2, sort_keys=True))
        print(f"run directory: {out}")
    return 0


def cmd_list() -> int:
    from .registry import BACKBONES, DATASETS, STAGES, load_plugins

    load_plugins()
    for title, reg in (("backbones", BACKBONES), ("datasets", DATASETS), ("stages", STAGES)):
        print(f"{title}:")
        for name, obj in reg.items():
            doc = (obj.__doc__ or "").strip().splitlines()
            print(f"  {name:<14} {doc[0] if doc else ''}")
    print("  (model.backbone also takes any timm model name, e.g. convnext_atto)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra:  # overrides may follow options: `run cfg.yaml --out d key=value`
        if args.command not in ("run", "demo") or any("=" not in e or e[0] == "-" for e in extra):
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    from . import console  # imports Lightning, whose import adds the handler console removes

    console.setup(-1 if args.quiet else 1 if args.verbose else 0)
    try:
        if args.command == "list":
            return cmd_list()
        if args.command == "predict":
            from .predict import run_predict

            return run_predict(args.run_dir, args.images, args.out, args.format)
        if args.command == "label":
            from .label import serve

            return serve(args.run_dir, args.port, args.open)
        if args.command == "export":
            from .export import export_run

            print(f"model: {export_run(args.run_dir, args.out)}")
            return 0
        if args.command == "report":
            from .report import write_report

            print(f"report: {write_report(args.run_dir)}")
            return 0
        return cmd_run(demo_config() if args.command == "demo" else args.config, args)
    except UserError as err:
        print(f"uniframework: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
