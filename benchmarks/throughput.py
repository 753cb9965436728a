"""Training throughput of the pipeline against a plain PyTorch loop: same model, data, batch size, optimizer,
schedule, augmentation, loss, precision and memory layout, measured side by side in one process.

    PIPELINE_DATA_DIR=../shared/data python benchmarks/throughput.py [--epochs 1] [--repeats 2] [--threads N]
    python benchmarks/throughput.py --tiny    # seconds, offline (data=digits): checks the benchmark still runs

Prints images/s and seconds per epoch for both and their ratio (pipeline / plain; 1.0 = no overhead).
"""
import argparse
import logging
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from pipeline.models.building import build_network

CONF = Path(__file__).resolve().parents[1] / "conf"
CASES = {"mnist_mlp": ["experiment=mnist_mlp"], "cifar10_cnn": ["experiment=cifar10_cnn"]}
# The same code paths as the real cases (epoch and step schedules, dropout, BatchNorm, label smoothing, class
# weights, channels_last, bf16) on the bundled digits with tiny models.
TINY = {
    "digits_mlp": ["data=digits", "model=mlp", "model.hidden=[32]", "regularization=dropout", "scheduler=cosine"],
    "digits_cnn": ["data=digits", "model=cnn", "model.channels=[8,16]", "model.pool_after=[1]",
                   "regularization=batchnorm", "optimizer=momentum", "scheduler=onecycle", "task.label_smoothing=0.1",
                   "task.channels_last=true", "+data.class_weighting=balanced", "+trainer.precision=bf16-mixed"],
}
QUIET = ["logger=none", "callbacks=none", "+trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false",
         "+trainer.limit_val_batches=0", "+trainer.num_sanity_val_steps=0", "paths.output_dir=/tmp/pipeline-bench"]


def build(cfg):
    """Fresh, identically seeded objects for one measurement."""
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    model = build_network(cfg.model)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    task = instantiate(cfg.task, model=model, optimizer=instantiate(cfg.optimizer), scheduler=scheduler)
    return datamodule, task


def time_pipeline(cfg) -> float:
    datamodule, task = build(cfg)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    return time.perf_counter() - start


def time_plain_loop(cfg) -> float:
    """What a student would write: the same objects, driven by hand."""
    datamodule, task = build(cfg)
    model = task.model
    if hasattr(datamodule, "class_weights"):  # what Classifier.setup does when the trainer attaches the data
        task.class_weight = datamodule.class_weights()
    optimizer = instantiate(cfg.optimizer)(params=model.parameters())
    batches = datamodule.train_dataloader()
    scheduler = None
    if cfg.get("scheduler"):
        partial = instantiate(cfg.scheduler)
        one_cycle = partial.func is torch.optim.lr_scheduler.OneCycleLR
        scheduler = partial(optimizer, total_steps=len(batches) * cfg.trainer.max_epochs) if one_cycle else partial(optimizer)
    bf16 = str(cfg.trainer.get("precision", "32")).startswith("bf16")
    # As the Trainer sets it (trainer.deterministic), which otherwise stays set for all later plain runs but the first.
    torch.use_deterministic_algorithms(bool(cfg.trainer.get("deterministic")))
    model.train()
    start = time.perf_counter()
    for _ in range(cfg.trainer.max_epochs):
        for x, y in batches:
            if hasattr(datamodule, "augment"):
                x = datamodule.augment(x)
            if task.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = task.loss(model(x), y)  # the task's loss function: task.loss, weights, smoothing
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None and one_cycle:
                scheduler.step()
        if scheduler is not None and not one_cycle:
            scheduler.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES) + list(TINY))
    parser.add_argument("--tiny", action="store_true", help="tiny models on data=digits: checks the benchmark runs")
    args = parser.parse_args()
    cases = list(TINY) if args.tiny else args.cases
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{open('/proc/loadavg').read().split()[0]}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in cases:
            overrides = {**CASES, **TINY}[name]
            cfg = compose("config", overrides=[*overrides, f"trainer.max_epochs={args.epochs}", *QUIET])
            best = {"plain": float("inf"), "pipeline": float("inf")}
            for _ in range(args.repeats):  # alternate, keep the best of each: the machine is noisy
                best['plain'] = min(best["plain"], time_plain_loop(cfg))
                best['pipeline'] = min(best["pipeline"], time_pipeline(cfg))
            datamodule, _ = build(cfg)
            images = len(datamodule.splits["train"][1]) * args.epochs
            rate = {kind: images / seconds for kind, seconds in best.items()}
            print(f"{name}: plain {rate['plain']:.0f} img/s ({best['plain'] / args.epochs:.3g} s/epoch), "
                  f"pipeline {rate['pipeline']:.0f} img/s ({best['pipeline'] / args.epochs:.3g} s/epoch), "
                  f"ratio pipeline/plain {rate['pipeline'] / rate['plain']:.2f}")


if __name__ == "__main__":
    main()
