"""What a convolutional network's first layer does: its filters and the feature maps they make of one example
(what the network attends to, saliency and the rest, is in viz/explanations.py)."""
import math
from pathlib import Path

import torch
from torch import nn

from pipeline.models.parts import is_convolution
from pipeline.viz import pyplot, save


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((module for module in model.modules() if is_convolution(module)), None)


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


def network_plots(model: nn.Module, example: torch.Tensor, folder: Path, max_channels: int,
                  dpi: int = 110) -> list[Path]:
    """Filters and feature maps of a model with a convolution on image input; nothing otherwise."""
    conv = first_conv(model)
    if conv is None or example.dim() != 3:
        return []
    return [plot_filters(conv, folder / "filters.png", max_channels, dpi),
            plot_feature_maps(model, conv, example, folder / "feature_maps.png", max_channels, dpi)]
