"""The torch.nn modules each scratch module is checked against, at the shapes the labs use and at small shapes for
torch.autograd.gradcheck. A case builds (reference module, inputs); float inputs are the ones differentiated."""
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from pipeline.tasks import losses


@dataclass(frozen=True)
class Case:
    key: str  # what it checks: a modules.layers or modules.losses key of conf/modules/
    label: str  # the setting and shape, as the table shows it
    build: Callable[[bool, torch.Generator], tuple[nn.Module, tuple]]  # (small?, generator) -> (reference, inputs)
    call: Callable[[nn.Module, tuple], object] = field(default=lambda module, inputs: module(*inputs))
    training: bool = True
    differentiable: tuple[int, ...] | None = None  # the inputs differentiated (None: every float one)


class Loss(nn.Module):
    """A loss function as a module, so a loss is checked like a layer: forward(scores, y, weight)."""

    def __init__(self, function, label_smoothing: float = 0.0):
        super().__init__()
        self.function, self.label_smoothing = function, label_smoothing

    def forward(self, scores, y, weight=None):
        return self.function(scores, y, weight=weight, label_smoothing=self.label_smoothing)


def normal(generator, *shape):
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def layer(module: Callable[[], nn.Module], shape, small_shape=None, small_module=None):
    """A case builder for a module taking one tensor of `shape` (smaller modules and shapes for gradcheck)."""
    def build(small, generator):
        chosen = (small_module or module) if small else module
        return chosen(), (normal(generator, *(small_shape or shape) if small else shape),)
    return build


def after_relu(module: Callable[[], nn.Module], shape, small_shape):
    """Inputs as a pool sees them after ReLU: many windows all zero, so the tie-breaking has to agree with torch's
    (gradcheck's small inputs have no ties: a tie has no derivative)."""
    def build(small, generator):
        x = normal(generator, *(small_shape if small else shape))
        return module(), (x if small else x.clamp(min=0),)
    return build


def unpooling(shape, small_shape, project_unpool: bool):
    def build(small, generator):
        x = normal(generator, *(small_shape if small else shape))
        values, indices = nn.MaxPool2d(2, return_indices=True)(x)
        if project_unpool:
            from pipeline.models.autoencoder import Unpool

            return Unpool(x.shape[1], x.shape[2:]), (values, indices)
        return nn.MaxUnpool2d(2), (values, indices)
    return build


def with_running_statistics(norm: nn.Module) -> nn.Module:
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm


def token_ids(generator, batch, length, vocab):
    ids = torch.randint(1, vocab, (batch, length), generator=generator)
    for row in range(batch):  # right padding with 0, as data=chars pads names
        ids[row, torch.randint(1, length + 1, (1,), generator=generator).item():] = 0
    return ids


def embedding(small, generator):
    """The padding row is used but never gets a gradient (by design, as torch's), so finite differences would
    disagree there: the small gradcheck case has no padding row; the lab case compares it with torch."""
    vocab, dim, batch, length = (7, 3, 3, 4) if small else (60, 32, 64, 20)
    return nn.Embedding(vocab, dim, padding_idx=None if small else 0), (token_ids(generator, batch, length, vocab),)


def sequences(cell: type, **settings):
    """Right-padded sequences of unequal lengths, packed as the recurrent classifier packs them."""
    def build(small, generator):
        batch, length, features, hidden = (3, 4, 2, 3) if small else (16, 12, 32, 64)
        lengths = torch.randint(1, length + 1, (batch,), generator=generator)
        lengths[0] = length
        return cell(features, hidden, batch_first=True, **settings), (normal(generator, batch, length, features), lengths)
    return build


