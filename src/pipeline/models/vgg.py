"""VGG: stacks of 3x3 convolutions between 2x2 maxpools, the block list spelled out in the config."""
import torch
from torch import nn

from pipeline.models.activations import activation as make_activation


class VGG(nn.Module):
    """Per entry of `blocks`: an int is a conv3x3 with that many channels → [BatchNorm] → activation, "M" a 2x2
    maxpool; then per width in `fc`: [Dropout] → Linear → activation; then [Dropout] → the classifier."""

    def __init__(self, input_shape, num_classes: int, blocks, fc, activation: str = "relu",
                 dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"model VGG needs image inputs (channels, height, width); "
                             f"got input_shape {list(input_shape)}")
        shape = tuple(int(d) for d in input_shape)
        channels_in, height, width = shape
        layers = []
        for block in blocks:
            if block == "M":
                if min(height, width) < 2:  # a 2x2 pool would leave nothing
                    raise ValueError(f"model.blocks={list(blocks)} has too many \"M\" pools for input_shape "
                                     f"{list(shape)}: each halves the image, which would shrink below 1x1")
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            elif isinstance(block, int) and not isinstance(block, bool) and block >= 1:
                layers.append(nn.Conv2d(channels_in, block, 3, padding=1, bias=not batchnorm))
                if batchnorm:
                    layers.append(nn.BatchNorm2d(block))
                layers.append(make_activation(activation))
                channels_in = block
            else:
                raise ValueError(f"model.blocks={list(blocks)} has the entry {block!r}: each entry must be "
                                 f"an integer >= 1 (a conv3x3 with that many channels) or \"M\" (a 2x2 maxpool)")
        self.features = nn.Sequential(*layers)

        # One dummy image measures the flattened size (in eval mode, so BatchNorm's running stats stay as they are).
        with torch.no_grad():
            in_features = self.features.eval()(torch.zeros(1, *shape)).numel()
        self.features.train()

        layers = [nn.Flatten()]
        for out_features in fc:
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers += [nn.Linear(in_features, out_features), make_activation(activation)]
            in_features = out_features
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(in_features, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x):
        return self.classifier(self.features(x))
