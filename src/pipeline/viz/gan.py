"""What a GAN's training looks like: grids of samples from one fixed noise batch, one per epoch, as PNG files and
an animated GIF (Pillow, no video encoder), and the judge's class histogram of the samples beside the real ones'."""
import math
from pathlib import Path

import numpy as np
import torch

from pipeline.viz import pyplot, save


def image_grid(images: torch.Tensor, columns: int = 8, padding: int = 2) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] tiled `columns` a row on a grey background: one uint8 (height, width, C)."""
    count, channels, height, width = images.shape
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    grid = torch.full((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), 128,
                      dtype=torch.uint8)
    pixels = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    for index, image in enumerate(pixels):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def to_picture(grid: torch.Tensor, scale: int = 2, caption: str = ""):
    """A PIL image of a grid, enlarged `scale` times without smoothing, with an optional caption bar on top."""
    from PIL import Image, ImageDraw

    array = grid.numpy()
    picture = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).convert("RGB")
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    if not caption:
        return picture
    framed = Image.new("RGB", (picture.width, picture.height + 16), "white")
    framed.paste(picture, (0, 16))
    ImageDraw.Draw(framed).text((4, 2), caption, fill="black")
    return framed


def write_grid(grid: torch.Tensor, path: Path, caption: str = "") -> Path:
    to_picture(grid, caption=caption).save(path)
    return path


def write_gif(grids: list[torch.Tensor], path: Path, milliseconds: int = 500) -> Path:
    """An animated GIF, one frame per grid (captioned with its epoch, counted from 1), looping, the last frame
    held three times as long."""
    frames = [to_picture(grid, caption=f"epoch {epoch}") for epoch, grid in enumerate(grids, 1)]
    durations = [milliseconds] * (len(frames) - 1) + [milliseconds * 3]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path


def plot_class_histogram(sampled: torch.Tensor, real: torch.Tensor, class_names, path: Path, dpi: int = 110,
                         title: str = "") -> Path:
    """The share of each class the judge predicts among the samples and among real test images: a generator that
    forgets classes (mode collapse) shows bars near zero."""
    count = len(class_names)
    shares = [torch.bincount(labels, minlength=count).double() / max(len(labels), 1) for labels in (sampled, real)]
    positions = np.arange(count)
    figure, axis = pyplot().subplots(figsize=(max(6, count * 0.7), 3.6))
    axis.bar(positions - 0.2, shares[0].numpy(), 0.4, label="generated")
    axis.bar(positions + 0.2, shares[1].numpy(), 0.4, label="real test")
    axis.set_xticks(positions, [str(name) for name in class_names], rotation=30 if count > 10 else 0, fontsize=8)
    axis.set(ylabel="share of images", title=title or "classes the judge sees")
    axis.legend(fontsize=8)
    return save(figure, path, dpi)
