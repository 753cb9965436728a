"""Autoencoders for lab 6: a convolutional one whose decoder can un-pool, and a linear one with tied weights."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.activations import activation as make_activation
from pipeline.models.parts import image_shape


def conv_block(channels_in: int, channels_out: int, activation: str, batchnorm: bool) -> nn.Sequential:
    """conv3x3 (padded, so the size stays) → [BatchNorm] → activation."""
    layers = [nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(channels_out))
    return nn.Sequential(*layers, make_activation(activation))


def pooled_sizes(shape, channels) -> list[tuple[int, int]]:
    """(height, width) going into each 2x2 pool, then after the last: the sizes a decoder must restore."""
    _, height, width = shape
    sizes = [(height, width)]
    for _ in channels:
        if min(height, width) < 2:  # a 2x2 pool would leave nothing
            raise ConfigError(f"model.channels={list(channels)} pools the image once per entry, which shrinks "
                              f"input_shape {list(shape)} below 1x1: use fewer entries")
        height, width = height // 2, width // 2
        sizes.append((height, width))
    return sizes


class Unpool(nn.Module):
    """Each maximum back where the encoder's pool found it, zeros elsewhere. The size before the pool says where
    an odd row went: 28 → 14 → 7 → 3 is undone as 3 → 7 → 14 → 28.

    This is nn.MaxUnpool2d written as one scatter: torch refuses MaxUnpool2d when deterministic algorithms are on
    (trainer.deterministic: true, the default), though pools that do not overlap never send two values to one
    place; the scatter gives the same tensor (tests/test_autoencoders.py compares them) and is allowed.
    """

    def __init__(self, channels: int, size):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x, indices):
        n, c = x.shape[:2]
        flat = x.new_zeros(n, c, self.size[0] * self.size[1])
        return flat.scatter(2, indices.flatten(2), x.flatten(2)).view(n, c, *self.size)


class Upsample(nn.Module):
    """Nearest-neighbour interpolation to the size before the pool: copies each value, learns nothing."""

    def __init__(self, channels: int, size):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x, indices=None):
        return F.interpolate(x, size=self.size, mode="nearest")


class Transposed(nn.Module):
    """A learned 2x2 stride-2 transposed convolution; output_padding adds back the row or column an odd size lost."""

    def __init__(self, channels: int, size):
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 2, stride=2, output_padding=(size[0] % 2, size[1] % 2))

    def forward(self, x, indices=None):
        return self.conv(x)


DECODERS = {"unpool": Unpool, "upsample": Upsample, "transposed": Transposed}


class ConvAutoencoder(nn.Module):
    """Per width in `channels`: conv3x3 → [BatchNorm] → activation → 2x2 maxpool (keeping its indices); then
    flatten → [Dropout] → Linear to the code. The decoder mirrors it: Linear → activation → per width in reverse:
    upsample by `decoder` → conv3x3 → [BatchNorm] → activation, the last conv giving raw values like the input.

    With `decoder: unpool` the indices travel beside the code: they tell the decoder where each maximum was, which
    is information the code does not hold, so decoding needs them (decode(code) alone works for the other two).
    """

    def __init__(self, input_shape, channels, code_size: int, decoder: str = "unpool", activation: str = "relu",
                 dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        if decoder not in DECODERS:
            raise ConfigError(f"model.decoder={decoder!r} is not one of {', '.join(DECODERS)}")
        shape = image_shape("ConvAutoencoder", input_shape)
        channels = [int(c) for c in channels]
        if not channels:
            raise ConfigError("model.channels=[] is empty: the autoencoder needs at least one conv layer")
        sizes = pooled_sizes(shape, channels)
        self.code_size = code_size
        self.needs_indices = decoder == "unpool"
        widths_in = [shape[0]] + channels[:-1]

        self.encoder = nn.ModuleList(conv_block(c_in, c_out, activation, batchnorm)
                                     for c_in, c_out in zip(widths_in, channels))
        self.pool = nn.MaxPool2d(2, return_indices=True)
        flat = (channels[-1], *sizes[-1])
        self.to_code = nn.Sequential(nn.Flatten(), *([nn.Dropout(dropout)] if dropout > 0 else []),
                                     nn.Linear(math.prod(flat), code_size))

        self.from_code = nn.Sequential(nn.Linear(code_size, math.prod(flat)), make_activation(activation),
                                       nn.Unflatten(1, flat))
        # In decoding order: the last pool is undone first.
        self.upsample = nn.ModuleList(DECODERS[decoder](c, size) for c, size in zip(channels[::-1], sizes[-2::-1]))
        blocks = [conv_block(wide, narrow, activation, batchnorm) for wide, narrow in zip(channels[:0:-1],
                                                                                          channels[-2::-1])]
        self.decoder_convs = nn.ModuleList([*blocks, nn.Conv2d(channels[0], shape[0], 3, padding=1)])

    def encode(self, x):
        """x → (code, pooling indices in encoding order)."""
        indices = []
        for block in self.encoder:
            x, where = self.pool(block(x))
            indices.append(where)
        return self.to_code(x), indices

    def decode(self, code, indices=None):
        """(code, pooling indices as encode() gave them) → reconstruction, raw values in the input's space."""
        if indices is None:
            if self.needs_indices:
                raise ValueError("model.decoder='unpool' decodes with the encoder's pooling indices: "
                                 "pass decode(code, indices) as encode() returned them")
            indices = [None] * len(self.upsample)
        x = self.from_code(code)
        for upsample, conv, where in zip(self.upsample, self.decoder_convs, reversed(indices)):
            x = conv(upsample(x, where))
        return x

    def forward(self, x):
        return self.decode(*self.encode(x))


class LinearAutoencoder(nn.Module):
    """code = activation(W·x + b), reconstruction = Wᵀ·code + c: the decoder is the encoder's weight transposed
    (tied, as in the notes), so there is one weight matrix. Without an activation it learns the subspace PCA finds.

    Regularization: dropout drops input pixels (a denoising autoencoder), batchnorm normalises the code.
    """

    def __init__(self, input_shape, code_size: int, activation: str = "identity", dropout: float = 0.0,
                 batchnorm: bool = False):
        super().__init__()
        shape = tuple(int(d) for d in input_shape)
        in_features = math.prod(shape)
        self.code_size = code_size
        self.flatten = nn.Sequential(nn.Flatten(), *([nn.Dropout(dropout)] if dropout > 0 else []))
        self.encoder = nn.Linear(in_features, code_size)
        code_layers = ([nn.BatchNorm1d(code_size)] if batchnorm else []) + \
                      ([make_activation(activation)] if activation != "identity" else [])
        self.code_layers = nn.Sequential(*code_layers)
        self.decoder_bias = nn.Parameter(torch.zeros(in_features))
        self.unflatten = nn.Unflatten(1, shape)

    def encode(self, x):
        return self.code_layers(self.encoder(self.flatten(x)))

    def decode(self, code):
        return self.unflatten(F.linear(code, self.encoder.weight.t(), self.decoder_bias))

    def forward(self, x):
        return self.decode(self.encode(x))
