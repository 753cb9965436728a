"""Training throughput of the pipeline against a plain PyTorch loop and a bare Lightning loop: same model, data,
batch size, optimizer, schedule, augmentation, loss, precision and memory layout, measured side by side in one
process, each epoch with its validation pass.

    PIPELINE_DATA_DIR=../shared/data python benchmarks/throughput.py [--epochs 1] [--repeats 3] [--threads N]
    python benchmarks/throughput.py --tiny    # seconds, offline (data=digits): checks the benchmark still runs

- plain: what a student writes, the same objects driven by hand (train, then evaluate the validation split);
- bare lightning: Trainer.fit of the same task with no logger, no callbacks, no progress bar, no checkpoint, and
  Lightning's automatic optimisation;
- pipeline: the task as `python run.py` builds it (its own optimizer steps: Task.step_by_hand, several per call
  from Lightning's loop where a step is cheap: fused_steps) and the trainer as run.py builds it
  (train.build_trainer: the callbacks group with its progress bar and best checkpoint, the last checkpoint, the
  divergence check; a CSV logger instead of MLflow's, whose per-epoch writes are not the per-step cost measured
  here). --breakdown adds it without its checkpoints and with one step per call (fused_steps=1).
Prints images/s and seconds per epoch for each and the ratios to plain (1.0 = no overhead). Targets (issue 15): pipeline
≥ 0.75× plain on the template MLP (aim 0.85×), ≥ 0.9× on the CIFAR CNN. Where a GPU is present it reports
the GPU case too (the same runs on accelerator=gpu).
"""
import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pipeline.train import build_data, build_task, build_trainer, trainer_settings

CONF = Path(__file__).resolve().parents[1] / "conf"

# The well-known template's default network (MLP 784-64-128-64-10 with BatchNorm, batch 128) and the CIFAR lab's CNN.
CASES = {
    "mnist_template_mlp": ["data=mnist", "model=mlp", "model.hidden=[64,128,64]", "regularization=batchnorm",
                           "data.batch_size=128", "optimizer=adam"],
    "cifar10_cnn": ["experiment=cifar10_cnn"],
}
# The same code paths as the real cases (epoch and step schedules, dropout, BatchNorm, label smoothing, class
# weights, channels_last, bf16) on the bundled digits with tiny models.
TINY = {
    "digits_mlp": ["data=digits", "model=mlp", "model.hidden=[32]", "regularization=dropout", "scheduler=cosine"],
    "digits_cnn": ["data=digits", "model=cnn", "model.channels=[8,16]", "model.pool_after=[1]",
                   "regularization=batchnorm", "optimizer=momentum", "scheduler=onecycle", "task.label_smoothing=0.1",
                   "task.channels_last=true", "+data.class_weighting=balanced", "trainer.precision=bf16-mixed"],
}
LOOPS = ("plain", "bare lightning", "pipeline")
NO_CHECKPOINTS = "pipeline without checkpoints"  # --breakdown
ONE_STEP = "pipeline one step per call"  # --breakdown: fused_steps=1, Lightning's loop around every step
BARE = dict(logger=False, callbacks=[], enable_progress_bar=False, enable_checkpointing=False)


def build(cfg, by_hand: bool = True):
    """Fresh, identically seeded objects for one measurement, built as `python run.py` builds them (by_hand=False:
    Lightning's automatic optimisation, a bare Lightning loop's, instead of the task's own optimizer steps)."""
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = build_data(cfg)
    task = build_task(cfg, datamodule)
    task.automatic_optimization = not by_hand
    return datamodule, task


def time_lightning(cfg, bare: bool, checkpoints: bool = True) -> float:
    """checkpoints=False: the pipeline without its best and last checkpoints (their per-epoch writes, which on a GPU
    can take as long as a small model's epoch)."""
    datamodule, task = build(cfg, by_hand=not bare)
    trainer = instantiate(cfg.trainer, **BARE, **trainer_settings(cfg)) if bare else build_trainer(cfg, None)
    if not checkpoints:
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, pl.callbacks.ModelCheckpoint)]
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    return time.perf_counter() - start


