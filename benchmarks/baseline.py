"""A deliberately plain open-world pipeline: the yardstick the loop has to beat.

    .venv/bin/python benchmarks/baseline.py [--config C] [--threads N] [--pool novel|detected]
        [key=value ...]

It runs on the loop's own split (`OpenWorldData.build(cfg.data, cfg.seed)` of the config, the
same known / val / pool / test images; only the image size is forced to 32 px, which changes no
index of the split), with batched tensors in memory and no framework code but the split and
the metrics:
1. supervised: a 5-conv CNN (64 | 128-128 | 256-256, conv3x3 + BN + ReLU, max-pools between
   the stages, global pool, linear head) on the labelled known images; SGD nesterov 0.9, OneCycle
   max lr 0.05, label smoothing 0.1, weight decay 5e-4, flip (where the dataset allows it) +
   4-px reflect-pad crop, 15 epochs, batch 128. Figure: accuracy on the known test images.
2. openset: MSP and energy (-logsumexp) on the test set, known vs novel classes: AUROC.
3. discover: k-means (k = the true novel count) on the raw penultimate features of the pool
   images of novel classes (`--pool detected`: of the pool images whose energy is above the
   level that keeps 95% of the held-out known images). Hungarian accuracy on the pool's
   novel images, as `discover.novel_acc`.
4. incremental: head grown to known + novel outputs, the whole network fine-tuned on the
   k-means pseudo-labels only (5 epochs, same recipe); accuracy on the full test set, novel
   classes mapped to clusters by the Hungarian matching (unmatched = wrong), old / new.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn

from uniframework.config import load_config
from uniframework.data import OpenWorldData
from uniframework.discover.metrics import cluster_acc, hungarian_mapping
from uniframework.incremental.metrics import UNMATCHED, final_accuracies
from uniframework.openset.metrics import auroc


def conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class Net(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv(3, 64), nn.MaxPool2d(2),  # 32 -> 16 px
            *conv(64, 128), *conv(128, 128), nn.MaxPool2d(2),  # 16 -> 8 px
            *conv(128, 256), *conv(256, 256),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def augment(x: torch.Tensor, gen: torch.Generator, hflip: bool) -> torch.Tensor:
    """Random horizontal flip (where the dataset allows it) + 4-px reflect-pad random crop."""
    flip = (torch.rand(len(x), generator=gen) < 0.5) & hflip
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded, s = F.pad(x, (4, 4, 4, 4), mode="reflect"), x.shape[-1]
    dx, dy = torch.randint(0, 9, (2, len(x)), generator=gen).tolist()
    return torch.stack([padded[i, :, b : b + s, a : a + s] for i, (a, b) in enumerate(zip(dx, dy))])


def train(model: nn.Module, x, y, epochs: int, seed: int, hflip: bool = True) -> None:
    gen = torch.Generator().manual_seed(seed)
    steps = max(1, len(x) // 128)  # batch 128, last partial batch dropped
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=epochs * steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(steps):
            b = order[i * 128 : (i + 1) * 128]
            loss = F.cross_entropy(model(augment(x[b], gen, hflip)), y[b], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


@torch.no_grad()
def predict(model: Net, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features [N, 256], logits [N, C]), eval mode, batches of 500."""
    model.eval()
    feats = torch.cat([model.features(x[i : i + 500]) for i in range(0, len(x), 500)])
    return feats, model.head(feats)


