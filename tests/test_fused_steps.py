"""Several optimizer steps per call from Lightning's loop (fused_steps, pipeline/fused_steps.py) train exactly as one
step per call, and are used only where nothing acts between steps."""
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.loggers.logger import Logger

from pipeline import fused_steps, timing, train
from pipeline.averaging import WeightAverage
from pipeline.data.batches import GroupedBatches
from pipeline.divergence import TrainingDiverged
from pipeline.errors import ConfigError
from pipeline.fused_steps import steps_in
from pipeline.progress import ProgressBar
from test_images import write_mnist

QUIET = ["logger=none", "callbacks=none", "threads=1", "+trainer.enable_progress_bar=false"]


class Recorder(Logger):
    """Every (step, metrics) the loggers get: the values, and the steps MLflow's charts plot them against."""

    def __init__(self):
        super().__init__()
        self.logged = []

    name, version = "recorder", 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


def fitted(compose_config, *overrides, callbacks=(), ckpt_path=None):
    cfg = compose_config(*QUIET, *overrides)
    train.start(cfg)
    datamodule = train.build_data(cfg)
    task = train.build_task(cfg, datamodule)
    recorder = Recorder()
    trainer = train.build_trainer(cfg, None, loggers=[recorder], callbacks=callbacks)
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer, task, recorder


def weights(task) -> list[torch.Tensor]:
    return [tensor.detach().clone() for tensor in task.state_dict().values()]


@pytest.mark.parametrize("overrides", [
    # a schedule stepped per step over the whole run, clipping, dropout; 9 batches: groups of 4, 4 and 1
    ["model=mlp", "model.hidden=[16]", "regularization=dropout", "scheduler=onecycle",
     "trainer.gradient_clip_val=0.05", "data.batch_size=150", "trainer.max_epochs=3"],
    # image data augmented batch by batch (crops and flips draw from the data's generator), BatchNorm, bf16
    ["data=mnist", "model=cnn", "model.channels=[4]", "model.pool_after=[0]", "regularization=batchnorm",
     "data.crop_padding=2", "data.flip=true", "data.batch_size=32", "data.download=false",
     "trainer.precision=bf16-mixed", "trainer.max_epochs=2"],
])
def test_grouped_steps_train_exactly_as_one_step_per_call(compose_config, tmp_path, overrides):
    if "data=mnist" in overrides:
        write_mnist(tmp_path / "data" / "MNIST" / "raw", n_train=300)
        overrides = overrides + [f"data.root={tmp_path}/data", f"data.cache_dir={tmp_path}/cache"]
    runs = {group: fitted(compose_config, *overrides, f"fused_steps={group}") for group in (4, 1)}
    (grouped, grouped_task, grouped_log), (single, single_task, single_log) = runs[4], runs[1]
    loader = grouped.train_dataloader
    assert isinstance(loader, GroupedBatches) and loader.group == 4 and loader.steps % 4  # a shorter last group
    assert grouped.num_training_batches == -(-loader.steps // 4)  # Lightning made a call per group...
    assert grouped.global_step == single.global_step == loader.steps * grouped.max_epochs  # ...and counts steps
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(weights(grouped_task), weights(single_task)))
    assert grouped.optimizers[0].param_groups[0]["lr"] == single.optimizers[0].param_groups[0]["lr"]
    assert grouped_log.logged == single_log.logged  # the same values at the same logged steps
    assert grouped.callback_metrics.keys() == single.callback_metrics.keys()
    assert all(torch.equal(grouped.callback_metrics[key], single.callback_metrics[key])
               for key in single.callback_metrics)


