"""LeNet-5: the first convolutional network, small enough to read and to train on a CPU in minutes."""
import torch
from torch import nn

from pipeline.models.activations import activation as make_activation


class LeNet(nn.Module):
    """Per width in `channels`: conv5x5 → [BatchNorm] → activation → 2x2 maxpool; then per width in `fc`:
    [Dropout] → Linear → activation; then [Dropout] → the classifier.

    The convolutions pad by 2, so only the pools shrink the image: 8x8 digits still fit two of them.
    """

    def __init__(self, input_shape, num_classes: int, channels, fc, activation: str = "relu",
                 dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"model LeNet needs image inputs (channels, height, width); "
                             f"got input_shape {list(input_shape)}")
        shape = tuple(int(d) for d in input_shape)
        channels_in, height, width = shape
        layers = []
        for channels_out in channels:
            if min(height, width) < 2:  # a 2x2 pool would leave nothing
                raise ValueError(f"model.channels={list(channels)} pools the image once per entry, which shrinks "
                                 f"input_shape {list(shape)} below 1x1: use fewer entries")
            layers.append(nn.Conv2d(channels_in, channels_out, 5, padding=2, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(channels_out))
            layers += [make_activation(activation), nn.MaxPool2d(2)]
            channels_in, height, width = channels_out, height // 2, width // 2
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
