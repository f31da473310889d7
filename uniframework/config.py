"""One validated, typed config from a YAML file plus `key.sub=value` overrides (dinov2 style).

Top-level sections: `name`, `seed`, `data`, `model`, `trainer`, `stages` (an ordered list of
`{stage name: options}`). Every section is a pydantic model with `extra="forbid"`, so an unknown
key, a wrong type or an out-of-range value stops the run with a message naming the key; stage
options are validated by the options model the stage registered (`uniframework.registry.STAGES`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import UserError, did_you_mean


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """The images and the open-world split (what is known, labelled, unlabelled, tested)."""

    dataset: str = "digits"  # digits | cifar10 | cifar100 | imagefolder (`uniframework list`)
    root: str | None = None  # dataset folder; None = the dataset's default (digits needs none)
    download: bool = False  # cifar10/cifar100: fetch when missing (needs network)
    image_size: int = Field(32, ge=8, le=1024)  # every image is resized / cropped to this side
    # Open-world split: classes are ordered (sorted or seeded shuffle); the first `num_known`
    # are known, the rest novel. None = every class is known (plain supervised learning).
    num_known: int | None = Field(None, ge=1)
    class_order: Literal["sorted", "random"] = "sorted"
    labelled_fraction: float = Field(1.0, gt=0.0, le=1.0)  # of the known classes' train images
    # share of novel-class images in the unlabelled pool (subsampling); None = as it comes
    pool_novel_share: float | None = Field(None, gt=0.0, le=1.0)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # of the labelled images, held out
    num_tasks: int = Field(1, ge=1)  # incremental tasks: task 0 = known, novel spread over rest
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # imagefolder without train/ and test/
    max_per_class: int | None = Field(None, ge=1)  # subsample the train set (quick runs)
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)
    augment: bool = True  # random crop (pad 1/8) + flip where the dataset allows it
    # the batched data path (data/augment.py): every view's images resized once and kept as
    # uint8, each batch normalised and augmented as one tensor instead of image by image
    batched: bool = False
    translate: int | None = Field(None, ge=0)  # batched: max shift, px; None = image_size // 8
    cutout: int = Field(0, ge=0)  # batched: side of the zeroed square, px (0 = none)
    in_memory: bool = True  # imagefolder: keep decoded images in memory after the scan
    on_corrupt: Literal["skip", "error"] = "skip"  # an unreadable file: skipped (named), or stop

    @model_validator(mode="after")
    def _batched_options(self):
        if not self.batched and (self.cutout or self.translate is not None):
            raise ValueError(
                "cutout and translate belong to the batched data path: set data.batched: true"
            )
        return self


class ModelConfig(Section):
    """The backbone (timm) under every stage's classifier."""

    # resnet_tiny | resnet18 | resnet50 | vit_tiny | vit_small | vit_base | efficientnet_b0..b7 |
    # efficientnetv2_s|m|l | efficientnet_phi | airbench | resnet9 | resnet9_half (fast 32 px
    # CNNs): a registered name (`uniframework list`) or any timm model name
    backbone: str = "resnet18"
    # ResNet: 3x3 stem, no max-pool, for 32 px images; off when the backbone starts from
    # ImageNet weights (`starts_pretrained`), whose 7x7 stem it would throw away
    small_input: bool = True
    patch_size: int | None = Field(None, ge=1)  # ViT: default = image_size // 8
    # EfficientNet: left unset = the paper's rate (0.2 + 0.05 phi, max 0.5)
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)  # EfficientNet: left unset = 0.2
    # start from timm's ImageNet weights for the backbone (downloaded by the first stage that
    # builds it; offline, give them as `weights`); images are normalised with their mean / std
    pretrained: bool = False
    # a file of backbone weights to start from: this project's .safetensors (a stage's output),
    # or a timm / torchvision state dict (.pth / .pt / .bin: ImageNet weights, as `pretrained`)
    weights: str | None = None
    timm_kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to timm.create_model

    @field_validator("weights")
    @classmethod
    def _weights_format(cls, value: str | None) -> str | None:
        # this project's safetensors, or a torch state dict from timm / torchvision
        suffixes = (".safetensors", ".pth", ".pt", ".bin")
        if value is not None and not value.lower().endswith(suffixes):
            raise ValueError(
                "give a .safetensors file, or a torch state dict from timm / torchvision "
                "(.pth / .pt / .bin)"
            )
        return value

    @property
    def starts_pretrained(self) -> bool:
        """Whether the backbone starts from weights trained elsewhere (ImageNet): timm's
        (`pretrained`) or a torch state dict file. Such a start keeps timm's stem (no
        `small_input`) and normalises images with the weights' mean / std."""
        foreign = self.weights is not None and not self.weights.lower().endswith(".safetensors")
        return self.pretrained or foreign


