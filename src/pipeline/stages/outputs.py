"""Where the stages write: the files dvc.yaml declares as outs, metrics and plots (relative to the project)."""
import json
from pathlib import Path

from pipeline.files import write_atomically, write_json  # the stages import them from here too

RESULTS = Path("results")
PREPARED = RESULTS / "prepare" / "data.pt"  # the splits as tensors, and the class names
CHECKPOINT = RESULTS / "train" / "model.ckpt"  # the best validation checkpoint
HISTORY = RESULTS / "train" / "history.csv"  # one row of metrics per epoch
RUN = RESULTS / "train" / "mlflow_run.json"  # the MLflow run of this pipeline run, which later stages add to
METRICS = RESULTS / "evaluate" / "metrics.json"
DETAILS = RESULTS / "evaluate" / "details"  # the task's files (classify: predictions.csv, actual,predicted)
PLOTS = RESULTS / "visualize"


def pipeline_run_continued():
    """The MLflow run the train stage started (its id is in RUN), reopened for a later stage to add to;
    nothing when the pipeline runs without MLflow (logger=none)."""
    import contextlib

    from pipeline import tracking

    run = json.loads(RUN.read_text())
    if not run["run_id"]:
        return contextlib.nullcontext()
    return tracking.resumed_run(run["tracking_uri"], run["run_id"])


def save_torch(path: Path, values) -> Path:
    """torch.save through a file object: the archive inside is then named the same whatever the file is
    called, so equal values give equal bytes and DVC sees an unchanged output as unchanged."""
    import torch

    def write(partial: Path) -> None:
        with open(partial, "wb") as file:
            torch.save(values, file)

    return write_atomically(path, write)


def load_prepared() -> dict:
    """The prepare stage's splits, or a clear error when a stage is run before it."""
    import torch

    from pipeline.errors import ConfigError

    if not PREPARED.exists():
        raise ConfigError(f"{PREPARED} not found: run `dvc repro` (its prepare stage writes it)")
    return torch.load(PREPARED, weights_only=False)


def load_weights(task) -> None:
    """Put the train stage's best checkpoint into `task` (a LightningModule built from the same config)."""
    import torch

    from pipeline.errors import ConfigError

    if not CHECKPOINT.exists():
        raise ConfigError(f"{CHECKPOINT} not found: run `dvc repro` (its train stage writes it)")
    task.load_state_dict(torch.load(CHECKPOINT, weights_only=False)["state_dict"])
