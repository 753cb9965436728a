"""A CIFAR-10 network shaped for speed, after the published airbench94: most of its accuracy per FLOP comes from a first
layer that is computed, not learned, and from wide late layers on small images.

- whitening: a 2x2 convolution whose filters are the training patches' principal directions scaled to unit variance
  (and their negatives: the activation after it keeps one sign of each), fitted from the data before training and
  then fixed (its bias is learned, for the first `whitening_bias_epochs` epochs where that is set);
- three blocks of conv 3x3 → 2x2 max-pool → BatchNorm → GELU → conv 3x3 → BatchNorm → GELU (widths 64, 256, 256),
  each conv starting as an identity on its first input channels (`dirac`): the net starts out passing the whitened
  image on, which makes a high learning rate safe from the first step; BatchNorm learns only its shift (its scale
  stays 1: with the scaled-down logits below, a learned scale only adds a direction for the loss to drift along);
- the maximum over the remaining positions, [Dropout], and a linear classifier whose logits are scaled down
  (`logit_scale`): the net starts out unsure of every class.
- in eval mode, the mean of the logits over `test_time_views` views of each image: 1 (as it is), 2 (and mirrored),
  6 (and both shifted by one pixel diagonally, each also mirrored; the shifted ones count half).
"""
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.activations import activation as make_activation
from pipeline.models.parts import image_shape

VIEWS = (1, 2, 6)


class WhitenedCNN(nn.Module):
    def __init__(self, input_shape, num_classes: int, widths=(64, 256, 256), whitening_size: int = 2,
                 activation: str = "gelu", logit_scale: float = 1 / 9, batchnorm_momentum: float = 0.4,
                 test_time_views: int = 1, whitening_images: int = 5000, fit_whitening: bool = True,
                 batchnorm: bool = True, dropout: float = 0.0, whitening_bias_epochs: int | None = None):
        super().__init__()
        channels, height, width = image_shape("WhitenedCNN", input_shape)
        if test_time_views not in VIEWS:
            raise ValueError(f"model.test_time_views={test_time_views!r} is invalid: must be one of {list(VIEWS)} "
                             f"(1: the image as it is; 2: and mirrored; 6: and shifted by a pixel, each mirrored)")
        if len(widths) != 3 or min(height, width) < whitening_size + 7:
            raise ValueError(f"model.widths={list(widths)} with input_shape {list(input_shape)}: WhitenedCNN needs "
                             f"three widths and images of at least {whitening_size + 7}x{whitening_size + 7}")
        patch_numbers = channels * whitening_size ** 2
        self.whiten = nn.Conv2d(channels, 2 * patch_numbers, whitening_size, bias=True)
        # Fitted from the data (initialise_from_data), never learned; fit_whitening=false: an ordinary, learned conv
        # (what the whitening is worth: benchmarks/cifar_recipe.py).
        self.whiten.weight.requires_grad_(not fit_whitening)
        self.fit_whitening, self.whitening_images = fit_whitening, whitening_images
        if whitening_bias_epochs is not None and not (isinstance(whitening_bias_epochs, int) and
                                                      whitening_bias_epochs >= 0):
            raise ValueError(f"model.whitening_bias_epochs={whitening_bias_epochs!r} is invalid: must be null (always "
                             "trained) or an integer >= 0")
        self.whitening_bias_epochs = whitening_bias_epochs
        layers, width_in = [make_activation(activation)], 2 * patch_numbers
        for width_out in widths:
            norm = (lambda: scale_free_batchnorm(width_out, batchnorm_momentum)) if batchnorm else nn.Identity
            layers += [conv(width_in, width_out), nn.MaxPool2d(2), norm(), make_activation(activation),
                       conv(width_out, width_out), norm(), make_activation(activation)]
            width_in = width_out
        self.blocks = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(width_in, num_classes, bias=False)
        self.logit_scale = logit_scale
        self.test_time_views = test_time_views

    def start_epoch(self, epoch: int) -> None:
        """The whitening bias is trained for the first `whitening_bias_epochs` epochs only (airbench), then fixed:
        without a gradient the optimizer leaves it, its momentum and its weight decay alone."""
        if self.whitening_bias_epochs is not None:
            self.whiten.bias.requires_grad_(epoch < self.whitening_bias_epochs)

    @torch.no_grad()
    def initialise_from_data(self, images: torch.Tensor) -> None:
        """Set the whitening filters from (the first `whitening_images` of) the normalised training images: the
        eigenvectors of the covariance of all their whitening_size² patches, divided by the square root of their
        eigenvalues, and the same negated. Nothing with fit_whitening=false."""
        if not self.fit_whitening:
            return
        size = self.whiten.kernel_size[0]
        images = images[:self.whitening_images].float()
        patches = images.unfold(2, size, 1).unfold(3, size, 1).permute(0, 2, 3, 1, 4, 5)
        patches = patches.reshape(-1, images.shape[1] * size * size).double()
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + 5e-4)[:, None]).float()
        filters = filters.reshape(-1, images.shape[1], size, size)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.whiten(x))
        return self.classifier(self.dropout(features.amax(dim=(2, 3)))) * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.test_time_views == 1:
            return self.logits(x)
        mirrored = self.logits(x) + self.logits(x.flip(3))
        if self.test_time_views == 2:
            return mirrored / 2
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        height, width = x.shape[2:]
        shifted = [padded[:, :, :height, :width], padded[:, :, 2:, 2:]]
        shifted = sum(self.logits(view) + self.logits(view.flip(3)) for view in shifted)
        return mirrored / 4 + shifted / 8


def scale_free_batchnorm(width: int, momentum: float) -> nn.BatchNorm2d:
    """BatchNorm whose scale is fixed at 1 (only the shift is learned)."""
    layer = nn.BatchNorm2d(width, momentum=momentum, eps=1e-12)
    layer.weight.requires_grad_(False)
    return layer


def conv(width_in: int, width_out: int) -> nn.Conv2d:
    """3x3, same size, no bias (BatchNorm follows), its first min(in, out) filters an identity (dirac)."""
    layer = nn.Conv2d(width_in, width_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(layer.weight[:width_in])
    return layer
