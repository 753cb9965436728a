"""What a generative model makes: a grid of its samples, and its 2-d latent space decoded on a grid
(figure 4 of Kingma & Welling's VAE paper)."""
import math
from pathlib import Path
from typing import Callable

import torch

from pipeline.viz import pyplot, save
from pipeline.viz.reconstruction import check_images, show_image


def plot_image_grid(images: torch.Tensor, path: Path, dpi: int = 110, title: str = "", columns: int = 8) -> Path:
    """Images in [0, 1] (e.g. samples from a VAE's prior), `columns` a row, clamped but not rescaled."""
    check_images(images, "images")
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    figure, axes = pyplot().subplots(rows, columns, figsize=(columns * 1.1, rows * 1.1 + 0.4), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, images):
        show_image(axis, image)
    figure.suptitle(title, fontsize=9)
    return save(figure, path, dpi)


def manifold_latents(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The standard normal's quantiles at probabilities 0.05 .. 0.95 (evenly spaced in probability, so the grid
    covers where the prior puts its mass) and the steps² points (z1, z2) in tile order: z1 grows to the right,
    z2 grows upwards, so the first row is the top one."""
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, steps))
    z1, z2 = torch.meshgrid(quantiles, quantiles.flip(0), indexing="xy")
    return quantiles, torch.stack([z1.flatten(), z2.flatten()], dim=1)


def plot_manifold(decode: Callable[[torch.Tensor], torch.Tensor], path: Path, dpi: int = 110, steps: int = 15) -> Path:
    """Decode a steps × steps grid of 2-d latents in one call and tile the images into one picture."""
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    quantiles, z = manifold_latents(steps)
    with torch.no_grad():
        images = decode(z)
    check_images(images, "decode(z)")
    if len(images) != len(z):
        raise ValueError(f"decode(z) must return one image per latent point ({len(z)}), got {len(images)}")
    channels, height, width = images.shape[1:]
    tiled = images.reshape(steps, steps, channels, height, width).permute(2, 0, 3, 1, 4)
    figure, axis = pyplot().subplots(figsize=(7, 7))
    show_image(axis, tiled.reshape(channels, steps * height, steps * width))
    shown = range(0, steps, max(1, steps // 8))
    axis.set_xticks([i * width + width / 2 for i in shown], [f"{quantiles[i]:.2f}" for i in shown], fontsize=7)
    axis.set_yticks([i * height + height / 2 for i in shown], [f"{quantiles[-1 - i]:.2f}" for i in shown], fontsize=7)
    axis.set(xlabel="z1", ylabel="z2", title=f"decoded latent grid ({steps} × {steps}, normal quantiles 0.05 .. 0.95)")
    return save(figure, path, dpi)
