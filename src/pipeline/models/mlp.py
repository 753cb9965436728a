"""Multi-layer perceptron: the first model that learns what softmax regression cannot (xor, spirals)."""
import math

from torch import nn

from pipeline.models.parts import dense_layers


def placement(key: str, flags, depth: int) -> list[bool] | None:
    """Per hidden layer, whether it gets the regularizer: null (every layer), or a list of true/false with at least
    one entry per layer. Entries past the last layer are unused, so a search can vary the depth and the placement
    independently (conf/search/nas_mlp.yaml)."""
    if flags is None:
        return None
    flags = list(flags)
    if len(flags) < depth or not all(isinstance(flag, bool) for flag in flags):
        raise ValueError(f"model.{key}={flags} is invalid: must be null or a list of true/false with at least one "
                         f"entry per hidden layer ({depth}: model.hidden has {depth} widths)")
    return flags[:depth]


class MLP(nn.Module):
    """Flatten, then per width in `hidden`: Linear → [BatchNorm] → activation → [Dropout]; then the classifier.
    `dropout_at` and `batchnorm_at` place them per layer (null: every layer, as `dropout` > 0 and `batchnorm`)."""

    def __init__(self, input_shape, num_classes: int, hidden, activation: str = "relu",
                 dropout: float = 0.0, batchnorm: bool = False, dropout_at=None, batchnorm_at=None):
        super().__init__()
        widths = [math.prod(input_shape), *hidden]
        self.net = nn.Sequential(nn.Flatten(), *dense_layers(
            widths, activation, dropout, batchnorm, placement("dropout_at", dropout_at, len(hidden)),
            placement("batchnorm_at", batchnorm_at, len(hidden))), nn.Linear(widths[-1], num_classes))

    def forward(self, x):
        return self.net(x)
