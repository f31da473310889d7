"""Files that must never be half-written or unpickle code: weights, checkpoints, JSON, YAML.

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over
the target (`os.replace` is atomic on POSIX), so a run killed mid-write leaves the old file.
Weights are safetensors; Lightning checkpoints are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors import SafetensorError
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
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(
            f"weights file '{path}' is not a readable safetensors file ({err}); "
            "rerun the stage that wrote it"
        ) from None
    return state, json.loads(header.get("uniframework", "{}"))


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
