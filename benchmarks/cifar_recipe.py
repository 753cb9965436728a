"""The CIFAR-10 recipe's levers: the whole `python run.py experiment=cifar10_cnn` command, and the same with one
lever taken away at a time, each timed from start to exit with its test accuracy, all in this one session.

    PIPELINE_DATA_DIR=../shared/data python benchmarks/cifar_recipe.py              # every row: hours without AMX
    PIPELINE_DATA_DIR=../shared/data python benchmarks/cifar_recipe.py --rows recipe no_tta
    python benchmarks/cifar_recipe.py --quick ...   # 1 epoch on 1,000 images of a narrow net: checks it runs

Target (issue 15): the recipe ≥ 0.90 test accuracy in ≤ 10 minutes on 2 CPU cores (aim 0.93).
"""
import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each row: the overrides that take its lever away from the recipe.
ROWS = {
    "recipe": [],
    "no_tta": ["model.test_time_views=1"],  # the test image as it is, not 6 mirrored/shifted views
    "mirror_tta_only": ["model.test_time_views=2"],
    "no_weight_average": ["~callbacks.weight_average"],
    # airbench's Lookahead (the weights pulled back to their moving average every 5 steps) in the average's place
    "lookahead_instead": ["~callbacks.weight_average", "+callbacks.lookahead._target_=pipeline.lookahead.Lookahead"],
    # Nesterov SGD for the conv filters too, instead of Muon: the recipe before Muon (10 epochs), and at the recipe's
    "sgd_10_epochs": ["optimizer=momentum", "trainer.max_epochs=10"],
    "sgd_same_epochs": ["optimizer=momentum"],
    # Levers tried on top of the recipe: each image mirrored in every other epoch instead of at random; the first
    # epochs on 24x24 crops (progressive resizing: 0.56x the arithmetic per image there)
    "alternating_flips": ["data.flip=alternate"],
    "small_crops_first": ["data.small_crop_size=24", "data.small_crop_epochs=5"],
    # A narrower net for machines without AMX: blocks of 32, 192, 192 channels train 2x the images per second (0.48x
    # the multiply-adds), and 10 epochs of it take about what 5 of the recipe's net do
    "narrow_net": ["model.widths=[32,192,192]", "trainer.max_epochs=10"],
    "no_label_smoothing": ["task.label_smoothing=0"],
    "no_bias_scale": ["task.norm_bias_lr_scale=1"],  # the BatchNorm shifts at the others' learning rate
    "whitening_bias_always": ["model.whitening_bias_epochs=null"],  # trained every epoch, not the first 3 only
    "learned_first_layer": ["model.fit_whitening=false"],  # no whitening: the 2x2 conv learned like the others
    # The CNN recipe this one replaced: six 3x3 convs (32-128 channels), batch 256, one-cycle SGD, 11 epochs.
    "previous_cnn": ["model=cnn", "optimizer=momentum", "model.channels=[32,32,64,64,128,128]",
                     "model.pool_after=[1,3,5]", "regularization=batchnorm", "regularization.weight_decay=0.0005",
                     "optimizer.lr=0.2", "optimizer.momentum=0.9", "scheduler.pct_start=0.25",
                     "scheduler.div_factor=20", "scheduler.cycle_momentum=true", "scheduler.final_div_factor=200",
                     "data.batch_size=256", "data.crop_padding=4", "task.label_smoothing=0.1",
                     "~callbacks.weight_average", "trainer.max_epochs=11"],
}
QUICK = ["data.train_size=1000", "trainer.max_epochs=1", "data.batch_size=250"]
QUICK_WIDTHS = {"model=cnn": ["model.channels=[8,8,8,8,8,8]"], None: ["model.widths=[8,16,16]"]}


def timed(overrides: list[str], folder: Path) -> tuple[float, float]:
    """(seconds, test accuracy) of one whole `python run.py experiment=cifar10_cnn ...`."""
    command = [sys.executable, "run.py", "experiment=cifar10_cnn", *overrides, f"hydra.run.dir={folder}"]
    start = time.time()
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "PIPELINE_ROOT": str(folder.parent)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.time() - start
    found = re.search(r"test/acc=([0-9.]+)", result.stdout)
    if result.returncode != 0 or not found:
        sys.exit(f"{' '.join(overrides)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return seconds, float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--quick", action="store_true", help="1 epoch on 1,000 images of a narrow net")
    parser.add_argument("--keep", type=Path, help="keep each row's run folder (its MLflow store: per-epoch validation "
                        "accuracy) under this folder instead of a temporary one")
    parser.add_argument("overrides", nargs="*", help="run.py overrides for every row (after --)")
    args = parser.parse_args()
    print(f"load average {open('/proc/loadavg').read().split()[0]}, {os.cpu_count()} CPUs; "
          f"python run.py experiment=cifar10_cnn {' '.join(args.overrides)}")
    print(f"{'row':<20} {'seconds':>8} {'minutes':>8} {'test acc':>9}")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(args.keep.resolve()) if args.keep else tempfile.TemporaryDirectory() as scratch:
        for name in args.rows:
            overrides = ROWS[name] + args.overrides
            if args.quick:
                overrides += QUICK + QUICK_WIDTHS["model=cnn" if "model=cnn" in overrides else None]
            seconds, accuracy = timed(overrides, Path(scratch) / name)
            print(f"{name:<20} {seconds:>8.0f} {seconds / 60:>8.1f} {accuracy:>9.4f}", flush=True)


if __name__ == "__main__":
    main()