def test_auto_groups_cheap_steps_and_a_refused_group_says_why(compose_config):
    timing.reset()
    # the default: auto, and a step of this MLP takes well under 1 ms; the run's clock (PIPELINE_TIMINGS) only looks
    trainer, _, _ = fitted(compose_config, "model=mlp", "model.hidden=[16]", "trainer.max_epochs=1",
                           callbacks=[timing.EpochClock()])
    assert trainer.train_dataloader.group > 1 and [name for name, *_ in timing.phases] == ["first step"]
    # a weight average acts after every step: auto keeps one step per call, an explicit group is refused
    trainer, _, _ = fitted(compose_config, "trainer.max_epochs=1", callbacks=[WeightAverage(decay=0.9)])
    assert not isinstance(trainer.train_dataloader, GroupedBatches)
    with pytest.raises(ConfigError, match="fused_steps=4: callback WeightAverage acts at every step"):
        fitted(compose_config, "trainer.max_epochs=1", "fused_steps=4", callbacks=[WeightAverage(decay=0.9)])
    with pytest.raises(ConfigError, match="fused_steps=4: the steps are Lightning's"):
        fitted(compose_config, "trainer.max_epochs=1", "fused_steps=4", "+trainer.accumulate_grad_batches=2")
    with pytest.raises(ConfigError, match="fused_steps=4: task.log_every_step=true logs every step"):
        fitted(compose_config, "trainer.max_epochs=1", "fused_steps=4", "task.log_every_step=true")
    with pytest.raises(ConfigError, match="fused_steps=4: trainer.max_steps=5 counts Lightning's calls"):
        fitted(compose_config, "fused_steps=4", "+trainer.max_steps=5")
    with pytest.raises(ConfigError, match="fused_steps=0.*auto or an integer >= 1"):
        train.start(compose_config("fused_steps=0"))


class Clock:
    """The clock fused_steps times passes with, moved on only by Slow: a sleep on a busy machine overshoots by
    milliseconds (seen in CI: a 4 ms pass timed at over 5.5 ms), which would change the answer under test."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()


class Slow(torch.nn.Module):
    """A forward pass that takes `seconds` on CLOCK."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        CLOCK.now += self.seconds
        return x


def test_auto_takes_fewer_steps_per_call_the_longer_a_step_takes(compose_config, monkeypatch):
    monkeypatch.setattr(fused_steps, "time", SimpleNamespace(perf_counter=CLOCK))  # only fused_steps reads it
    cfg = compose_config(*QUIET)
    datamodule = train.build_data(cfg)
    assert steps_in(0.05, Slow(0.0), datamodule) == 32
    assert steps_in(0.05, Slow(0.004), datamodule) in (3, 4)  # a step ~ three forward passes: ~12 ms
    assert steps_in(0.05, Slow(0.03), datamodule) == 1


def test_a_fit_resumed_with_other_groups_goes_on_exactly(compose_config, tmp_path):
    # 10 steps an epoch in groups of 4, 4, 2, then of 2: the checkpoint's count of calls is not the resumed fit's
    overrides = ["model=mlp", "model.hidden=[16]", "scheduler=step", "scheduler.step_size=1", "data.batch_size=130"]
    straight, straight_task, _ = fitted(compose_config, *overrides, "fused_steps=4", "trainer.max_epochs=4")
    first, _, _ = fitted(compose_config, *overrides, "fused_steps=4", "trainer.max_epochs=2",
                         f"paths.output_dir={tmp_path}/first")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed, resumed_task, _ = fitted(compose_config, *overrides, "fused_steps=2", "trainer.max_epochs=4",
                                      f"paths.output_dir={tmp_path}/first", ckpt_path=last)
    assert first.train_dataloader.group == 4 and resumed.train_dataloader.group == 2
    assert resumed.global_step == straight.global_step and resumed.current_epoch == straight.current_epoch == 4
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(weights(resumed_task), weights(straight_task)))


def test_divergence_inside_a_group_stops_at_the_same_step(compose_config):
    stopped = {}
    for group in (4, 1):
        with pytest.raises(TrainingDiverged) as error:
            fitted(compose_config, "optimizer=sgd", "optimizer.lr=1e30", "data.batch_size=150", f"fused_steps={group}")
        stopped[group] = str(error.value)
    assert stopped[4] == stopped[1] and "step" in stopped[4]


def test_the_progress_bar_counts_steps_not_calls(compose_config):
    bar = ProgressBar(interval=0.0)
    trainer, _, _ = fitted(compose_config, "model=mlp", "model.hidden=[16]", "data.batch_size=150",
                           "trainer.max_epochs=1", "fused_steps=4", "~trainer.enable_progress_bar", callbacks=[bar])
    loader = trainer.train_dataloader
    assert bar.total_train_batches == loader.steps and trainer.num_training_batches < loader.steps
    assert bar.progress.tasks[bar.train_progress_bar_id].completed == loader.steps
