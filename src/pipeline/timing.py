"""Where a run's time goes: wall-clock phases of train.run and the start of every epoch, written as JSON to the
file the environment variable PIPELINE_TIMINGS names (benchmarks/overhead.py sets it). Without it nothing is
written; recording a phase costs two clock reads."""
import json
import os
import time
from contextlib import contextmanager

import pytorch_lightning as pl

TIMINGS_ENV = "PIPELINE_TIMINGS"

phases: list[tuple[str, float, float]] = []  # (name, start, end), time.time() seconds
epochs: list[float] = []  # when each training epoch started; the last entry is when fitting ended


def reset() -> None:
    """Forget an earlier run's times (a sweep runs many in one process)."""
    phases.clear()
    epochs.clear()


@contextmanager
def phase(name: str):
    start = time.time()
    try:
        yield
    finally:
        phases.append((name, start, time.time()))


class EpochClock(pl.Callback):
    """Times the epochs (each training epoch with its validation) and the first step, separating what a longer
    run pays per epoch from what every run pays once. Where the task takes several steps per call (fused_steps)
    the "first step" is the first call's."""

    sees_groups = True  # its per-step hook only reads the clock: steps may be taken several per call

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        epochs.append(time.time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= 1 and not any(name == "first step" for name, _, _ in phases):
            phases.append(("first step", epochs[0], time.time()))

    def on_fit_end(self, trainer, pl_module) -> None:
        epochs.append(time.time())


def clock_callbacks() -> list[pl.Callback]:
    return [EpochClock()] if os.environ.get(TIMINGS_ENV) else []


def write() -> None:
    path = os.environ.get(TIMINGS_ENV)
    if path:
        with open(path, "w") as handle:
            json.dump({"phases": phases, "epochs": epochs}, handle)
