"""Lookahead (callbacks.lookahead, pipeline.lookahead): in a real Lightning fit, every `every` steps the weights and
BatchNorm's running statistics become the moving average of what they were at each sync, with airbench's decay
schedule; between syncs SGD runs free; the last step leaves the average; a checkpoint carries the average."""
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from pipeline.lookahead import Lookahead


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.layers(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)


class Snapshots(pl.Callback):
    """The module's floating-point state at every training step's end, as the callbacks after this one find it."""

    def __init__(self):
        self.taken = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.taken.append({name: value.clone() for name, value in pl_module.state_dict().items()
                           if value.is_floating_point()})


def batches(count: int = 64):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(count, 4, generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)


def test_the_weights_become_the_moving_average_at_each_sync_and_run_free_between(tmp_path):
    torch.manual_seed(0)
    before, lookahead, after = Snapshots(), Lookahead(every=3, decay=0.8, power=3), Snapshots()
    trainer = pl.Trainer(max_epochs=2, callbacks=[before, lookahead, after], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Net(), batches())
    total = 16  # 8 batches x 2 epochs
    assert len(before.taken) == len(after.taken) == total
    average = None
    for step in range(1, total + 1):
        free, synced = before.taken[step - 1], after.taken[step - 1]
        if step % 3 and step != total:
            assert all(torch.equal(free[name], synced[name]) for name in free), step  # no sync: untouched
            continue
        if step % 3:  # the last step, off the sync grid: back to the average as it stands
            expected = average
        else:
            decay = 0.8 * (step / total) ** 3
            expected = {name: value.clone() if average is None else average[name] * decay + value * (1 - decay)
                        for name, value in free.items()}
        for name in free:
            assert torch.allclose(synced[name], expected[name], atol=1e-6), (step, name)
        average = expected
    assert any("running_mean" in name and not torch.equal(before.taken[-1][name], after.taken[-1][name])
               for name in average)  # BatchNorm's statistics are averaged with the weights


def test_the_average_is_in_the_checkpoint_and_resuming_carries_on_from_it(tmp_path):
    torch.manual_seed(0)
    lookahead = Lookahead(every=2)
    trainer = pl.Trainer(max_epochs=1, callbacks=[lookahead], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Net(), batches())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    resumed = Lookahead(every=2)
    trainer = pl.Trainer(max_epochs=1, callbacks=[resumed], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Net(), batches(), ckpt_path=tmp_path / "last.ckpt")  # already at max_epochs: restores, trains not
    assert resumed.average is not None and resumed.average.keys() == lookahead.average.keys()
    assert all(torch.equal(resumed.average[name], lookahead.average[name]) for name in lookahead.average)


@pytest.mark.parametrize("arguments, message", [({"every": 0}, r"callbacks.lookahead.every=0 is invalid"),
                                                ({"decay": 1.0}, r"callbacks.lookahead.decay=1.0 is invalid")])
def test_bad_settings_are_one_clear_error(arguments, message):
    with pytest.raises(ValueError, match=message):
        Lookahead(**arguments)


def test_accumulated_batches_sync_once_per_optimizer_step(tmp_path):
    torch.manual_seed(0)
    before, lookahead, after = Snapshots(), Lookahead(every=2, decay=0.8), Snapshots()
    trainer = pl.Trainer(max_epochs=1, callbacks=[before, lookahead, after], accumulate_grad_batches=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(Net(), batches())  # 8 batches, 4 optimizer steps: syncs after steps 2 and 4 (batches 4 and 8)
    changed = [index for index, (free, synced) in enumerate(zip(before.taken, after.taken))
               if any(not torch.equal(free[name], synced[name]) for name in free)]
    assert changed == [3, 7]
