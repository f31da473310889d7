"""Backbone weights from elsewhere: timm's hub (`model.pretrained`) or a file (`model.weights`).

A file is this project's safetensors (a stage's output: loaded strictly, every tensor, every
shape) or a timm / torchvision state dict (`.pth` / `.pt` / `.bin`, read without unpickling
code): timm's own conversion for the model family runs first (a ViT's position embeddings and
patch embedding resampled to this model's grid), then the tensors that fit are loaded and the
rest (an ImageNet classifier head) is dropped. A safetensors file without this project's header
(timm's `model.safetensors`) gets timm's conversion too.

Only the first build of a run reads these (`build_backbone(..., start=True)`); every later
build loads the run's own checkpoint, so no later stage, resume, `predict` or `export` reads the
network.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

import timm
import torch.nn as nn
from timm.models import get_pretrained_cfg
from timm.models._pretrained import PretrainedCfg

from ..errors import UserError
from ..io import load_fitting, load_matching, load_weights, read_meta, read_state_dict

log = logging.getLogger(__name__)

FILE_FIX = (
    "model.weights=/path/file.pth (a timm / torchvision state dict: .pth / .pt / .bin, or a "
    ".safetensors file)"
)


def hub_cfg(name: str | None, backbone: str) -> PretrainedCfg:
    """timm's pretrained config of timm model `name` (`arch` or `arch.tag`): the weights
    `model.pretrained` downloads, their mean / std. UserError when timm has no weights for it
    (`name` None: a backbone this project builds itself)."""
    try:
        pcfg = get_pretrained_cfg(name) if name is not None else None
    except RuntimeError as err:  # a tag timm does not know
        raise UserError(f"config key 'model.backbone' = '{backbone}': {err}") from None
    if pcfg is None or not (pcfg.hf_hub_id or pcfg.url or pcfg.file):
        own = name is None and timm.is_model(backbone)  # a registered build under timm's name
        raise UserError(
            f"config key 'model.pretrained': timm has no pretrained weights for model.backbone = "
            f"'{backbone}'{' (this project builds its own)' * own}. Pick a backbone it has "
            "weights for (resnet18, resnet50, vit_tiny, vit_small, vit_base, or any name in "
            "timm.list_models(pretrained=True)), or set "
            f"model.pretrained=false and give weights that fit this backbone: {FILE_FIX}."
        )
    return pcfg


def hub_error(err: Exception, pcfg: PretrainedCfg) -> UserError:
    """The UserError for a failed `timm.create_model(pretrained=True)`: the weights do not fit
    the model, or (anything else) they could not be downloaded."""
    name = f"{pcfg.architecture}.{pcfg.tag}" if pcfg.tag else pcfg.architecture
    text = " ".join(str(err).split())[:300]
    if "in loading state_dict" in text:  # torch's strict load_state_dict
        return UserError(
            f"timm's pretrained weights '{name}' do not fit the model ({text}): drop the "
            "model.timm_kwargs that change its architecture, or set model.pretrained=false"
        )
    return UserError(
        f"config key 'model.pretrained': timm's weights '{name}' could not be fetched from "
        f"{pcfg.hf_hub_id or pcfg.url} ({type(err).__name__}: {text}). This machine may be "
        "offline: download them where the network allows, e.g.\n"
        f"  python -c \"import timm, torch; torch.save(timm.create_model('{name}', "
        f"pretrained=True).state_dict(), '{pcfg.architecture}.pth')\"\n"
        f"then give the file: {FILE_FIX.replace('file.pth', pcfg.architecture + '.pth')}."
    )


def timm_filter(state: dict, model: nn.Module, source: str) -> dict:
    """timm's conversion of a checkpoint for `model`'s family, as timm runs it on its own
    downloads: the family module's `checkpoint_filter_fn` (timm's convention; ViT: position
    embeddings and patch embedding resampled to this model's grid). `state` as it is for a
    family without one (ResNet, EfficientNet)."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        return fn(state, model)
    except Exception as err:  # a family's converter may fail on any layout it did not expect
        raise UserError(
            f"weights file '{source}' does not convert to {type(model).__name__} with timm's "
            f"checkpoint_filter_fn ({type(err).__name__}: {err}); give weights of "
            "model.backbone's architecture"
        ) from None


def load_file(model: nn.Module, path: str) -> None:
    """Start `model` (a backbone) from the weights file `path` (see the module docstring)."""
    if path.lower().endswith(".safetensors"):
        state, meta = load_weights(path)
        if any(k.startswith("backbone.") for k in state):  # a classifier's file: its backbone
            state = {k[9:]: v for k, v in state.items() if k.startswith("backbone.")}
        if not meta:  # not written by this project (timm's hub, another tool)
            state = timm_filter(state, model, path)
        load_matching(model, state, path)
        log.info("backbone starts from %s", path)
        return
    state = timm_filter(read_state_dict(path), model, path)
    left = load_fitting(model, state, path)
    total = len(model.state_dict())
    log.info(
        "backbone starts from %s: %d of %d tensors loaded%s",
        path,
        total - len(left),
        total,
        f" (at their initial values: {', '.join(left[:5])}{' ...' * (len(left) > 5)})"
        if left
        else "",
    )


def describe_file(path: str) -> str:
    """`path (sha256 <first 12>)`, and what a run's weights file itself started from."""
    if not Path(path).is_file():  # moved after the fit began (a resumed fit does not read it)
        return f"{path} (no longer there)"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    text = f"{path} (sha256 {digest.hexdigest()[:12]})"
    if Path(path).suffix.lower() == ".safetensors":
        started = read_meta(path).get("start_weights")
        text += f", which started from {started}" if started else ""
    return text
