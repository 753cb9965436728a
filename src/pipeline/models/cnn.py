"""A plain convolutional network: the smallest step up from the MLP that uses the image's 2-D structure."""
from torch import nn

from pipeline.models.activations import activation as make_activation
from pipeline.models.parts import image_shape, output_shape, pooled_head


class CNN(nn.Module):
    """Per width in `channels`: conv k×k (`kernel_size`, odd, padded so the size stays) → [BatchNorm] → activation,
    plus a 2x2 maxpool after the layers listed in `pool_after`; then global average pooling → [Dropout] → the
    classifier.

    Averaging over the image, not flattening it, keeps the classifier the same size for any image size.
    """

    def __init__(self, input_shape, num_classes: int, channels, pool_after, activation: str = "relu",
                 dropout: float = 0.0, batchnorm: bool = False, kernel_size: int = 3):
        super().__init__()
        shape = image_shape("CNN", input_shape)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"model.kernel_size={kernel_size!r} is invalid: must be an odd integer >= 1 (1, 3, 5, ...)")
        pool_after = list(pool_after)
        in_range = all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(channels) for i in pool_after)
        if not in_range or len(set(pool_after)) != len(pool_after):
            raise ValueError(f"model.pool_after={pool_after} is invalid: each entry must be the index of a conv "
                             f"layer, an integer from 0 to {len(channels) - 1} (model.channels has {len(channels)}), "
                             f"listed at most once")
        channels_in, height, width = shape
        layers = []
        for index, channels_out in enumerate(channels):
            layers.append(nn.Conv2d(channels_in, channels_out, kernel_size, padding=kernel_size // 2,
                                    bias=not batchnorm))
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

        self.classifier = pooled_head(output_shape(self.features, shape)[0], num_classes, dropout)

    def forward(self, x):
        return self.classifier(self.features(x))