def run_baseline(config: str, overrides=(), pool: str = "novel", threads: int | None = None):
    """-> ({`<stage>.<metric>`: figure}, {stage: seconds}) on the config's split."""
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config, [*overrides, "data.image_size=32"])
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    data = OpenWorldData.build(cfg.data, cfg.seed)
    split, k, n = data.split, data.split.num_known, len(data.split.novel)

    def images(base, idx) -> torch.Tensor:  # uint8 [N, 3, H, W] -> float [N, 3, 32, 32]
        x = torch.stack([base.load(int(i)) for i in idx]).float().div(255)
        return x if x.shape[-1] == 32 else F.interpolate(x, 32, mode="bilinear", antialias=True)

    def labels(base, idx) -> torch.Tensor:
        return torch.from_numpy(split.remap(base.targets[idx]))

    x_lab, y_lab = images(data.train, split.labelled), labels(data.train, split.labelled)
    mean, std = x_lab.mean((0, 2, 3), keepdim=True), x_lab.std((0, 2, 3), keepdim=True)
    norm = lambda x: (x - mean) / std  # noqa: E731
    pool_idx = split.unlabelled
    x_lab, x_val = norm(x_lab), norm(images(data.train, split.val))
    x_pool, y_pool = norm(images(data.train, pool_idx)), labels(data.train, pool_idx)
    x_test, y_test = norm(images(data.test, split.test)), labels(data.test, split.test)
    seconds, m, t = {"load": time.perf_counter() - start}, {}, time.perf_counter()

    model = Net(k)
    train(model, x_lab, y_lab, 15, cfg.seed, data.train.hflip)
    logits_test = predict(model, x_test)[1]
    known = y_test < k
    correct = logits_test[known].argmax(1) == y_test[known]
    m["supervised.known_acc"] = float(correct.float().mean())
    seconds["supervised"], t = time.perf_counter() - t, time.perf_counter()

    energy = lambda logits: -torch.logsumexp(logits, 1)  # noqa: E731  higher = more unknown
    m["openset.msp.auroc"] = auroc(-logits_test.softmax(1).amax(1), ~known)
    m["openset.energy.auroc"] = m["openset.auroc"] = auroc(energy(logits_test), ~known)
    seconds["openset"], t = time.perf_counter() - t, time.perf_counter()

    feats_pool, logits_pool = predict(model, x_pool)
    if pool == "novel":
        keep = y_pool >= k
    else:  # flagged unknown: energy above the 95th percentile of the held-out knowns'
        keep = energy(logits_pool) > energy(predict(model, x_val)[1]).quantile(0.95)
    km = KMeans(n, n_init=10, random_state=cfg.seed).fit(feats_pool[keep].numpy())
    truth, cluster = y_pool[keep].numpy(), km.labels_.astype("int64") + k
    novel = truth >= k
    m["discover.pool_size"] = int(keep.sum())
    m["discover.pool_novel_fraction"] = float(novel.mean())
    m["discover.novel_acc"] = cluster_acc(truth[novel], cluster[novel])
    seconds["discover"], t = time.perf_counter() - t, time.perf_counter()

    old_head, model.head = model.head, nn.Linear(256, k + n)
    with torch.no_grad():
        model.head.weight[:k], model.head.bias[:k] = old_head.weight, old_head.bias
    train(model, x_pool[keep], torch.from_numpy(cluster), 5, cfg.seed + 1, data.train.hflip)
    inverse = {c: j for j, c in hungarian_mapping(truth[novel], cluster[novel]).items()}
    target = torch.tensor([c if c < k else inverse.get(c, UNMATCHED) for c in y_test.tolist()])
    pred = predict(model, x_test)[1].argmax(1)
    m.update({f"incremental.{a}": v for a, v in final_accuracies(pred, target, k).items()})
    seconds["incremental"] = time.perf_counter() - t
    return m, seconds


ROWS = [  # (metric, stage, label)
    ("supervised.known_acc", "supervised", "known accuracy"),
    ("openset.msp.auroc", "openset", "unknown AUROC, MSP"),
    ("openset.energy.auroc", "openset", "unknown AUROC, energy"),
    ("discover.novel_acc", "discover", "novel clustering accuracy (Hungarian)"),
    ("incremental.all_acc", "incremental", "final accuracy, all classes"),
    ("incremental.old_acc", "incremental", "  old (known) classes"),
    ("incremental.new_acc", "incremental", "  new (discovered) classes"),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/openworld-cifar10-mini.yaml")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--pool", choices=["novel", "detected"], default="novel")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_args()
    m, seconds = run_baseline(args.config, args.overrides, args.pool, args.threads)
    print(f"baseline on {args.config} {' '.join(args.overrides)} (pool: {args.pool}, "
          f"{m['discover.pool_size']} images, {m['discover.pool_novel_fraction']:.2f} novel), "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print("| stage | figure | value | seconds |\n|---|---|---|---|")
    print(f"| load | split + images in memory, 32 px | – | {seconds['load']:.0f} |")
    for i, (key, stage, label) in enumerate(ROWS):
        first = i == 0 or ROWS[i - 1][1] != stage  # seconds once per stage
        print(f"| {stage} | {label} | {m[key]:.3f} | {f'{seconds[stage]:.0f}' if first else ''} |")
    print(f"total {sum(seconds.values()):.0f} s")


if __name__ == "__main__":
    main()