def packed_call(module, inputs):
    x, lengths = inputs
    output, state = module(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    return output.data, state


def classification_scores(function, weighted: bool, label_smoothing: float = 0.0):
    def build(small, generator):
        batch, classes = (4, 3) if small else (64, 10)
        weight = torch.rand(classes, generator=generator, dtype=torch.float64) + 0.5 if weighted else None
        y = torch.randint(0, classes, (batch,), generator=generator)
        return Loss(function, label_smoothing), (2 * normal(generator, batch, classes), y, weight)
    return build


ACTIVATION_SHAPE, SMALL = (64, 128), (3, 5)
CASES = [
    Case("Linear", "784 -> 10, batch 64 (mnist_linear)", layer(lambda: nn.Linear(784, 10), (64, 784), (3, 4),
                                                                  lambda: nn.Linear(4, 3))),
    Case("Linear", "256 -> 128 on (8, 5, 256)", layer(lambda: nn.Linear(256, 128), (8, 5, 256), (2, 3, 4),
                                                      lambda: nn.Linear(4, 2))),
    Case("Sigmoid", "64 x 128", layer(nn.Sigmoid, ACTIVATION_SHAPE, SMALL)),
    Case("Tanh", "64 x 128", layer(nn.Tanh, ACTIVATION_SHAPE, SMALL)),
    Case("ReLU", "64 x 128", layer(nn.ReLU, ACTIVATION_SHAPE, SMALL)),
    Case("Softplus", "64 x 128", layer(nn.Softplus, ACTIVATION_SHAPE, SMALL)),
    Case("LeakyReLU", "64 x 128", layer(nn.LeakyReLU, ACTIVATION_SHAPE, SMALL)),
    Case("GELU", "64 x 128", layer(nn.GELU, ACTIVATION_SHAPE, SMALL)),
    Case("Conv2d", "1 -> 6, 5x5 pad 2, 28x28 (LeNet)", layer(lambda: nn.Conv2d(1, 6, 5, padding=2), (8, 1, 28, 28),
                                                            (2, 1, 5, 5), lambda: nn.Conv2d(1, 2, 3, padding=1))),
    Case("Conv2d", "6 -> 16, 5x5 pad 2, 14x14 (LeNet)", layer(lambda: nn.Conv2d(6, 16, 5, padding=2), (8, 6, 14, 14),
                                                             (2, 2, 5, 5), lambda: nn.Conv2d(2, 3, 3, padding=1))),
    Case("Conv2d", "64 -> 128, 3x3 stride 2, 16x16 (ResNet)",
         layer(lambda: nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False), (4, 64, 16, 16), (2, 2, 5, 6),
               lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False))),
    Case("Conv2d", "64 -> 128, 1x1 stride 2 (ResNet shortcut)",
         layer(lambda: nn.Conv2d(64, 128, 1, stride=2), (4, 64, 16, 16), (2, 2, 5, 5),
               lambda: nn.Conv2d(2, 3, 1, stride=2))),
    Case("ConvTranspose2d", "16 -> 16, 2x2 stride 2, 7x7 -> 14x14 (autoencoder)",
         layer(lambda: nn.ConvTranspose2d(16, 16, 2, stride=2), (8, 16, 7, 7), (2, 2, 3, 3),
               lambda: nn.ConvTranspose2d(2, 3, 2, stride=2))),
    Case("ConvTranspose2d", "64 -> 32, 4x4 stride 2 pad 1, output_padding 1 (DCGAN-like)",
         layer(lambda: nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1, output_padding=1), (4, 64, 7, 7),
               (2, 2, 3, 3), lambda: nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1, output_padding=1))),
    Case("MaxPool2d", "2x2 on 6 x 28x28 after ReLU (LeNet)",
         after_relu(lambda: nn.MaxPool2d(2), (8, 6, 28, 28), (2, 2, 4, 6))),
    Case("MaxPool2d", "3x3 stride 2 pad 1 on 16 x 15x15, indices",
         after_relu(lambda: nn.MaxPool2d(3, stride=2, padding=1, return_indices=True), (4, 16, 15, 15), (2, 2, 5, 5))),
    Case("MaxUnpool2d", "2x2, 16 x 14x14 -> 28x28", unpooling((8, 16, 28, 28), (2, 2, 4, 6), project_unpool=False)),
    Case("MaxUnpool2d", "the autoencoder's Unpool, 7x7 -> 14x14", unpooling((8, 16, 14, 14), (2, 2, 4, 4),
                                                                          project_unpool=True)),
    Case("BatchNorm1d", "128 features, batch 64, training", layer(lambda: nn.BatchNorm1d(128), (64, 128), (4, 3),
                                                                lambda: nn.BatchNorm1d(3))),
    Case("BatchNorm1d", "128 features, batch 64, evaluation",
         layer(lambda: with_running_statistics(nn.BatchNorm1d(128)), (64, 128), (4, 3),
               lambda: with_running_statistics(nn.BatchNorm1d(3))), training=False),
    Case("BatchNorm2d", "16 channels, 14x14, training", layer(lambda: nn.BatchNorm2d(16), (8, 16, 14, 14),
                                                             (3, 2, 2, 3), lambda: nn.BatchNorm2d(2))),
    Case("BatchNorm2d", "16 channels, 14x14, evaluation",
         layer(lambda: with_running_statistics(nn.BatchNorm2d(16)), (8, 16, 14, 14), (3, 2, 2, 3),
               lambda: with_running_statistics(nn.BatchNorm2d(2))), training=False),
    Case("Dropout", "p=0.5, 64 x 128", layer(lambda: nn.Dropout(0.5), ACTIVATION_SHAPE, SMALL)),
    Case("Embedding", "60 tokens x 32, padding 0, batch 64 x 20", embedding),
    Case("RNN", "tanh, 32 -> 64, packed, lengths 1-12", sequences(nn.RNN), packed_call),
    Case("RNN", "relu, 2 layers, bidirectional", sequences(nn.RNN, nonlinearity="relu", num_layers=2,
                                                           bidirectional=True), packed_call),
    Case("LSTM", "32 -> 64, packed, lengths 1-12 (char-RNN)", sequences(nn.LSTM), packed_call),
    Case("LSTM", "2 layers, bidirectional", sequences(nn.LSTM, num_layers=2, bidirectional=True), packed_call),
    Case("GRU", "32 -> 64, packed, lengths 1-12", sequences(nn.GRU), packed_call),
    Case("GRU", "2 layers, bidirectional", sequences(nn.GRU, num_layers=2, bidirectional=True), packed_call),
    Case("cross_entropy", "64 x 10", classification_scores(losses.cross_entropy, weighted=False), differentiable=(0,)),
    Case("cross_entropy", "class weights, label smoothing 0.1",
         classification_scores(losses.cross_entropy, weighted=True, label_smoothing=0.1), differentiable=(0,)),
    Case("hinge", "64 x 10, class weights", classification_scores(losses.hinge, weighted=True), differentiable=(0,)),
    Case("squared", "64 x 10, label smoothing 0.1", classification_scores(losses.squared, weighted=False,
                                                                         label_smoothing=0.1), differentiable=(0,)),
]
