"""The classification report the DVC evaluate stage writes: per-class scores and every test prediction."""
import csv
from pathlib import Path

import torch
from torchmetrics.functional.classification import multiclass_f1_score, multiclass_precision, multiclass_recall

from pipeline.files import write_atomically


def per_class(labels: torch.Tensor, predictions: torch.Tensor, class_names: list[str]) -> dict:
    n = len(class_names)
    scores = {"precision": multiclass_precision(predictions, labels, n, average=None),
              "recall": multiclass_recall(predictions, labels, n, average=None),
              "f1": multiclass_f1_score(predictions, labels, n, average=None)}
    support = torch.bincount(labels, minlength=n)
    return {name: {**{key: round(float(values[i]), 6) for key, values in scores.items()}, "support": int(support[i])}
            for i, name in enumerate(class_names)}


def write_predictions(path: Path, labels, predictions, class_names: list[str]) -> Path:
    """actual,predicted per test example, by class name."""
    def write(partial: Path) -> None:
        with open(partial, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["actual", "predicted"])
            writer.writerows((class_names[a], class_names[p]) for a, p in zip(labels.tolist(), predictions.tolist()))

    return write_atomically(path, write)
