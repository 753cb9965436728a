"""The plots of a trained classifier, the same for `python run.py` (MLflow artifacts) and `dvc repro`."""
from pathlib import Path

from omegaconf import DictConfig

from pipeline.viz.classification import classification_plots, predict
from pipeline.viz.network import network_plots


def model_plots(model, datamodule, viz: DictConfig, folder: Path) -> list[Path]:
    """Confusion matrix, misclassified images, and for CNNs filters, feature maps and saliency of the
    test example `viz.example`."""
    images, labels, predictions = predict(model, datamodule.test_dataloader())
    names = datamodule.class_names
    paths = classification_plots(images, labels, predictions, names, folder, viz.dpi)
    index = min(viz.example, len(images) - 1)
    return paths + network_plots(model, images[index], int(labels[index]), names, folder, viz.max_channels, viz.dpi)
