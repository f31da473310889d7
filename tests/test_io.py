import collections
from pathlib import Path

import pytest
import torch

from uniframework.errors import UserError
from uniframework.io import AtomicCheckpointIO, atomic_write, load_weights, save_weights


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def half_then_crash(tmp):
        Path(tmp).write_text("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, half_then_crash)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_safetensors_round_trip_with_metadata(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    save_weights(tmp_path / "m.safetensors", state, {"backbone": "x", "classes": [1, 2]})
    back, meta = load_weights(tmp_path / "m.safetensors")
    assert torch.equal(back["w"], state["w"]) and meta == {"backbone": "x", "classes": [1, 2]}
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_weights(tmp_path / "bad.safetensors")


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoints_never_unpickle_code(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint(
        {"state_dict": collections.OrderedDict(a=torch.ones(2))}, tmp_path / "ok.ckpt"
    )
    assert torch.equal(io.load_checkpoint(tmp_path / "ok.ckpt")["state_dict"]["a"], torch.ones(2))
    torch.save({"x": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(UserError, match="cannot be read safely"):
        io.load_checkpoint(tmp_path / "evil.ckpt")
