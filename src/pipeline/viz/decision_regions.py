"""Decision regions of a classifier on 2-D inputs (the toy sets): the class it predicts at every point of the plane,
which shows what its hidden units and activation carve out (straight pieces for relu, smooth curves for tanh)."""
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.viz import pyplot, save

STEPS = 300  # grid points per axis: 90,000 predictions, a few batched calls
MARGIN = 0.1  # share of the data's extent added on every side


def activation_name(model: nn.Module) -> str:
    """The name (as model configs spell it) of the first activation function in `model`; "" when it has none.
    By class name, so that the labs' own activations (modules=scratch: scratch.activations.Tanh) count too."""
    from pipeline.models.activations import ACTIVATIONS

    names = {kind.__name__: name for name, kind in ACTIVATIONS.items() if kind is not nn.Identity}
    return next((names[type(module).__name__] for module in model.modules() if type(module).__name__ in names), "")


def grid_axes(points: torch.Tensor, steps: int = STEPS, margin: float = MARGIN) -> tuple[torch.Tensor, torch.Tensor]:
    """Evenly spaced coordinates covering the points' bounding box and `margin` of its extent on every side."""
    low, high = points.min(dim=0).values, points.max(dim=0).values
    pad = (high - low).clamp(min=1e-3) * margin
    low, high = low - pad, high + pad
    return torch.linspace(low[0], high[0], steps), torch.linspace(low[1], high[1], steps)


@torch.no_grad()
def decision_regions(model: nn.Module, points: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                     steps: int = STEPS, batch_size: int = 32768) -> dict[str, np.ndarray]:
    """The predicted class at every point of a steps × steps grid over `points` (in the input space the model sees:
    the test inputs as the datamodule serves them), and the predictions of the points themselves. In eval mode,
    restored afterwards. Returns plain arrays: what save_regions writes and a sweep's parent reads back."""
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"decision regions need 2-D inputs, shape (N, 2); got {tuple(points.shape)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    xs, ys = grid_axes(points.float().cpu(), steps)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)  # row = y, column = x
    classes = torch.cat([model(chunk.to(device)).argmax(dim=-1).cpu() for chunk in grid.split(batch_size)])
    predictions = torch.cat([model(chunk.to(device)).argmax(dim=-1).cpu() for chunk in points.split(batch_size)])
    model.train(was_training)
    return {"xs": xs.numpy(), "ys": ys.numpy(), "classes": classes.reshape(steps, steps).numpy().astype(np.int16),
            "points": points.float().cpu().numpy(), "labels": labels.cpu().numpy().astype(np.int64),
            "predictions": predictions.numpy().astype(np.int64), "class_names": np.array(class_names, dtype=str),
            "model": np.array(type(model).__name__), "activation": np.array(activation_name(model))}


def accuracy(regions: dict) -> float:
    return float((regions["predictions"] == regions["labels"]).mean()) if len(regions["labels"]) else math.nan


def save_regions(regions: dict, path: Path) -> Path:
    np.savez_compressed(path, **regions)
    return path


def load_regions(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def title_of(regions: dict) -> str:
    """`MLP, tanh: test accuracy 0.9733` (the activation only where the model has one)."""
    model, activation = str(regions["model"]), str(regions["activation"])
    return f"{model}{', ' + activation if activation else ''}: test accuracy {accuracy(regions):.4f}"


def draw(axis, regions: dict, title: str, legend: bool = True) -> None:
    """Light class colours where the model predicts each class, black boundaries, the test points in their true
    class's colour (crosses: misclassified)."""
    from matplotlib.colors import ListedColormap, to_rgb

    names = list(regions["class_names"])
    colours = np.array([to_rgb(f"C{index % 10}") for index in range(len(names))])
    light = ListedColormap(0.3 * colours + 0.7)  # the class colour mixed with white
    xs, ys, classes = regions["xs"], regions["ys"], regions["classes"]
    axis.imshow(classes, cmap=light, vmin=-0.5, vmax=len(names) - 0.5, origin="lower", interpolation="nearest",
                extent=(xs[0], xs[-1], ys[0], ys[-1]), aspect="auto")
    if len(names) > 1:
        axis.contour(xs, ys, classes, levels=np.arange(len(names) - 1) + 0.5, colors="black", linewidths=0.8)
    points, labels = regions["points"], regions["labels"]
    wrong = regions["predictions"] != labels
    for index, name in enumerate(names):
        right_ones, wrong_ones = (labels == index) & ~wrong, (labels == index) & wrong
        axis.scatter(*points[right_ones].T, s=9, color=colours[index], edgecolors="white", linewidths=0.3,
                     label=f"class {name}" if name.isdigit() else name)
        axis.scatter(*points[wrong_ones].T, s=30, color=colours[index], marker="X", edgecolors="black",
                     linewidths=0.6)
    axis.scatter([], [], s=30, color="white", marker="X", edgecolors="black", label="misclassified")
    axis.set(xlim=(xs[0], xs[-1]), ylim=(ys[0], ys[-1]), xlabel="$x_1$", ylabel="$x_2$")
    axis.set_title(title, fontsize=9)
    if legend:
        axis.legend(fontsize=7, loc="upper right", framealpha=0.8)


def plot_decision_regions(regions: dict, path: Path, dpi: int = 110) -> Path:
    """One run's regions, titled with its model, activation and test accuracy."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 5.5))
    draw(axis, regions, title_of(regions))
    return save(figure, path, dpi)


def plot_region_panels(panels: list[tuple[str, dict]], path: Path, title: str = "", dpi: int = 110) -> Path:
    """Several runs' regions side by side (a sweep's children), each panel titled `<title>: test accuracy ...`."""
    plt = pyplot()
    columns = math.ceil(math.sqrt(len(panels)))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 4.4 * rows + 0.4), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.axis("off")
    for index, (axis, (name, regions)) in enumerate(zip(axes.flat, panels)):
        draw(axis, regions, f"{name}\ntest accuracy {accuracy(regions):.4f}", legend=index == 0)
    if title:
        figure.suptitle(title, fontsize=11)
    return save(figure, path, dpi)
