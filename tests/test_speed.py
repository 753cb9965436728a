"""What makes small runs cheap (issue 15) still gives the same numbers: training values summed on the device and
logged once per epoch, a progress bar redrawn by the clock, the test run's predictions reused by the plots, the
cores shared out among a parallel sweep's jobs, and the run's own clock (PIPELINE_TIMINGS)."""
import json
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from pytorch_lightning.callbacks import RichProgressBar

from conftest import CONF, ROOT
from pipeline import cores, precision, train
from pipeline.progress import ProgressBar

QUIET = ["logger=none", "callbacks=none", "threads=1", "+trainer.enable_progress_bar=false"]


def built(compose_config, *overrides):
    cfg = compose_config(*QUIET, *overrides)
    train.start(cfg)
    datamodule = train.build_data(cfg)
    return cfg, datamodule, train.build_task(cfg, datamodule)


def test_the_epoch_means_of_training_values_are_the_means_over_every_example(compose_config):
    # lr=1e-30: the weights never move (float32 cannot hold the change), so the epoch's train/loss and train/acc must be the loss and accuracy of the
    # fixed model on every training example, however the batches fell (the last one is smaller).
    cfg, datamodule, task = built(compose_config, "model=linear", "optimizer=sgd", "optimizer.lr=1e-30",
                                  "trainer.max_epochs=1", "data.batch_size=100")
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         limit_val_batches=0, enable_model_summary=False)
    trainer.fit(task, datamodule=datamodule)
    x, y = datamodule.splits["train"]
    assert len(y) % 100 != 0  # the uneven last batch is part of the check
    with torch.no_grad():
        logits = task.model(x)
    expected_loss = float(torch.nn.functional.cross_entropy(logits, y))
    expected_acc = float((logits.argmax(-1) == y).float().mean())
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(expected_loss, rel=1e-5)
    assert float(trainer.callback_metrics["train/acc"]) == pytest.approx(expected_acc, abs=1e-6)
    assert task.epoch_sums == {}  # emptied for the next epoch


@pytest.mark.parametrize("scheduler", ["step", "onecycle"])  # stepped per epoch, per batch
def test_the_tasks_own_optimizer_steps_train_exactly_as_lightnings_automatic_ones(compose_config, scheduler):
    overrides = ["model=mlp", "model.hidden=[16]", f"scheduler={scheduler}", "scheduler.step_size=1"
                 if scheduler == "step" else "scheduler.pct_start=0.5", "trainer.max_epochs=3"]
    trained = {}
    for how, clip in (("by hand", 0.05), ("automatic", 0.05), ("automatic", None)):
        cfg, datamodule, task = built(compose_config, *overrides, f"trainer.gradient_clip_val={clip or 'null'}")
        if how == "by hand":
            assert not task.automatic_optimization and task.gradient_clip == (0.05, "norm")
            trainer = train.build_trainer(cfg, None)  # which leaves the clipping to the task
            assert trainer.gradient_clip_val is None
        else:
            task.automatic_optimization = True
            trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                 enable_model_summary=False, deterministic=True, gradient_clip_val=clip)
        trainer.fit(task, datamodule=datamodule)
        trained[how, clip] = ([p.detach().clone() for p in task.model.parameters()],
                              trainer.optimizers[0].param_groups[0]["lr"], trainer.global_step)
    (by_hand, lr, steps), (automatic, lr_automatic, steps_automatic) = trained["by hand", 0.05], trained["automatic", 0.05]
    assert steps == steps_automatic and lr == lr_automatic and lr != cfg.optimizer.lr  # the schedule moved
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(by_hand, automatic))
    unclipped = trained["automatic", None][0]
    assert not all(torch.equal(mine, theirs) for mine, theirs in zip(by_hand, unclipped))  # the clipping mattered


def test_gradient_accumulation_leaves_the_steps_to_lightning(compose_config):
    cfg, _, task = built(compose_config, "+trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=1.0")
    assert task.automatic_optimization and task.gradient_clip is None
    assert train.build_trainer(cfg, None).gradient_clip_val == 1.0


@pytest.mark.parametrize("interval, redraws", [(3600.0, "epochs"), (0.0, "steps")])
def test_the_progress_bar_redraws_by_the_clock_and_after_each_epochs_last_batch(compose_config, monkeypatch,
                                                                                 interval, redraws):
    cfg, datamodule, task = built(compose_config, "trainer.max_epochs=2")
    calls = []
    original = RichProgressBar.on_train_batch_end
    monkeypatch.setattr(RichProgressBar, "on_train_batch_end",
                        lambda self, *args: calls.append(args[-1]) or original(self, *args))
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[ProgressBar(interval=interval)], limit_val_batches=0)
    trainer.fit(task, datamodule=datamodule)
    batches = len(datamodule.train_dataloader())
    if redraws == "epochs":  # an hour between redraws: the first batch, then each epoch's last (the bar ends full)
        assert calls == [0, batches - 1, batches - 1]
    else:
        assert calls == list(range(batches)) * 2


