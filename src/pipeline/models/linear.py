"""Softmax regression: the logits are one affine map of the flattened input."""
import math

from torch import nn


class Linear(nn.Module):
    """Flatten, then one linear layer. The softmax lives in the loss (cross-entropy on logits).

    Regularization applies to the input: batchnorm standardises it, dropout drops input features.
    """

    def __init__(self, input_shape, num_classes: int, dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        in_features = math.prod(input_shape)
        layers = [nn.Flatten()]
        if batchnorm:
            layers.append(nn.BatchNorm1d(in_features))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(in_features, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
