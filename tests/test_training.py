"""training.ChannelsLast (`trainer.channels_last`): NHWC while fitting, NCHW after;
training.Compile (`trainer.compile`): the backbones compiled for the fit, eager after;
`trainer.precision: bf16-mixed` on a CPU; training.AttentionPath (`trainer.attention`);
training.planned_epochs, training.process_count."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from uniframework.training import (
    AttentionPath,
    ChannelsLast,
    Compile,
    compile_targets,
    planned_epochs,
    process_count,
)


class _Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.seen = torch.nn.Conv2d(3, 4, 3), []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        y = self.conv(x)  # an NCHW input, as the loaders give it
        self.seen.append(
            (
                self.conv.weight.is_contiguous(memory_format=torch.channels_last),
                y.is_contiguous(memory_format=torch.channels_last),
            )
        )
        return y.square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callbacks, net=None, max_epochs: int = 1):
    """Fit `net` (a _Net by default) on 8 random images, 2 steps per epoch; returns it."""
    net = net or _Net()
    data = DataLoader(TensorDataset(torch.randn(8, 3, 6, 6)), batch_size=4)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(net, data)
    return net


def test_channels_last_runs_the_fit_nhwc_and_hands_back_nchw():
    net = _fit([ChannelsLast()])
    assert net.seen == [(True, True), (True, True)]  # weights and conv outputs NHWC
    assert net.conv.weight.is_contiguous()  # plain NCHW again (safetensors needs it)
    assert not net.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_without_it_the_fit_stays_nchw():
    assert _fit([]).seen == [(False, False), (False, False)]


class _Backboned(L.LightningModule):
    """A Classifier-like module: the steps call `model.backbone` as a module, not `model`."""

    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
        self.model.head = torch.nn.Linear(64, 2)
        self.compiled, self.losses = [], []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        self.compiled.append(self.model.backbone._compiled_call_impl is not None)
        loss = self.model.head(self.model.backbone(x)).square().mean()
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_compile_targets_the_topmost_backbones_else_the_model():
    net = _Backboned()
    assert compile_targets(net) == [net.model.backbone]
    net.model.backbone.encoder = torch.nn.Linear(2, 2)  # inside a backbone: not a second target
    assert compile_targets(net) == [net.model.backbone]
    bare = L.LightningModule()
    bare.model = torch.nn.Linear(2, 2)  # MAE: no backbone, the model itself
    assert compile_targets(bare) == [bare.model]


def test_compile_runs_the_fit_compiled_with_eager_numbers_and_hands_back_eager():
    runs = {}
    # aot_eager: dynamo + AOTAutograd as inductor, without its minute of C++ code generation
    for name, callbacks in (("eager", []), ("compiled", [Compile("aot_eager")])):
        torch.manual_seed(0)
        net = _Backboned()
        keys = list(net.state_dict())
        runs[name] = _fit(callbacks, net, max_epochs=2)
        assert list(net.state_dict()) == keys  # in place: names (and saved files) unchanged
    assert runs["compiled"].compiled == [True] * 4 and runs["eager"].compiled == [False] * 4
    assert runs["compiled"].model.backbone._compiled_call_impl is None  # eager after the fit
    torch.testing.assert_close(runs["compiled"].losses, runs["eager"].losses, rtol=1e-4, atol=1e-5)


def test_the_trainer_options_add_the_callbacks(tmp_path):
    from uniframework.config import TrainerConfig
    from uniframework.training import make_trainer

    def kinds(**options):
        cfg = TrainerConfig(accelerator="cpu", enable_progress_bar=False, **options)
        return {type(c) for c in make_trainer(cfg, tmp_path, "supervised").callbacks}

    assert {Compile, ChannelsLast, AttentionPath} <= kinds(compile=True, channels_last=True)
    assert not {Compile, ChannelsLast} & kinds()
    assert AttentionPath in kinds()  # always: `auto` picks the path by device


class _Recorder(_Net):
    """Records the conv output's and the weight's dtype in each step."""

    def training_step(self, batch, batch_idx):
        (x,) = batch
        y = self.conv(x)
        self.seen.append((y.dtype, self.conv.weight.dtype))
        return y.float().square().mean()


def test_bf16_mixed_runs_the_steps_in_bfloat16_on_fp32_weights(tmp_path):
    """`trainer.precision: bf16-mixed` on a CPU (BENCHMARKS "bf16 and attention on a CPU"): the
    step's convolutions run in bfloat16 under autocast, the weights and their update stay fp32."""
    from uniframework.config import TrainerConfig
    from uniframework.training import make_trainer

    torch.manual_seed(0)
    net = _Recorder()
    before = net.conv.weight.detach().clone()
    cfg = TrainerConfig(accelerator="cpu", precision="bf16-mixed", enable_progress_bar=False)
    data = DataLoader(TensorDataset(torch.randn(8, 3, 6, 6)), batch_size=4)
    make_trainer(cfg, tmp_path, "supervised", max_epochs=1).fit(net, data)
    assert net.seen == [(torch.bfloat16, torch.float32)] * 2
    assert net.conv.weight.dtype == torch.float32
    assert not torch.equal(net.conv.weight, before)  # it trained


