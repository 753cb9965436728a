"""What an autoencoder run is judged by: test inputs over their reconstructions, and where the test codes lie."""
from pathlib import Path

import numpy as np
import torch

from pipeline.viz import pyplot, save


def check_images(images: torch.Tensor, name: str) -> None:
    """Refuse anything but a non-empty (N, C, H, W) batch with one (grey) or three (RGB) channels, naming the shape."""
    if images.dim() != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"{name} must be a non-empty batch of images (N, C, H, W) with C = 1 or 3, "
                         f"got shape {tuple(images.shape)}")


def show_image(axis, image: torch.Tensor) -> None:
    """A (C, H, W) image in [0, 1], clamped but never rescaled, so a faint or overshooting reconstruction looks it."""
    image = image.detach().float().cpu().clamp(0, 1)
    if image.shape[0] == 1:
        axis.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        axis.imshow(image.permute(1, 2, 0).numpy())
    axis.set_xticks([])
    axis.set_yticks([])


def plot_reconstructions(inputs: torch.Tensor, outputs: torch.Tensor, path: Path, dpi: int = 110, count: int = 10,
                         title: str = "test inputs over their reconstructions") -> Path:
    """The first `count` inputs in the top row, each one's reconstruction below it."""
    check_images(inputs, "inputs")
    if outputs.shape != inputs.shape:
        raise ValueError(f"outputs must have the inputs' shape {tuple(inputs.shape)}, got {tuple(outputs.shape)}")
    count = min(count, len(inputs))
    figure, axes = pyplot().subplots(2, count, figsize=(count * 1.1 + 0.8, 2.8), squeeze=False)
    for column in range(count):
        show_image(axes[0, column], inputs[column])
        show_image(axes[1, column], outputs[column])
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("reconstruction", fontsize=8)
    figure.suptitle(title, fontsize=9)
    return save(figure, path, dpi)


def plot_codes_2d(codes: torch.Tensor, labels: torch.Tensor, class_names: list[str], path: Path, dpi: int = 110,
                  title: str = "test codes") -> Path:
    """The first 5000 codes coloured by class: 2-d as they are, wider ones by PCA, 1-d against the class on y."""
    if codes.dim() != 2 or labels.shape != codes.shape[:1]:
        raise ValueError(f"codes must be (N, D) and labels (N,), got {tuple(codes.shape)} and {tuple(labels.shape)}")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(class_names):
        raise ValueError(f"labels must lie in 0 .. {len(class_names) - 1} (one per class name), "
                         f"got {int(labels.min())} .. {int(labels.max())}")
    points, labels = codes[:5000].detach().float().cpu().numpy(), labels[:5000].cpu().numpy()
    size = points.shape[1]
    names = ("z1", "z2")
    if size == 1:
        points, names = np.column_stack([points[:, 0], labels]), ("z", "class")
    elif size > 2:
        from sklearn.decomposition import PCA  # imported here: scikit-learn costs a second to import

        points, names = PCA(n_components=2).fit_transform(points), ("PC 1", "PC 2")
        title += f" (PCA of {size}-d codes)"
    plt = pyplot()
    colours = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    figure, axis = plt.subplots(figsize=(7, 5.5))
    for index, name in enumerate(class_names):
        chosen = labels == index
        axis.scatter(points[chosen, 0], points[chosen, 1], s=5, alpha=0.7, color=colours(index % colours.N), label=name)
    if size == 1:
        axis.set_yticks(range(len(class_names)), class_names)
    axis.set(xlabel=names[0], ylabel=names[1], title=title)
    axis.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    return save(figure, path, dpi)
