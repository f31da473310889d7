"""Where the training time goes: images/s, FLOPs per image, FLOP/s and MFU for every training
run of the demo and of the cifar10-mini loop, against this machine's measured matmul peak.

    .venv/bin/python benchmarks/throughput.py [--only demo|demo-novel|cifar10-mini] [--threads N]
        [--peak-size 2048] [--peak-device cpu|cuda] [--peak-dtype fp32|bf16] [key=value ...]

Each loop runs its config (`demo`: configs/demo.yaml, what `uniframework demo` runs, a mixed pool
and the count estimated; `demo-novel`: configs/demo-novel.yaml, the digits loop on a pool of
novel images with the count given;
configs/openworld-cifar10-mini.yaml; the overrides apply to every loop) from an empty run
folder, benchmarks/out/throughput-<name>/, with a probe on every Lightning fit (supervised,
discover and its over-counting run, each incremental task and its balanced fine-tune,
pretrain):
- one training step (forward, backward, optimizer; the second step of the fit) runs under
  `torch.utils.flop_counter.FlopCounterMode`: training FLOPs per step and per image (images =
  every loader's batch, e.g. a labelled and a pool batch for OpenMix);
- every step is timed from `on_train_batch_start` to `on_train_batch_end`; what the fit spends
  outside its steps is data loading and augmentation between steps, Lightning's hooks and
  logging, validation, checkpoints (validation is also timed on its own);
- achieved FLOP/s = FLOPs per step x steps / seconds, over the fit's wall time and over the
  steps' time alone; MFU = achieved / peak.
The peak is the best of several fp32 `torch.mm` products of `--peak-size` square matrices on
the same threads, measured at the start of the run (2 n^3 FLOPs each); on a GPU
(`--peak-device cuda --peak-dtype bf16 trainer.accelerator=gpu trainer.precision=bf16-mixed`)
the bf16 product on the GPU. Each stage's wall time
(`state.json`) is split into its fits and the rest (feature extraction, k-means, herding,
evaluation, figures). Prints one table per loop and writes benchmarks/out/throughput.json. Run
it on a quiet machine: every figure is a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from uniframework import training
from uniframework.config import load_config
from uniframework.io import read_json
from uniframework.pipeline import run
from uniframework.registry import load_plugins

OUT = Path("benchmarks/out")
LOOPS = {
    "demo": "configs/demo.yaml",
    "demo-novel": "configs/demo-novel.yaml",
    "cifar10-mini": "configs/openworld-cifar10-mini.yaml",
}


def matmul_peak(n: int = 2048, repeats: int = 12, device: str = "cpu", dtype=torch.float32):
    """FLOP/s of the fastest of `repeats` n x n matrix products (after a warm-up)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def batch_images(batch) -> int:
    """Images in one training batch: a tensor's rows, the first item of a tuple, or the sum
    over a dict of loaders' batches (OpenMix: labelled + pool)."""
    if isinstance(batch, torch.Tensor):
        return len(batch)
    if isinstance(batch, dict):
        return sum(batch_images(b) for b in batch.values())
    return batch_images(batch[0])


