"""Multi-layer perceptron: the first model that learns what softmax regression cannot (xor, spirals)."""
import math

from torch import nn

from pipeline.models.activations import activation as make_activation


class MLP(nn.Module):
    """Flatten, then per width in `hidden`: Linear → [BatchNorm] → activation → [Dropout]; then the classifier."""

    def __init__(self, input_shape, num_classes: int, hidden, activation: str = "relu",
                 dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        layers = [nn.Flatten()]
        width_in = math.prod(input_shape)
        for width in hidden:
            layers.append(nn.Linear(width_in, width, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width_in = width
        layers.append(nn.Linear(width_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
