"""The names of a run's classifier outputs, in model-label order: the one function `predict`,
the report and the ONNX export read them from, so a class is called the same everywhere."""

from __future__ import annotations

from pathlib import Path

from .discover.labels import DISCOVERED, REJECTED_NAME, cluster_names, read_labels
from .errors import UserError
from .io import load_weights, read_json
from .rundir import RunContext, final_stage, open_run


def class_names(
    run: str | Path | RunContext, stage: str | None = None, meta: dict | None = None
) -> list[str]:
    """One name per output of `stage`'s classifier (default: the run's final one, incremental
    > discover > supervised); `meta` = its weights file's metadata when already read.

    The k known classes first (the dataset's names), then:
    - incremental: the new classes as that classifier learned them (for `source: discover`,
      the names given on the label page, else discover's `novel-<j> (~true class)`);
    - discover: one name per cluster: its class's name from `discover/labels.json` (merged
      clusters share it, a rejected one is `unknown`), else discover's `novel-<j> (~...)`;
    - supervised: `unknown` for ORE's extra output.
    """
    ctx = run if isinstance(run, RunContext) else open_run(run)[0]
    stage = stage or final_stage(ctx)
    if stage is None:
        raise UserError(
            f"'{ctx.run_dir}' has no classifier (checkpoints/<stage>.safetensors): finish a "
            "supervised, discover or incremental stage first"
        )
    if meta is None:
        _, meta = load_weights(ctx.weights_path(stage))
    c = int(meta["num_classes"])
    k = int(meta.get("num_known", c))
    known = list(meta["class_names"][:k])
    if stage == "incremental" and "model_class_names" in meta:
        names = list(meta["model_class_names"])
    elif stage == "discover":
        path = ctx.run_dir / "discover" / DISCOVERED
        discovered = read_json(path)
        new = [] if discovered is None else cluster_names(discovered, read_labels(path, known))
        names = known + new
    elif stage == "supervised":
        names = known + [REJECTED_NAME] * (c - k)
    else:
        names = known
    names += [f"novel-{j}" for j in range(len(names) - k, c - k)]  # a file that lacks some
    return names[:c]