class Probe(L.Callback):
    """Times one fit's steps, validation and wall; counts the FLOPs of its second step."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps = self.images = 0
        self.step_s = self.val_s = 0.0
        self.flops_per_step = self.images_per_step = 0
        self._counter = None

    def on_fit_start(self, trainer, module) -> None:
        self._fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.flops_per_step == 0 and batch_idx == 1:  # step 0 warms up; count step 1
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        seconds = time.perf_counter() - self._step_start
        n = batch_images(batch)
        if self._counter is not None:  # the counted step runs slower: not timed
            self._counter.__exit__(None, None, None)
            self.flops_per_step, self.images_per_step = self._counter.get_total_flops(), n
            self._counter = None
            return
        self.steps, self.images, self.step_s = (
            self.steps + 1,
            self.images + n,
            self.step_s + seconds,
        )

    def on_validation_epoch_start(self, trainer, module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, module) -> None:
        self.val_s += time.perf_counter() - self._val_start

    def on_fit_end(self, trainer, module) -> None:
        self.wall = time.perf_counter() - self._fit_start

    def row(self, peak: float) -> dict:
        flops = self.flops_per_step * self.steps  # the timed steps' FLOPs
        wall = self.wall * self.steps / max(1, self.steps + 1)  # less the counted step
        return {
            "fit": self.name,
            "steps": self.steps,
            "images_per_s": self.images / wall,
            "gflop_per_image": self.flops_per_step / max(1, self.images_per_step) / 1e9,
            "gflops_fit": flops / wall / 1e9,
            "gflops_steps": flops / max(self.step_s, 1e-9) / 1e9,
            "mfu_fit": flops / wall / peak,
            "mfu_steps": flops / max(self.step_s, 1e-9) / peak,
            "outside_steps": 1 - self.step_s / wall,
            "validation": self.val_s / wall,
            "wall_s": self.wall,
        }


def probe_every_fit(probes: list[Probe]) -> None:
    """Give every Trainer the stages make a Probe (they import make_trainer by name)."""
    original = training.make_trainer

    def make_trainer(cfg, run_dir, stage, *args, **kwargs):
        trainer = original(cfg, run_dir, stage, *args, **kwargs)
        probes.append(Probe(stage))
        trainer.callbacks.append(probes[-1])
        return trainer

    load_plugins()
    for module in list(sys.modules.values()):
        ours = module is not None and module.__name__.startswith("uniframework")
        if ours and getattr(module, "make_trainer", None) is original:
            module.make_trainer = make_trainer


def stage_of(fit: str, stages: list[str]) -> str:
    """The stage a fit belongs to (`discover_estimate` -> discover, `incremental/...`)."""
    return next((s for s in stages if fit == s or fit.startswith((f"{s}_", f"{s}/"))), fit)


def run_loop(name: str, overrides: list[str], peak: float) -> dict:
    cfg = load_config(LOOPS[name], ["trainer.enable_progress_bar=false", *overrides])
    run_dir = OUT / f"throughput-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    probes: list[Probe] = []
    probe_every_fit(probes)
    start = time.perf_counter()
    run(cfg, run_dir)
    wall = time.perf_counter() - start
    seconds = read_json(run_dir / "state.json")["seconds"]
    fits = [p.row(peak) | {"stage": stage_of(p.name, list(seconds))} for p in probes]
    stages = {
        s: {
            "wall_s": seconds[s],
            "in_fits": sum(f["wall_s"] for f in fits if f["stage"] == s) / seconds[s],
        }
        for s, _ in cfg.stage_list()
    }
    return {"wall_s": wall, "stages": stages, "fits": fits}


def print_loop(name: str, result: dict, peak: float) -> None:
    print(f"\n== {name}: {result['wall_s']:.0f} s wall; peak matmul {peak / 1e9:.0f} GFLOP/s")
    print(
        f"{'fit':<32}{'steps':>6}{'img/s':>8}{'GFLOP/img':>10}{'GFLOP/s':>9}{'MFU':>7}"
        f"{'MFU in steps':>13}{'outside steps':>14}{'validation':>11}{'wall s':>8}"
    )
    for f in result["fits"]:
        print(
            f"{f['fit']:<32}{f['steps']:>6}{f['images_per_s']:>8.0f}{f['gflop_per_image']:>10.3f}"
            f"{f['gflops_fit']:>9.1f}{f['mfu_fit']:>7.1%}{f['mfu_steps']:>13.1%}"
            f"{f['outside_steps']:>14.1%}{f['validation']:>11.1%}{f['wall_s']:>8.1f}"
        )
    print(
        f"{'stage':<16}{'wall s':>8}{'in fits':>9}  (the rest: features, k-means, herding, figures)"
    )
    for s, v in result["stages"].items():
        print(f"{s:<16}{v['wall_s']:>8.1f}{v['in_fits']:>9.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(LOOPS))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument("--peak-device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--peak-dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.peak_dtype]
    peak = matmul_peak(args.peak_size, device=args.peak_device, dtype=dtype)
    results = {}
    for name in [args.only] if args.only else list(LOOPS):
        results[name] = run_loop(name, args.overrides, peak)
        print_loop(name, results[name], peak)
    OUT.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__}
    summary = {"peak_flops": peak, "machine": machine, "loops": results}
    (OUT / "throughput.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
