"""Multi-layer perceptron: the first model that learns what softmax regression cannot (xor, spirals)."""
import math

from torch import nn

from pipeline.models.parts import dense_layers


class MLP(nn.Module):
    """Flatten, then per width in `hidden`: Linear → [BatchNorm] → activation → [Dropout]; then the classifier."""

    def __init__(self, input_shape, num_classes: int, hidden, activation: str = "relu",
                 dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        widths = [math.prod(input_shape), *hidden]
        self.net = nn.Sequential(nn.Flatten(), *dense_layers(widths, activation, dropout, batchnorm),
                                 nn.Linear(widths[-1], num_classes))

    def forward(self, x):
        return self.net(x)
