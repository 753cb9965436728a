"""Stage 3: test the trained model; write the test metrics (accuracy, loss, macro-F1 and per class) and every
test example's actual and predicted class (the confusion matrix's data, a DVC plots file)."""
import csv

import torch
from omegaconf import DictConfig
from torchmetrics.functional.classification import multiclass_f1_score, multiclass_precision, multiclass_recall

from pipeline import tracking
from pipeline.cli import run_stage
from pipeline.stages.outputs import (CHECKPOINT, METRICS, PREDICTIONS, load_prepared, pipeline_run_continued,
                                     write_atomically, write_json)
from pipeline.train import build_data, build_task, build_trainer, metrics_of, start
from pipeline.viz.classification import predict


def per_class(labels: torch.Tensor, predictions: torch.Tensor, class_names: list[str]) -> dict:
    n = len(class_names)
    scores = {"precision": multiclass_precision(predictions, labels, n, average=None),
              "recall": multiclass_recall(predictions, labels, n, average=None),
              "f1": multiclass_f1_score(predictions, labels, n, average=None)}
    support = torch.bincount(labels, minlength=n)
    return {name: {**{key: round(float(values[i]), 6) for key, values in scores.items()}, "support": int(support[i])}
            for i, name in enumerate(class_names)}


def write_predictions(path, labels, predictions, class_names: list[str]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["actual", "predicted"])
        writer.writerows((class_names[a], class_names[p]) for a, p in zip(labels.tolist(), predictions.tolist()))


def evaluate(cfg: DictConfig) -> None:
    start(cfg)
    datamodule = build_data(cfg, prepared=load_prepared())
    task = build_task(cfg, datamodule)
    with pipeline_run_continued() as mlflow_run:
        trainer = build_trainer(cfg, mlflow_run)
        trainer.test(task, datamodule=datamodule, ckpt_path=str(CHECKPOINT), verbose=False)
        test = {key.removeprefix("test/"): round(value, 6) for key, value in metrics_of(trainer).items()
                if key.startswith("test/")}
        _, labels, predictions = predict(task.model, datamodule.test_dataloader())
        names = datamodule.class_names
        # Test metrics at the top (DVC lists keys in name order: acc, f1_macro, loss, then per_class).
        write_json(METRICS, {**test, "per_class": per_class(labels, predictions, names)})
        write_atomically(PREDICTIONS, lambda partial: write_predictions(partial, labels, predictions, names))
        if mlflow_run is not None:
            tracking.log_files(mlflow_run.info.run_id, [METRICS, PREDICTIONS], "dvc/evaluate")
    print("evaluated: " + "  ".join(f"test/{key}={value:.4f}" for key, value in sorted(test.items()))
          + f" -> {METRICS}, {PREDICTIONS}")


if __name__ == "__main__":
    run_stage(evaluate)