class TrainerConfig(Section):
    """Passed through to `lightning.Trainer` (same names), but `logger` picks the loggers by name
    and `mlflow_uri` is where the `mlflow` logger writes (`uniframework.tracking`)."""

    accelerator: str = "auto"  # cpu | gpu | auto
    devices: int | str | list[int] = 1  # e.g. 2 with strategy ddp: 2 processes
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"  # ddp | fsdp | ...
    precision: Literal[
        "32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true"
    ] = "32-true"
    max_epochs: int = Field(10, ge=1)
    max_steps: int = Field(-1, ge=-1)
    max_time: str | None = Field(None, pattern=r"^\d{2}:\d{2}:\d{2}:\d{2}$")  # DD:HH:MM:SS
    limit_train_batches: int | float = Field(1.0, gt=0)
    limit_val_batches: int | float = Field(1.0, ge=0)
    check_val_every_n_epoch: int = Field(1, ge=1)
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = Field(None, gt=0)
    log_every_n_steps: int = Field(10, ge=1)
    deterministic: bool | Literal["warn"] = "warn"
    enable_progress_bar: bool = True
    # NHWC memory format for every fit's weights, so every convolution runs channels-last
    # (faster on CPUs: BENCHMARKS.md "Throughput"); saved weights stay plain NCHW
    channels_last: bool = False
    # torch.compile (inductor) on each fit's backbone / encoder (`training.compile_targets`);
    # off by default: BENCHMARKS.md "Throughput" has what it pays on this CPU
    compile: bool = False
    # attention in every fit's timm ViT / Swin layers: `fused` = F.scaled_dot_product_attention,
    # `explicit` = softmax(q k^T / sqrt(d)) v as matrix products, `auto` = fused on a GPU and
    # explicit on a CPU, where the fused kernel's backward is the slower one (BENCHMARKS.md
    # "bf16 and attention on a CPU"); evaluation outside the fits keeps timm's default (fused)
    attention: Literal["auto", "fused", "explicit"] = "auto"
    # CSV is always written (logs/<stage>/csv); tensorboard adds logs/<stage>/tensorboard,
    # mlflow adds one MLflow run per run directory (needs the `mlflow` extra), csv adds nothing
    logger: Literal["tensorboard", "mlflow", "csv"] = "tensorboard"
    # MLflow tracking URI; None = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (MLflow 3's own
    # default). A relative sqlite path is resolved against the working directory.
    mlflow_uri: str | None = Field(None, min_length=1)


