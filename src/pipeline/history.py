"""A Lightning logger that keeps one row per epoch (train and validation metrics side by side): the training
history the DVC train stage writes as a plots file."""
import csv
from pathlib import Path

from pytorch_lightning import Callback
from pytorch_lightning.loggers import Logger


class EpochHistory(Logger):
    """Collects what the task logs per epoch; per-step values (`*_step`) are left out."""

    def __init__(self):
        super().__init__()
        self.rows: dict[int, dict[str, float]] = {}

    @property
    def name(self) -> str:
        return "history"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if "epoch" not in metrics:
            return
        row = self.rows.setdefault(int(metrics["epoch"]) + 1, {})  # epochs completed: 1, 2, ...
        row.update({key: float(value) for key, value in metrics.items() if not key.endswith("_step")})

    def write_csv(self, path: Path) -> Path:
        """epoch (1, 2, ...) first, then the metrics in name order; an empty cell where an epoch lacks one."""
        columns = ["epoch"] + sorted({key for row in self.rows.values() for key in row} - {"epoch"})
        with open(path, "w", newline="") as file:
            writer = csv.DictWriter(file, columns)
            writer.writeheader()
            for epoch in sorted(self.rows):
                writer.writerow({**self.rows[epoch], "epoch": epoch})
        return path


class HistoryInCheckpoints(Callback):
    """Keeps an EpochHistory's rows in checkpoints: a resumed train stage still writes every epoch's row."""

    def __init__(self, history: EpochHistory):
        self.history = history

    def state_dict(self) -> dict:
        return {"rows": self.history.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history.rows = dict(state_dict["rows"])


def read_history(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as file:
        return [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(file)]
