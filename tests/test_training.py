"""training.ChannelsLast (`trainer.channels_last`): NHWC while fitting, NCHW after."""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from uniframework.training import ChannelsLast


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


def _fit(callbacks) -> _Net:
    net = _Net()
    data = DataLoader(TensorDataset(torch.randn(8, 3, 6, 6)), batch_size=4)
    trainer = L.Trainer(
        max_epochs=1,
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