class Config(Section):
    name: str = Field("run", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    stages: list[dict[str, Any]] = Field(default_factory=lambda: [{"supervised": {}}])

    @model_validator(mode="after")
    def _detect_on_one_device(self):
        """The detect stage's loops are plain PyTorch on one device (`trainer.accelerator`):
        the trainer keys they cannot honour are refused, not ignored."""
        if not any(isinstance(s, dict) and "detect" in s for s in self.stages):
            return self
        t, defaults = self.trainer, TrainerConfig()
        ignored = [
            f"trainer.{key}={getattr(t, key)!r}"
            for key in ("precision", "devices", "num_nodes", "strategy", "accumulate_grad_batches")
            if getattr(t, key) != getattr(defaults, key)
        ]
        if t.logger == "mlflow":
            ignored.append("trainer.logger='mlflow'")
        if ignored:
            raise ValueError(
                f"the detect stage trains on one device in full precision and logs to "
                f"detect/*.json only, so {', '.join(ignored)} would be ignored: remove "
                f"{'it' if len(ignored) == 1 else 'them'} (or run detect in a config of its own)"
            )
        return self

    def stage_list(self) -> list[tuple[str, BaseModel]]:
        """The stages in order, each with its validated options model."""
        return [_validate_stage(i, entry) for i, entry in enumerate(self.stages)]

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (every default filled in), as written to `config.yaml`."""
        out = self.model_dump(mode="json")
        out["stages"] = [{name: opts.model_dump(mode="json")} for name, opts in self.stage_list()]
        return out


def _stage_registry():  # the stage modules register themselves on import
    from .registry import STAGES, load_plugins

    load_plugins()
    return STAGES


# Stage options that were renamed: (stage, old key) -> new key (CHANGELOG.md). A config that
# uses an old key is refused with the new name; a run directory written before the rename is
# read with its keys renamed (`renamed_keys`).
RENAMED = {
    ("supervised", "unknown_select"): "auto_label",  # as the openset stage's, same idea
    ("incremental", "epochs"): "max_epochs",  # as every other stage's
    ("detect", "epochs"): "max_epochs",
}


def renamed_keys(tree: dict[str, Any]) -> dict[str, Any]:
    """`tree` (a config mapping) with every old stage key of `RENAMED` under its new name."""
    stages = []
    for entry in tree.get("stages") or []:
        if isinstance(entry, dict) and len(entry) == 1:
            ((name, options),) = entry.items()
            if isinstance(options, dict):
                options = {RENAMED.get((name, k), k): v for k, v in options.items()}
            entry = {name: options}
        stages.append(entry)
    return {**tree, "stages": stages} if "stages" in tree else tree


def _validate_stage(index: int, entry: Any) -> tuple[str, BaseModel]:
    if not isinstance(entry, dict) or len(entry) != 1:
        raise UserError(
            f"config key 'stages.{index}' must be a one-key mapping `STAGE: {{options}}`, "
            f"got {entry!r}. Example:\nstages:\n  - supervised: {{lr: 0.001}}"
        )
    ((name, options),) = entry.items()
    for key in options or {}:
        if (name, key) in RENAMED:
            new = RENAMED[(name, key)]
            raise UserError(
                f"config key 'stages.{index}.{name}.{key}' was renamed '{new}' (CHANGELOG.md): "
                f"write {new}: {options[key]!r} instead"
            )
    stage = _stage_registry().get(name)
    try:
        return name, stage.Options.model_validate(options or {})
    except ValidationError as err:
        raise UserError(_explain(err, stage.Options, prefix=f"stages.{index}.{name}")) from None


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model at `loc`, for 'did you mean' suggestions."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        sub = getattr(field, "annotation", None) if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            break
        model = sub
    return list(model.model_fields)


def _explain(err: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """Turn pydantic's errors into one paragraph naming each bad key and how to fix it."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not str(p).startswith(("function-", "union")))
        key = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(loc))
        if e["type"] == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), _fields_at(model, loc[:-1]))
            lines.append(f"config key '{key}' is not known{hint}")
        elif not key:  # a rule across sections (a model validator of the whole config)
            lines.append(str(e["msg"]).removeprefix("Value error, "))
        else:
            lines.append(f"config key '{key}' = {e.get('input')!r}: {e['msg']}")
    return (
        "invalid config:\n  - "
        + "\n  - ".join(dict.fromkeys(lines))
        + "\nFix the YAML file or the key=value override (every key, its default: docs/config.md)."
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a', 'b', 'c'], value); the value is read as YAML (1e-3, true, [1, 2])."""
    if "=" not in text:
        raise UserError(f"override '{text}' has no '=': write overrides as key.sub=value")
    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"override '{text}' has an empty key part: write key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise UserError(f"override '{text}': the value is not valid YAML ({err})") from None
    return parts, value


def _apply(tree: dict[str, Any], parts: list[str], value: Any, text: str) -> None:
    if parts[0] == "stages" and len(parts) >= 2:
        stages = tree.setdefault("stages", [{"supervised": {}}])
        if parts[1].isdigit():
            i = int(parts[1])
            if i >= len(stages):
                raise UserError(f"override '{text}': there is no stage {i} ({len(stages)} stages)")
            (name,) = stages[i].keys()
        else:
            name = parts[1]
            hits = [i for i, s in enumerate(stages) if isinstance(s, dict) and name in s]
            if not hits:
                have = [next(iter(s)) for s in stages if isinstance(s, dict) and s]
                raise UserError(
                    f"override '{text}': the config has no stage '{name}'{did_you_mean(name, have)}"
                    f". Stages in this config: {', '.join(have) or 'none'}."
                )
            i = hits[0]
        if len(parts) == 2:
            stages[i] = {name: value or {}}
            return
        node = stages[i].setdefault(name, {}) or {}
        stages[i][name] = node
        parts = parts[2:]
    else:
        node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise UserError(f"override '{text}': '{p}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def load_config(
    path: str | Path | None, overrides: list[str] = (), saved_run: bool = False
) -> Config:
    """Read YAML (or start from defaults), apply overrides, validate everything. `saved_run`:
    the file is a run directory's own `config.yaml`, whose renamed keys are read as renamed."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file '{path}' does not exist: give the path to a YAML file")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"config file '{path}' is not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise UserError(f"config file '{path}' must hold a mapping of sections at the top")
        if saved_run:
            tree = renamed_keys(tree)
    for text in overrides:
        parts, value = parse_override(text)
        _apply(tree, parts, value, text)
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as err:
        raise UserError(_explain(err, Config)) from None
    cfg.stage_list()  # validate stage options now, not when the stage starts
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    from .io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
