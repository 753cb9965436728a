"""A plain convolutional network: the smallest step up from the MLP that uses the image's 2-D structure."""
import torch
from torch import nn

from pipeline.models.activations import activation as make_activation


class CNN(nn.Module):
    """Per width in `channels`: conv3x3 → [BatchNorm] → activation, plus a 2x2 maxpool after the layers listed
    in `pool_after`; then global average pooling → [Dropout] → the classifier.

    Averaging over the image, not flattening it, keeps the classifier the same size for any image size.
    """

    def __init__(self, input_shape, num_classes: int, channels, pool_after, activation: str = "relu",
                 dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"model CNN needs image inputs (channels, height, width); "
                             f"got input_shape {list(input_shape)}")
        shape = tuple(int(d) for d in input_shape)
        pool_after = list(pool_after)
        in_range = all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(channels) for i in pool_after)
        if not in_range or len(set(pool_after)) != len(pool_after):
            raise ValueError(f"model.pool_after={pool_after} is invalid: each entry must be the index of a conv "
                             f"layer, an integer from 0 to {len(channels) - 1} (model.channels has {len(channels)}), "
                             f"listed at most once")
        channels_in, height, width = shape
        layers = []
        for index, channels_out in enumerate(channels):
            layers.append(nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(channels_out))
            layers.append(make_activation(activation))
            if index in pool_after:
                if min(height, width) < 2:  # a 2x2 pool would leave nothing
                    raise ValueError(f"model.pool_after={pool_after} pools too often for input_shape {list(shape)}: "
                                     f"each pool halves the image, which would shrink below 1x1")
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels_in = channels_out
        self.features = nn.Sequential(*layers)

        # One dummy image checks the stack and measures its output (in eval mode: BatchNorm's stats stay as they are).
        with torch.no_grad():
            in_features = self.features.eval()(torch.zeros(1, *shape)).shape[1]
        self.features.train()

        layers = [nn.Dropout(dropout)] if dropout > 0 else []
        self.classifier = nn.Sequential(*layers, nn.Linear(in_features, num_classes))

    def forward(self, x):
        # Global average pooling as a mean, not nn.AdaptiveAvgPool2d: that one's CUDA backward has no deterministic
        # implementation, so it fails under the trainer's deterministic=true.
        return self.classifier(self.features(x).mean(dim=(2, 3)))
