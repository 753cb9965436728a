"""LeNet-5: the first convolutional network, small enough to read and to train on a CPU in minutes."""
from torch import nn

from pipeline.models.activations import activation as make_activation
from pipeline.models.parts import fully_connected_head, image_shape, output_shape


class LeNet(nn.Module):
    """Per width in `channels`: conv5x5 → [BatchNorm] → activation → 2x2 maxpool; then per width in `fc`:
    [Dropout] → Linear → activation; then [Dropout] → the classifier.

    The convolutions pad by 2, so only the pools shrink the image: 8x8 digits still fit two of them.
    """

    def __init__(self, input_shape, num_classes: int, channels, fc, activation: str = "relu",
                 dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        shape = image_shape("LeNet", input_shape)
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

        in_features = output_shape(self.features, shape).numel()
        self.classifier = fully_connected_head(in_features, fc, num_classes, activation, dropout)

    def forward(self, x):
        return self.classifier(self.features(x))