def time_plain_loop(cfg) -> float:
    """What a student would write: the same objects, driven by hand (on the GPU: in-memory batches moved over from
    pinned memory, as the pipeline's datamodules serve them)."""
    datamodule, task = build(cfg)
    device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")
    model = task.model.to(device)
    if hasattr(datamodule, "class_weights"):  # what Classifier.setup does when the trainer attaches the data
        weights = datamodule.class_weights()
        task.class_weight = None if weights is None else weights.to(device)
    optimizer = instantiate(cfg.optimizer)(params=model.parameters())
    batches = datamodule.batches("train", shuffle=True, device=device)
    scheduler = None
    if cfg.get("scheduler"):
        partial = instantiate(cfg.scheduler)
        one_cycle = partial.func is torch.optim.lr_scheduler.OneCycleLR
        scheduler = partial(optimizer, total_steps=len(batches) * cfg.trainer.max_epochs) if one_cycle else partial(optimizer)
    bf16 = str(trainer_settings(cfg).get("precision", "32")).startswith("bf16")
    # As the Trainer sets it (trainer.deterministic), which otherwise stays set for all later plain runs but the first.
    torch.use_deterministic_algorithms(bool(cfg.trainer.get("deterministic")))
    model.train()
    start = time.perf_counter()
    for _ in range(cfg.trainer.max_epochs):
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if hasattr(datamodule, "augment"):
                x = datamodule.augment(x)
            if task.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = task.loss(model(x), y)  # the task's loss function: task.loss, weights, smoothing
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None and one_cycle:
                scheduler.step()
        if scheduler is not None and not one_cycle:
            scheduler.step()
        validate(model, task, datamodule, bf16, device)
    return time.perf_counter() - start


@torch.no_grad()
def validate(model, task, datamodule, bf16: bool, device: torch.device) -> float:
    """The validation split's accuracy, as a student's loop checks after each epoch."""
    model.eval()
    correct = 0
    for x, y in datamodule.batches("val", device=device):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if task.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            correct += int((model(x).argmax(-1) == y).sum())
    model.train()
    return correct / len(datamodule.splits["val"][1])


def measure(cfg, repeats: int, loops=LOOPS) -> dict[str, float]:
    """Seconds per run of each loop, the median of `repeats`, the loops interleaved (a load spike hits all)."""
    times = {loop: [] for loop in loops}
    for _ in range(repeats):
        times["plain"].append(time_plain_loop(cfg))
        times["bare lightning"].append(time_lightning(cfg, bare=True))
        times["pipeline"].append(time_lightning(cfg, bare=False))
        if NO_CHECKPOINTS in loops:
            times[NO_CHECKPOINTS].append(time_lightning(cfg, bare=False, checkpoints=False))
        if ONE_STEP in loops:
            times[ONE_STEP].append(time_lightning(OmegaConf.merge(cfg, {"fused_steps": 1}), bare=False))
    return {loop: statistics.median(values) for loop, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES) + list(TINY))
    parser.add_argument("--tiny", action="store_true", help="tiny models on data=digits: checks the benchmark runs")
    parser.add_argument("--breakdown", action="store_true",
                        help="also the pipeline without its checkpoints, and with one step per call")
    parser.add_argument("--accelerators", nargs="+", default=["cpu", "gpu"], choices=["cpu", "gpu"],
                        help="where to measure (gpu only where CUDA is present)")
    args = parser.parse_args()
    cases = list(TINY) if args.tiny else args.cases
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{open('/proc/loadavg').read().split()[0]}")
    accelerators = [a for a in args.accelerators if a == "cpu" or torch.cuda.is_available()]
    with tempfile.TemporaryDirectory() as scratch, initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for accelerator in accelerators:
            for name in cases:
                overrides = {**CASES, **TINY}[name]
                cfg = compose("config", overrides=[*overrides, f"trainer.max_epochs={args.epochs}", "logger=csv",
                                                   f"paths.output_dir={scratch}/{name}",
                                                   f"trainer.accelerator={accelerator}"])
                loops = LOOPS + ((NO_CHECKPOINTS, ONE_STEP) if args.breakdown else ())
                seconds = measure(cfg, args.repeats, loops)
                images = len(build_data(cfg).splits["train"][1]) * args.epochs
                parts = [f"{loop} {images / seconds[loop]:.0f} img/s ({seconds[loop] / args.epochs:.3g} s/epoch)"
                         for loop in loops]
                label = name if accelerator == "cpu" else f"{name} [gpu]"
                ratios = "".join(f", ratio {loop.replace('bare lightning', 'bare')}/plain "
                                 f"{seconds['plain'] / seconds[loop]:.2f}" for loop in loops[1:])
                print(f"{label}: {', '.join(parts)}{ratios}")


if __name__ == "__main__":
    main()