def test_plots_and_evaluation_reuse_the_test_runs_predictions(compose_config, tmp_path):
    cfg, datamodule, task = built(compose_config, "trainer.max_epochs=1")
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(task, datamodule=datamodule)
    trainer.test(task, datamodule=datamodule, verbose=False)
    inputs, labels, predictions = task.test_predictions(datamodule)
    x, y = datamodule.splits["test"]
    assert torch.equal(inputs, x) and torch.equal(labels, y)
    assert float((predictions == labels).float().mean()) == pytest.approx(float(trainer.callback_metrics["test/acc"]))

    def no_second_prediction(*args):
        raise AssertionError("the test split was predicted again")

    forward = task.model.forward
    task.model.forward = no_second_prediction
    extra, files = task.evaluation(datamodule, tmp_path)
    assert (tmp_path / "predictions.csv").exists() and extra["per_class"]
    task.model.forward = forward
    task.test_predicted = []  # no test run (the DVC evaluate stage): predicted now, the same classes
    assert torch.equal(task.test_predictions(datamodule)[2], predictions)


@pytest.mark.parametrize("launcher, expected", [
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], 2),
    (["hydra/launcher=joblib"], "cores"),  # the launcher's default n_jobs=-1: one job per core
    ([], 1),
])
def test_a_parallel_sweeps_jobs_share_the_cores(launcher, expected):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=launcher, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert cores.parallel_jobs() == (cores.cores() if expected == "cores" else expected)
    finally:
        HydraConfig.instance().cfg = None


def test_the_runs_own_clock_records_its_phases_and_epochs(run_py, tmp_path):
    timings = tmp_path / "timings.json"
    result = run_py("trainer.max_epochs=3", "logger=csv", env={"PIPELINE_TIMINGS": str(timings)})
    assert result.returncode == 0, result.stderr[-2000:]
    recorded = json.loads(timings.read_text())
    names = [name for name, _, _ in recorded["phases"]]
    for phase in ("config", "data", "model", "trainer", "first step", "fit", "test", "tracking end"):
        assert phase in names
    assert all(end >= start for _, start, end in recorded["phases"])
    assert len(recorded["epochs"]) == 3 + 1  # each epoch's start, and the end of fitting
    fit = next((start, end) for name, start, end in recorded["phases"] if name == "fit")
    assert fit[0] <= recorded["epochs"][0] and recorded["epochs"][-1] <= fit[1]


def test_the_overhead_benchmark_prints_the_breakdown():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick", "--loggers", "csv"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "logger=csv: whole run" in result.stdout and "fixed cost" in result.stdout
    for phase in ("start-up above the floor", "data", "fit", "test", "exit"):
        assert phase in result.stdout


def test_the_sweeps_benchmark_prints_its_ratios_and_the_ideal():
    """benchmarks/sweeps.py in its quick mode (2 jobs of 2 epochs), as the README's command would run it."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweeps.py"), "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("runs one by one:", "sweep / sum of runs", "sequential / joblib", "a job inside the sweep",
                 "perfect 2 workers", "cores busy on average", "sequential / that at most"):
        assert line in result.stdout, result.stdout
    cores_busy = float(result.stdout.split("s of CPU (")[1].split()[0])
    assert 0.5 < cores_busy <= cores.cores() + 0.1  # CPU time counted, and no more than the cores


@pytest.mark.parametrize("flags, native", [("fpu avx2 avx512f avx512bw", False), ("fpu avx512f avx512_bf16", True),
                                            ("fpu amx_bf16 amx_tile", True)])
def test_native_bf16_is_read_from_the_cpus_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert precision.cpu_has_native_bf16(cpuinfo) is native
    assert precision.cpu_has_native_bf16(tmp_path / "absent") is False


def test_auto_mixed_trains_in_bf16_only_where_the_cpu_computes_it_natively(compose_config, monkeypatch):
    cfg = compose_config("experiment=cifar10_cnn", "logger=none", "callbacks=none", "trainer.accelerator=cpu")
    assert cfg.trainer.precision == precision.AUTO_MIXED
    for native, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert train.build_trainer(cfg, None).precision == expected
    assert precision.resolved("16-mixed", "cpu") == "16-mixed"  # any other value is Lightning's own


def test_the_default_precision_is_mixed_on_a_gpu_and_float32_on_every_cpu(compose_config, monkeypatch):
    cfg = compose_config("logger=none", "callbacks=none")
    assert cfg.trainer.precision == precision.GPU_MIXED
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert train.build_trainer(cfg, None).precision == "32-true"  # small models gain nothing from bf16 on a CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for bf16, expected in ((True, "bf16-mixed"), (False, "16-mixed")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        for value in (precision.GPU_MIXED, precision.AUTO_MIXED):
            assert precision.resolved(value, "auto") == precision.resolved(value, "gpu") == expected
        assert precision.resolved(precision.GPU_MIXED, "cpu") == "32-true"  # a GPU machine told to use its CPU
