"""What a convolutional network looks at: its first-layer filters, the feature maps they make of one example,
and a saliency map (which input pixels move the predicted class's score most)."""
import math
from pathlib import Path

import torch
from torch import nn

from pipeline.viz import pyplot, save


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((module for module in model.modules() if isinstance(module, nn.Conv2d)), None)


def _scaled(image: torch.Tensor) -> torch.Tensor:
    """Min-max scaled to [0, 1] for display: filters and activations have no natural range."""
    image = image.detach().float()
    return (image - image.min()) / (image.max() - image.min() + 1e-8)


def _show(axis, image: torch.Tensor, cmap: str = "gray") -> None:
    """A (C, H, W) image: grey for one channel, colour for three, the channel mean otherwise."""
    if image.shape[0] == 3:
        axis.imshow(_scaled(image).permute(1, 2, 0).numpy())
    else:
        axis.imshow(_scaled(image.mean(0)).numpy(), cmap=cmap)
    axis.axis("off")


def _grid(images: torch.Tensor, title: str, path: Path, dpi: int, cmap: str = "gray") -> Path:
    plt = pyplot()
    columns = min(8, len(images))
    rows = math.ceil(len(images) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.2 + 0.5), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, images):
        _show(axis, image, cmap)
    figure.suptitle(title, fontsize=9)
    return save(figure, path, dpi)


def plot_filters(conv: nn.Conv2d, path: Path, limit: int, dpi: int = 110) -> Path:
    weights = conv.weight[:limit]
    return _grid(weights, f"first-layer filters ({len(weights)} of {conv.out_channels}, "
                          f"{conv.kernel_size[0]}x{conv.kernel_size[1]})", path, dpi)


@torch.no_grad()
def plot_feature_maps(model: nn.Module, conv: nn.Conv2d, example: torch.Tensor, path: Path, limit: int,
                      dpi: int = 110) -> Path:
    """The first conv layer's output channels for one example (captured with a forward hook)."""
    captured = []
    hook = conv.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        model.eval()
        model(example.unsqueeze(0))
    finally:
        hook.remove()
    maps = captured[0][0, :limit].unsqueeze(1)
    return _grid(maps, f"first-layer feature maps of test example ({len(maps)} of {conv.out_channels})", path,
                 dpi, cmap="viridis")


def saliency(model: nn.Module, example: torch.Tensor) -> tuple[torch.Tensor, int]:
    """|d score(predicted class) / d input|, the maximum over channels, and the predicted class."""
    model.eval()
    x = example.unsqueeze(0).clone().requires_grad_(True)
    scores = model(x)
    predicted = int(scores.argmax(dim=-1))
    scores[0, predicted].backward()
    return x.grad[0].abs().amax(dim=0), predicted


def plot_saliency(model: nn.Module, example: torch.Tensor, label: int, class_names: list[str], path: Path,
                  dpi: int = 110) -> Path:
    heat, predicted = saliency(model, example)
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(6, 3.2))
    _show(left, example)
    left.set_title(f"test example: {class_names[label]}", fontsize=9)
    right.imshow(heat.numpy(), cmap="hot")
    right.axis("off")
    right.set_title(f"saliency for predicted {class_names[predicted]}", fontsize=9)
    return save(figure, path, dpi)


def network_plots(model: nn.Module, example: torch.Tensor, label: int, class_names: list[str], folder: Path,
                  max_channels: int, dpi: int = 110) -> list[Path]:
    """Filters, feature maps and saliency of a model with a convolution on image input; nothing otherwise."""
    conv = first_conv(model)
    if conv is None or example.dim() != 3:
        return []
    return [plot_filters(conv, folder / "filters.png", max_channels, dpi),
            plot_feature_maps(model, conv, example, folder / "feature_maps.png", max_channels, dpi),
            plot_saliency(model, example, label, class_names, folder / "saliency.png", dpi)]