class _Attending(L.LightningModule):
    """A timm attention layer; each step records whether it ran the fused path."""

    def __init__(self) -> None:
        super().__init__()
        from timm.models.vision_transformer import Attention

        self.attn, self.fused = Attention(4, num_heads=2), []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        self.fused.append(self.attn.fused_attn)
        return self.attn(x.reshape(len(x), -1, 4)).square().mean()  # 27 tokens

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("mode,during", [("auto", False), ("explicit", False), ("fused", True)])
def test_attention_path_for_the_fit_and_timms_default_after(mode, during):
    net = _Attending()
    assert net.attn.fused_attn  # timm's default where F.scaled_dot_product_attention exists
    _fit([AttentionPath(mode)], net)
    assert net.fused == [during, during]  # on this CPU: `auto` = explicit
    assert net.attn.fused_attn  # put back


def test_both_attention_paths_compute_the_same_thing():
    torch.manual_seed(0)
    net, x = _Attending(), torch.randn(3, 5, 4, requires_grad=True)
    out = {}
    for fused in (True, False):
        net.attn.fused_attn = fused
        y = net.attn(x)
        (grad,) = torch.autograd.grad(y.square().sum(), x)
        out[fused] = (y.detach(), grad)
    torch.testing.assert_close(out[True], out[False])


class _Planned(L.Callback):
    def on_train_start(self, trainer, pl_module):
        pl_module.planned = planned_epochs(trainer)


@pytest.mark.parametrize(
    ("max_epochs", "max_steps", "accumulate", "expected"),
    [(10, -1, 1, 10), (10, 6, 1, 2), (10, 6, 2, 3), (10, 7, 2, 4), (10, 100, 1, 10), (-1, 6, 1, 2)],
)
def test_planned_epochs_counts_the_epochs_max_steps_leaves(
    max_epochs, max_steps, accumulate, expected
):
    net = _Net()
    loader = DataLoader(TensorDataset(torch.randn(8, 3, 6, 6)), batch_size=2)  # 4 batches
    trainer = L.Trainer(
        max_epochs=max_epochs,
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        callbacks=[_Planned()],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(net, loader)
    assert net.planned == expected == trainer.current_epoch  # the epochs the fit really ran


@pytest.mark.parametrize(
    ("accelerator", "devices", "nodes", "gpus", "expected"),
    [
        ("cpu", 1, 1, 0, 1),
        ("cpu", 2, 1, 0, 2),
        ("cpu", "auto", 1, 4, 1),  # Lightning: one CPU device
        ("auto", "auto", 1, 0, 1),
        ("auto", "auto", 1, 4, 4),  # every GPU: DDP although the config says no number
        ("gpu", -1, 2, 3, 6),
        ("gpu", [0, 2], 1, 4, 2),
        ("gpu", "0,1,", 1, 4, 2),
        ("gpu", "3", 2, 4, 6),
    ],
)
def test_process_count_reads_devices_as_lightning_does(
    monkeypatch, accelerator, devices, nodes, gpus, expected
):
    from uniframework.config import TrainerConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    cfg = TrainerConfig(accelerator=accelerator, devices=devices, num_nodes=nodes)
    assert process_count(cfg) == expected


def test_process_count_refuses_devices_it_cannot_read():
    from uniframework.config import TrainerConfig
    from uniframework.errors import UserError

    with pytest.raises(UserError, match="trainer.devices = 'two'"):
        process_count(TrainerConfig(accelerator="cpu", devices="two"))
