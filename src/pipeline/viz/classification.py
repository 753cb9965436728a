"""What a user checks after a classification run: the confusion matrix and the test images the model got wrong."""
from pathlib import Path

import torch

from pipeline.viz import pyplot, save


@torch.no_grad()
def predict(model: torch.nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, labels and predicted classes over a whole split, in eval mode."""
    model.eval()
    inputs, labels, predictions = [], [], []
    for x, y in batches:
        inputs.append(x)
        labels.append(y)
        predictions.append(model(x).argmax(dim=-1))
    return torch.cat(inputs), torch.cat(labels), torch.cat(predictions)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Row = true class, column = predicted class."""
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes**2).view(num_classes, num_classes)


def plot_confusion_matrix(matrix: torch.Tensor, class_names: list[str], path: Path, dpi: int = 110) -> Path:
    plt = pyplot()
    n = len(matrix)
    figure, axis = plt.subplots(figsize=(max(5, 0.55 * n + 2), max(4, 0.5 * n + 1.5)))
    image = axis.imshow(matrix.numpy(), cmap="Blues")
    figure.colorbar(image, ax=axis)
    axis.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true",
             title=f"confusion matrix (test accuracy {matrix.diag().sum().item() / max(1, matrix.sum().item()):.4f})")
    axis.set_xticklabels(class_names, rotation=45, ha="right")
    axis.set_yticklabels(class_names)
    if n <= 20:
        limit = matrix.max().item() / 2
        for i in range(n):
            for j in range(n):
                axis.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                          color="white" if matrix[i, j] > limit else "black")
    return save(figure, path, dpi)


def plot_misclassified(images: torch.Tensor, labels, predictions, class_names: list[str], path: Path,
                       limit: int = 36, dpi: int = 110) -> Path | None:
    """A grid of up to `limit` wrongly classified images, each titled `true → predicted`. Images are min-max scaled
    per image for display, so this works whatever normalisation the data used. Drawn as one mosaic image on one
    axis: a matplotlib axis per image costs ~10x more to lay out and render."""
    wrong = (labels != predictions).nonzero().flatten()[:limit]
    if len(wrong) == 0:
        return None
    plt = pyplot()
    columns = 6
    rows = (len(wrong) + columns - 1) // columns
    shown = images[wrong].float()
    low = shown.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
    high = shown.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    shown = (shown - low) / (high - low + 1e-8)
    channels, height, width = shown.shape[1:]
    gap = max(1, height // 8)
    corners = [((slot // columns) * (height + 3 * gap) + 2 * gap, (slot % columns) * (width + gap))
               for slot in range(len(wrong))]  # each image's top left, below room for its title
    mosaic = torch.ones(channels, rows * (height + 3 * gap), columns * (width + gap))
    for (top, left), image in zip(corners, shown):
        mosaic[:, top : top + height, left : left + width] = image
    figure, axis = plt.subplots(figsize=(columns * 1.6, rows * 1.8))
    axis.imshow(mosaic[0].numpy() if channels == 1 else mosaic.permute(1, 2, 0).numpy(), cmap="gray",
                vmin=0, vmax=1, interpolation="nearest")
    for (top, left), index in zip(corners, wrong.tolist()):
        axis.text(left + width / 2, top - gap / 2, f"{class_names[labels[index]]} → {class_names[predictions[index]]}",
                  ha="center", va="bottom", fontsize=7)
    axis.axis("off")
    figure.subplots_adjust(left=0, right=1, bottom=0, top=1)  # one image, its titles inside it: no layout to measure
    return save(figure, path, dpi, tight=False)


def classification_plots(images, labels, predictions, class_names: list[str], folder: Path,
                         dpi: int = 110) -> list[Path]:
    """Write the confusion matrix (every run) and the misclassified grid (image data) of the test split."""
    matrix = confusion_matrix(labels, predictions, len(class_names))
    paths = [plot_confusion_matrix(matrix, class_names, folder / "confusion_matrix.png", dpi)]
    if images.dim() == 4:
        grid = plot_misclassified(images, labels, predictions, class_names, folder / "misclassified.png", dpi=dpi)
        if grid is not None:
            paths.append(grid)
    return paths
