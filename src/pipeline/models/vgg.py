"""VGG: stacks of 3x3 convolutions between 2x2 maxpools, the block list spelled out in the config."""
from torch import nn

from pipeline.models.activations import activation as make_activation
from pipeline.models.parts import fully_connected_head, image_shape, output_shape


class VGG(nn.Module):
    """Per entry of `blocks`: an int is a conv3x3 with that many channels → [BatchNorm] → activation, "M" a 2x2
    maxpool; then per width in `fc`: [Dropout] → Linear → activation; then [Dropout] → the classifier."""

    def __init__(self, input_shape, num_classes: int, blocks, fc, activation: str = "relu",
                 dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        shape = image_shape("VGG", input_shape)
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

        in_features = output_shape(self.features, shape).numel()
        self.classifier = fully_connected_head(in_features, fc, num_classes, activation, dropout)

    def forward(self, x):
        return self.classifier(self.features(x))
