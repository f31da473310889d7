"""Weights trained elsewhere: timm's hub (`model.pretrained`, its downloads replaced by a state
dict the test wrote: nothing reads the network) and files (`model.weights`: .pth state dicts read
with weights_only, wrappers and `module.` prefixes undone, a ViT resampled to a small image).
Later stages, resumes, `predict` and `export` never read the hub again."""

from __future__ import annotations

import json
import logging

import pytest
import timm
import timm.models._builder
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models import get_pretrained_cfg
from timm.models.resnet import BasicBlock, ResNet

from uniframework.config import ModelConfig, load_config
from uniframework.data import make_transform
from uniframework.errors import UserError
from uniframework.io import read_json, write_json
from uniframework.models import build_backbone
from uniframework.models.backbones import pretrained_stats
from uniframework.pipeline import RunContext, run

from ..conftest import TINY


class Hub:
    """timm's downloads, replaced: they return `state` (None: they fail as offline); `calls`
    counts them."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None
        self.calls = 0

    def __call__(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.state is None:
            raise OSError("[Errno 101] Network is unreachable")
        return {k: v.clone() for k, v in self.state.items()}


@pytest.fixture(autouse=True)
def hub(monkeypatch) -> Hub:
    fake = Hub()
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", fake)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", fake)
    return fake


def _imagenet_resnet18() -> dict[str, torch.Tensor]:
    """A timm resnet18 state dict with its 1000-class `fc` head, as the hub serves it."""
    return timm.create_model("resnet18", num_classes=1000).state_dict()


def test_hub_weights_arrive_and_small_input_is_turned_off(hub, caplog):
    hub.state = _imagenet_resnet18()
    cfg = ModelConfig(backbone="resnet18", pretrained=True, small_input=True)
    with caplog.at_level(logging.INFO):
        model = build_backbone(cfg, 32)
    assert hub.calls == 1
    own = model.state_dict()
    assert set(own) == set(hub.state) - {"fc.weight", "fc.bias"}  # the head is dropped
    assert all(torch.equal(own[k], hub.state[k]) for k in own)
    # small_input: off with a log line (its 3x3 stem would replace the pretrained 7x7 one)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert "model.small_input is off" in caplog.text
    again = build_backbone(cfg, 32, start=False)  # a later stage: same stem, no download
    assert again.conv1.kernel_size == (7, 7) and hub.calls == 1


def test_images_follow_the_pretrained_normalisation(tmp_path):
    pcfg = get_pretrained_cfg("resnet18")
    cfg = load_config(None, [*TINY, "model.backbone=resnet18", "model.pretrained=true"])
    assert pretrained_stats(cfg.model) == (tuple(pcfg.mean), tuple(pcfg.std))
    data = RunContext(cfg, tmp_path).data
    for base in (data.train, data.test):
        assert (tuple(base.mean), tuple(base.std)) == (pcfg.mean, pcfg.std)
    norm = make_transform(data.test, 8, train=False).transforms[-1]
    assert tuple(norm.mean) == pcfg.mean and tuple(norm.std) == pcfg.std
    plain = RunContext(load_config(None, TINY), tmp_path).data  # no pretrained weights
    assert plain.test.mean != pcfg.mean  # the digits' own statistics


@pytest.mark.parametrize("backbone", ["resnet18", "resnet_tiny"])
def test_no_weights_offline_is_a_user_error_naming_model_weights(hub, backbone):
    """resnet18: the download fails (offline); resnet_tiny: timm has no weights for it."""
    with pytest.raises(UserError, match="model.weights=") as err:
        build_backbone(ModelConfig(backbone=backbone, pretrained=True), 32)
    assert ("offline" in str(err.value)) == (backbone == "resnet18")
    assert hub.calls == (backbone == "resnet18")


def _resnet_tiny_with_head() -> ResNet:
    """resnet_tiny's architecture (timm's ResNet class) with a 10-class `fc` head and the
    ImageNet stem, as a timm / torchvision training script saves it."""
    return ResNet(BasicBlock, (1, 1, 1, 1), channels=(32, 64, 128, 256), num_classes=10)


def test_pth_state_dict_in_a_wrapper_loads_with_weights_only(tmp_path, monkeypatch):
    source = _resnet_tiny_with_head().state_dict()
    path = tmp_path / "resnet_tiny.pth"
    wrapped = {f"module.{k}": v for k, v in source.items()}  # DistributedDataParallel's names
    torch.save({"state_dict": wrapped, "epoch": 3, "arch": "resnet_tiny"}, path)
    seen, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: seen.append(kw) or load(*a, **kw))
    cfg = ModelConfig(backbone="resnet_tiny", weights=str(path))
    model = build_backbone(cfg, 16)
    assert seen and all(kw.get("weights_only") is True for kw in seen)
    own = model.state_dict()
    assert set(own) == set(source) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(own[k], source[k]) for k in own)
    assert model.conv1.kernel_size == (7, 7)  # ImageNet weights keep their stem
    assert pretrained_stats(cfg) == (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))


class Payload:
    """A pickled object: loading it would run code (here: record that it ran)."""

    ran: list[bool] = []

    def __setstate__(self, state) -> None:
        Payload.ran.append(True)


def test_pth_with_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"model": _resnet_tiny_with_head().state_dict(), "extra": Payload()}, path)
    with pytest.raises(UserError, match="pickled Python objects"):
        build_backbone(ModelConfig(backbone="resnet_tiny", weights=str(path)), 16)
    assert not Payload.ran


def test_pth_of_another_architecture_names_how_many_tensors_fit(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(_imagenet_resnet18(), path)
    with pytest.raises(UserError, match=r"fits only \d+ of the \d+ tensors"):
        build_backbone(ModelConfig(backbone="resnet_tiny", weights=str(path)), 16)


@pytest.mark.parametrize("patch", [None, 16])
def test_vit_file_for_224_px_loads_at_32_px(tmp_path, patch):
    """A ViT-tiny/16 at 224 px (14 x 14 position embeddings), 2 blocks to stay fast, loads at
    32 px: default patch 32 // 8 = 4 (8 x 8 grid, patch embedding resampled by timm) or 16
    (2 x 2 grid, patch embedding as it is); position embeddings resampled either way."""
    source = timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=1000)
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    cfg = ModelConfig(backbone="vit_tiny", weights=str(path), patch_size=patch)
    model = build_backbone(cfg.model_copy(update={"timm_kwargs": {"depth": 2}}), 32)
    p = patch or 4
    grid = 32 // p
    assert model.pos_embed.shape == (1, 1 + grid * grid, 192)
    with torch.no_grad():
        pos = resample_abs_pos_embed(source.pos_embed, (grid, grid), num_prefix_tokens=1)
        proj = resample_patch_embed(source.patch_embed.proj.weight, (p, p))
    assert torch.allclose(model.pos_embed, pos, atol=1e-6)
    assert torch.allclose(model.patch_embed.proj.weight, proj, atol=1e-5)
    assert torch.equal(model.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 192)


def test_only_the_first_stage_reads_the_hub(hub, tmp_path):
    """One download in `supervised`; none in `openset`, `predict`, `export`, a resumed
    `supervised` fit, or the report, which names the weights."""
    hub.state = timm.create_model("test_resnet", num_classes=1000).state_dict()
    overrides = [*TINY, "model.backbone=test_resnet", "model.pretrained=true"]
    cfg = load_config(None, [*overrides, "trainer.max_epochs=1", "data.num_known=6"])
    cfg = cfg.model_copy(update={"stages": [{"supervised": {}}, {"openset": {}}]})
    out = tmp_path / "run"
    run(cfg, out)
    assert hub.calls == 1

    from uniframework.predict import predict

    ctx = RunContext(cfg, out)
    image = tmp_path / "digit.png"
    Image.fromarray(ctx.data.test.load(0).permute(1, 2, 0).numpy()).save(image)
    assert "error" not in predict(out, [image])[0]
    assert hub.calls == 1
    try:  # the `export` extra
        import onnx

        from uniframework.export import export_run
    except ImportError:
        onnx = None
    if onnx is not None:  # the exported preprocessing carries the weights' normalisation
        exported = onnx.load(str(export_run(out, tmp_path / "m.onnx")))
        props = {p.key: json.loads(p.value) for p in exported.metadata_props}
        mean = get_pretrained_cfg("test_resnet").mean
        assert props["preprocess"]["mean"] == pytest.approx(list(mean))
        assert hub.calls == 1

    # a supervised fit cut off after its last checkpoint resumes from it: no download
    assert (out / "checkpoints" / "supervised" / "last.ckpt").is_file()
    state = read_json(out / "state.json")
    state["done"] = []
    write_json(out / "state.json", state)
    run(cfg, out)
    assert hub.calls == 1
    meta = read_json(out / "metrics.json")
    assert "supervised.known_acc" in meta
    page = (out / "report.html").read_text()
    assert "Backbone weights at the start: timm:test_resnet.r160_in1k" in page
