"""Files that must never be half-written or unpickle code: weights, checkpoints, JSON, YAML.

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over
the target (`os.replace` is atomic on POSIX), so a run killed mid-write leaves the old file.
Weights are safetensors; Lightning checkpoints and timm / torchvision state dicts are read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import UserError

_UMASK = os.umask(0)  # read once (the only way is to set it), then put back
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then rename the temporary file over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(
            f"'{path}' is not valid JSON ({err}); delete it or rerun with --restart-from"
        ) from None


def save_weights(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Safetensors weights; `meta` (JSON-able) is stored in the file header."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    header = {"uniframework": json.dumps(meta, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read safetensors weights and their metadata; a missing or corrupt file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file '{path}' does not exist: check the path")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(
            f"weights file '{path}' is not a readable safetensors file ({err}); "
            "rerun the stage that wrote it"
        ) from None
    return state, read_meta(path)


def load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `module`, refusing (UserError) missing keys or shape mismatches."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or bad:
        detail = "; ".join(
            [f"missing {missing[:5]}"] * bool(missing)
            + [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in bad[:5]]
        )
        raise UserError(
            f"checkpoint '{source}' does not fit this model ({detail}). It was written for "
            "another backbone or class count: point the config at the right file or fix "
            "model.backbone / data settings."
        )
    module.load_state_dict({k: state[k] for k in own}, strict=True)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a safetensors weights file, without reading its tensors ({} if none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(
            f"weights file '{path}' is not a readable safetensors file ({err})"
        ) from None
    return json.loads(header.get("uniframework", "{}"))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A timm / torchvision state dict (`.pth`, `.pt`, `.bin`) read with
    `torch.load(weights_only=True)`, which refuses to unpickle code. Training wrappers are
    unwrapped (`{'state_dict': ...}`, `{'model': ...}`) and DDP's `module.` prefixes dropped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file '{path}' does not exist: check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[-1][:200]
        raise UserError(
            f"weights file '{path}' holds pickled Python objects besides tensors ({first}); "
            "it is not read, since unpickling runs code from the file. Where you trust it, save "
            "its tensors alone: torch.save(model.state_dict(), 'weights.pth')"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise UserError(
            f"weights file '{path}' is not a readable torch state dict ({type(err).__name__}: "
            f"{err}); give a file written by torch.save(model.state_dict(), ...)"
        ) from None
    for key in ("state_dict", "model"):  # training checkpoints (timm, Lightning, DeiT, ...)
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    state = {k: v for k, v in obj.items() if torch.is_tensor(v)} if isinstance(obj, dict) else {}
    if not state:
        raise UserError(
            f"weights file '{path}' holds no tensors by name (a state dict was expected); "
            "give a file written by torch.save(model.state_dict(), ...)"
        )
    while all(k.startswith("module.") for k in state):  # DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_fitting(
    module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, min_share: float = 0.5
) -> list[str]:
    """Load the tensors of `state` whose name and shape fit `module`; the rest (a classifier
    head, a replaced stem) is dropped. Refuses (UserError) when fewer than `min_share` of
    `module`'s tensors fit; returns the names of those left at their initial values."""
    own = module.state_dict()
    fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(fit) < min_share * len(own):
        bad = [k for k in own if k in state and k not in fit][:3]
        absent = [k for k in own if k not in state][:3]
        detail = "; ".join(
            [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in bad]
            + [f"not in the file: {absent}, its names start {list(state)[:3]}"] * bool(absent)
        )
        raise UserError(
            f"weights file '{source}' fits only {len(fit)} of the {len(own)} tensors of this "
            f"backbone ({detail}). It holds weights of another architecture: set "
            "model.backbone to the model it was trained for, or give another file."
        )
    module.load_state_dict(fit, strict=False)
    return [k for k in own if k not in fit]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written atomically and read without executing pickled code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as err:  # unpickling refused or file damaged: both need the user
            raise UserError(
                f"checkpoint '{path}' cannot be read safely ({type(err).__name__}: {err}). "
                "Delete it to start the stage afresh, or rerun with --restart-from STAGE."
            ) from None
