"""Classification: a loss on class scores (cross-entropy, hinge or squared: task.loss), accuracy and macro-F1 per
stage; wraps any nn.Module that outputs one score per class."""
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from pipeline.checks import model_name
from pipeline.errors import ConfigError
from pipeline.tasks.base import EVALUATED, Task
from pipeline.tasks.losses import LOSSES


def loss_function(name: str, implementations=None):
    """The function computing loss `name`: the one conf/modules/ names for it (modules=scratch: the labs' own), or
    torch's (tasks/losses.py)."""
    path = (implementations or {}).get(name)
    if path is None:
        return LOSSES[name]
    from pipeline.imports import import_object

    return import_object(path, f"modules.losses.{name}")


class Classifier(Task):
    """Trains `model` with the given optimizer (a partial awaiting parameters) and optional LR scheduler.

    Metrics are logged per epoch as `train/loss`, `val/acc`, `val/acc_best`, `val/f1_macro`, `val/f1_macro_best`,
    `test/acc`, ... (the `_best` ones are the best epoch so far: what a sweep ranks its runs by).
    Macro-F1 (the mean of per-class F1) is reported for val and test: on imbalanced data it shows what accuracy
    hides, a model that ignores the small classes. The loss weighs classes as the datamodule's
    `class_weights()` says (data.class_weighting), if it has that method.
    """

    name = "classify"
    losses = tuple(LOSSES)
    best_of = {"val/acc": "max", "val/f1_macro": "max"}

    def __init__(self, model: nn.Module, optimizer, num_classes: int, scheduler=None,
                 log_every_step: bool = False, label_smoothing: float = 0.0, channels_last: bool = False,
                 loss: str = "cross_entropy", monitor: str = "val/acc", mode: str = "max", loss_functions=None,
                 norm_bias_lr_scale: float = 1.0):
        super().__init__(model, optimizer, scheduler, monitor, mode, log_every_step)
        if not (isinstance(norm_bias_lr_scale, (int, float)) and norm_bias_lr_scale > 0):
            raise ConfigError(f"task.norm_bias_lr_scale={norm_bias_lr_scale} is invalid: must be a number > 0")
        self.norm_bias_lr_scale = float(norm_bias_lr_scale)
        if loss == "hinge" and label_smoothing:
            raise ConfigError(f"task.label_smoothing={label_smoothing} does not apply to task.loss=hinge (a margin "
                              "loss has no target distribution to smooth): set it to 0 or pick another loss")
        self.loss_name = loss
        self.loss_function = loss_function(loss, loss_functions)
        # channels_last: convolutions on CPU (oneDNN) and tensor cores run ~25% faster in NHWC layout.
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.label_smoothing = label_smoothing
        # Filled from the training split's class counts in setup(); a buffer, so it moves with the model.
        self.register_buffer("class_weight", None, persistent=False)
        self.acc = nn.ModuleDict({stage: MulticlassAccuracy(num_classes, average="micro") for stage in EVALUATED})
        self.f1 = nn.ModuleDict({stage: MulticlassF1Score(num_classes, average="macro") for stage in EVALUATED})
        self.test_predicted: list[torch.Tensor] = []  # the last test run's predicted classes, batch by batch

    def val_metric(self, key: str):
        return {"val/acc": self.acc["val_"], "val/f1_macro": self.f1["val_"]}[key]

    def _step(self, batch, stage: str):
        x, y = batch
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.model(x)
        loss = self.loss(logits, y)
        self.log_loss(stage, loss, len(y), prog_bar=stage != "train")
        if stage == "train":  # no F1: a per-step update would cost time for a number nobody reads
            self.add_to_epoch_mean("train/acc", (logits.argmax(dim=-1) == y).float().mean(), len(y), prog_bar=True)
            return loss
        if stage == "test":
            self.test_predicted.append(logits.argmax(dim=-1).cpu())
        self.log_epoch_metric(f"{stage}/acc", self.acc[stage + "_"], logits, y, prog_bar=True)
        self.log_epoch_metric(f"{stage}/f1_macro", self.f1[stage + "_"], logits, y)
        return loss

    def loss(self, logits, y):
        """The configured loss (task.loss) with the class weights and label smoothing."""
        return self.loss_function(logits, y, weight=self.class_weight, label_smoothing=self.label_smoothing)

    def setup(self, stage: str) -> None:
        weights = getattr(self.trainer.datamodule, "class_weights", None)
        if weights is not None and self.class_weight is None:
            self.class_weight = weights()

    def on_test_epoch_start(self) -> None:
        self.test_predicted = []

    def test_predictions(self, datamodule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The test split's inputs, labels and predicted classes: the test run's own predictions when it has just
        run (the same weights and precision as test/acc; a CIFAR-10 test split costs seconds to predict again),
        else predicted now."""
        from pipeline.viz.classification import predict

        batches = datamodule.test_dataloader()
        if self.test_predicted:
            inputs, labels = (torch.cat(parts) for parts in zip(*batches))
            predictions = torch.cat(self.test_predicted)
            if len(predictions) == len(labels):
                return inputs, labels, predictions
        return predict(self.model, batches)

    @torch.no_grad()
    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.model(x).argmax(dim=-1)

    # --- what the pipeline asks of the task ---------------------------------------------------------
    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        if cfg.data.get("num_classes", "absent") == "absent":
            raise ConfigError(f"task=classify needs labelled data (data.num_classes): data={cfg.data.name} has no "
                              "classes; its task is " + ("embed" if "window" in cfg.data else "another one"))

    @classmethod
    def check_model(cls, model: nn.Module, inputs: torch.Tensor, cfg: DictConfig) -> None:
        out = model(inputs)
        expected = (len(inputs), cfg.data.num_classes)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            shape = list(out.shape)[1:] if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"model {model_name(cfg)} outputs {shape} for data={cfg.data.name}, which needs "
                              f"{cfg.data.num_classes} class logits (task=classify)")

    def plots(self, datamodule, viz: DictConfig, folder: Path) -> list[Path]:
        """Confusion matrix, misclassified images; for CNNs the first layer's filters and feature maps of the test
        example `viz.example`; for image inputs explanations (saliency, integrated gradients, Grad-CAM) of four
        test images from there, with the deletion test and sanity check on `viz.explain_images` test images
        (explanations.json);
        for points in the plane (the toy sets) the decision regions (decision_regions.png)."""
        from pipeline.viz.classification import classification_plots
        from pipeline.viz.explanations import explanation_files
        from pipeline.viz.network import network_plots

        images, labels, predictions = self.test_predictions(datamodule)
        paths = classification_plots(images, labels, predictions, datamodule.class_names, folder, viz.dpi)
        index = min(viz.example, len(images) - 1)
        paths += network_plots(self.model, images[index], folder, viz.max_channels, viz.dpi)
        if images.dim() == 4 and images.is_floating_point():
            shown = range(index, index + 4)
            paths += explanation_files(self.model, datamodule, folder, shown, sample=viz.explain_images,
                                       steps=viz.explain_steps, dpi=viz.dpi)[1]
        regions = self.decision_regions(images, labels, datamodule.class_names)
        if regions is not None:
            from pipeline.viz.decision_regions import plot_decision_regions

            paths.append(plot_decision_regions(regions, folder / "decision_regions.png", viz.dpi))
        return paths

    def decision_regions(self, inputs: torch.Tensor, labels: torch.Tensor, class_names) -> dict | None:
        """For points in the plane (inputs of shape [2], as the model sees them): the predicted class over a grid
        around the test inputs (viz/decision_regions.py); None for any other input."""
        if inputs.dim() != 2 or inputs.shape[1] != 2 or not inputs.is_floating_point():
            return None
        from pipeline.viz.decision_regions import decision_regions

        return decision_regions(self.model, inputs, labels, list(class_names))

    def evaluation(self, datamodule, folder: Path) -> tuple[dict, list[Path]]:
        """Per-class precision, recall and F1, and every test example's actual and predicted class
        (predictions.csv: the data of DVC's confusion-matrix plot); for points in the plane the decision regions'
        grid (decision_regions.npz: what a sweep's parent draws its runs side by side from)."""
        from pipeline.tasks.classify_report import per_class, write_predictions

        inputs, labels, predictions = self.test_predictions(datamodule)
        names = datamodule.class_names
        files = [write_predictions(folder / "predictions.csv", labels, predictions, names)]
        regions = self.decision_regions(inputs, labels, names)
        if regions is not None:
            from pipeline.viz.decision_regions import save_regions

            files.append(save_regions(regions, folder / "decision_regions.npz"))
        return {"per_class": per_class(labels, predictions, names)}, files

    def exported(self, datamodule) -> tuple[nn.Module, torch.Tensor, dict]:
        """The model itself: inputs as the data serves them, one score per class."""
        return self.model, next(iter(datamodule.test_dataloader()))[0][:8], {}
