"""Pieces the image models share: the input check, measuring the feature extractor, and the two kinds of head."""
import torch
from torch import nn

from pipeline.models.activations import activation as make_activation


def image_shape(model_name: str, input_shape) -> tuple[int, int, int]:
    """(channels, height, width) as ints, or a clear error for data that isn't images."""
    if len(input_shape) != 3:
        raise ValueError(f"model {model_name} needs image inputs (channels, height, width); "
                         f"got input_shape {list(input_shape)}")
    return tuple(int(d) for d in input_shape)


@torch.no_grad()
def output_shape(features: nn.Module, shape) -> torch.Size:
    """Run one dummy image through `features` (in eval mode, so BatchNorm's running stats stay as they are)."""
    out = features.eval()(torch.zeros(1, *shape)).shape[1:]
    features.train()
    return out


def fully_connected_head(in_features: int, widths, num_classes: int, activation: str, dropout: float) -> nn.Sequential:
    """Flatten, then per width: [Dropout] → Linear → activation; then [Dropout] → the classifier."""
    layers = [nn.Flatten()]
    for out_features in widths:
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(in_features, out_features), make_activation(activation)]
        in_features = out_features
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


class GlobalAveragePool(nn.Module):
    """Mean over height and width. Not nn.AdaptiveAvgPool2d: its CUDA backward has no deterministic
    implementation, so it fails under the trainer's deterministic=true."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


def pooled_head(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Global average pooling → [Dropout] → the classifier: the same size for any image size."""
    layers = [GlobalAveragePool()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
    return nn.Sequential(*layers, nn.Linear(channels, num_classes))


def dense_layers(widths, activation, dropout, batchnorm, dropout_at=None, batchnorm_at=None) -> list[nn.Module]:
    """Per consecutive pair of widths: Linear → [BatchNorm] → activation → [Dropout]. `dropout_at` and
    `batchnorm_at` (one flag per layer) say where each goes; None: every layer, as `dropout` > 0 and `batchnorm`."""
    layers = []
    for index, (width_in, width) in enumerate(zip(widths, widths[1:])):
        normalised = batchnorm_at[index] if batchnorm_at is not None else batchnorm
        layers.append(nn.Linear(width_in, width, bias=not normalised))
        if normalised:
            layers.append(nn.BatchNorm1d(width))
        layers.append(make_activation(activation))
        if dropout > 0 and (dropout_at is None or dropout_at[index]):
            layers.append(nn.Dropout(dropout))
    return layers


def is_convolution(module: nn.Module) -> bool:
    """A 2-D convolution, torch.nn's or one written for modules=scratch (any class named Conv2d with a 4-D weight):
    what the filter plots and Grad-CAM look for."""
    weight = getattr(module, "weight", None)
    return isinstance(module, nn.Conv2d) or (type(module).__name__ == "Conv2d" and isinstance(weight, torch.Tensor)
                                             and weight.dim() == 4)
