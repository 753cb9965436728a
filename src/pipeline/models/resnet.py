"""ResNet for small images (the CIFAR variant): residual connections let a deep stack of convolutions train."""
from torch import nn

from pipeline.models.activations import activation as make_activation
from pipeline.models.parts import image_shape, output_shape, pooled_head


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class BasicBlock(nn.Module):
    """conv3x3 → [BatchNorm] → activation → conv3x3 → [BatchNorm], plus the input, then activation.

    Adding the input back gives the gradient a path around the convolutions, which is what lets a deep stack train;
    a 1x1 conv matches the input to the output's shape where the block changes it.
    """

    def __init__(self, channels_in: int, channels_out: int, stride: int, activation: str, batchnorm: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=not batchnorm)
        self.norm1 = _norm(channels_out, batchnorm)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=not batchnorm)
        self.norm2 = _norm(channels_out, batchnorm)
        self.shortcut = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=not batchnorm),
                                          _norm(channels_out, batchnorm))
        self.act2 = make_activation(activation)

    def forward(self, x):
        out = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv3x3 with `width` channels → [BatchNorm] → activation; then per entry of `stages` that many
    BasicBlocks, stage i with width * 2**i channels, each stage after the first halving the image with stride 2;
    then global average pooling → [Dropout] → the classifier.

    A stride-2 conv3x3 with padding 1 rounds up (8 → 4 → 2 → 1 → 1), so no number of stages can shrink an image
    to nothing.
    """

    def __init__(self, input_shape, num_classes: int, width, stages, activation: str = "relu",
                 dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        shape = image_shape("ResNet", input_shape)
        if not (isinstance(width, int) and not isinstance(width, bool) and width >= 1):
            raise ValueError(f"model.width={width!r} is invalid: must be an integer >= 1 (the stem's channels)")
        if not (len(stages) >= 1 and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in stages)):
            raise ValueError(f"model.stages={list(stages)} is invalid: must be a non-empty list of integers >= 1 "
                             f"(the number of residual blocks per stage, e.g. [2, 2, 2])")
        layers = [nn.Conv2d(shape[0], width, 3, padding=1, bias=not batchnorm), _norm(width, batchnorm),
                  make_activation(activation)]
        channels_in = width
        for stage, blocks in enumerate(stages):
            channels_out = width * 2 ** stage
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(channels_in, channels_out, stride, activation, batchnorm))
                channels_in = channels_out
        self.features = nn.Sequential(*layers)

        self.classifier = pooled_head(output_shape(self.features, shape)[0], num_classes, dropout)

    def forward(self, x):
        return self.classifier(self.features(x))
