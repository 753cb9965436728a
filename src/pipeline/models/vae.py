"""Variational autoencoders (Kingma & Welling): an MLP one, the PyTorch examples' 784-400-20, and a conv one."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.activations import activation as make_activation
from pipeline.models.autoencoder import Transposed, conv_block, pooled_sizes
from pipeline.models.parts import dense_layers, image_shape


def kl_divergence(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) per image, in nats: the closed form summed over latent dimensions."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).flatten(1).sum(1)


def negative_elbo(logits, x, mu, logvar):
    """The VAE's loss: BCE summed over pixels (x in [0, 1]) plus the KL term, per image in nats, averaged over the
    batch. Summed, not averaged, over pixels: that is the ELBO papers report (≈ 105 nats on MNIST)."""
    reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    return (reconstruction + kl_divergence(mu, logvar)).mean()


class _Gaussian(nn.Module):
    """What the two VAEs share, given the `encoder`, `mu`, `logvar` and `decoder` each one builds: q(z | x) is
    N(mu, exp(logvar)), and forward() samples z from it and decodes it."""

    def encode(self, x):
        """x → (mu, logvar) of q(z | x)."""
        features = self.encoder(x)
        return self.mu(features), self.logvar(features)

    def decode(self, z):
        """z → reconstruction logits shaped like the input."""
        return self.decoder(z)

    def reparameterize(self, mu, logvar):
        """z = mu + sigma·eps with eps ~ N(0, I) from torch's global RNG: the noise is an input, so gradients reach
        mu and logvar. It samples in eval mode too, so a test loss is the same estimate of the ELBO as in training."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def forward(self, x):
        """x → (reconstruction logits shaped like x, mu, logvar)."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


class VAE(_Gaussian):
    """Encoder: flatten, then per width in `hidden`: Linear → [BatchNorm] → activation → [Dropout]; then two
    Linear heads, mu and log-variance, of size `latent_dim`. Decoder: the same widths in reverse, ending in
    logits shaped like the input (a sigmoid gives pixel probabilities)."""

    def __init__(self, input_shape, hidden, latent_dim: int, activation: str = "relu", dropout: float = 0.0,
                 batchnorm: bool = False):
        super().__init__()
        shape = tuple(int(d) for d in input_shape)
        self.latent_dim = latent_dim
        widths = [math.prod(shape), *hidden]
        self.encoder = nn.Sequential(nn.Flatten(), *dense_layers(widths, activation, dropout, batchnorm))
        self.mu = nn.Linear(widths[-1], latent_dim)
        self.logvar = nn.Linear(widths[-1], latent_dim)
        widths_back = [latent_dim, *widths[:0:-1]]
        self.decoder = nn.Sequential(*dense_layers(widths_back, activation, dropout, batchnorm),
                                     nn.Linear(widths_back[-1], widths[0]), nn.Unflatten(1, shape))


class ConvVAE(_Gaussian):
    """Encoder: per width in `channels`: conv3x3 → [BatchNorm] → activation → 2x2 maxpool; then flatten →
    [Dropout] → the mu and log-variance heads. Decoder: Linear → activation → per width in reverse: a stride-2
    transposed conv → conv3x3 → [BatchNorm] → activation, the last conv giving logits shaped like the input.

    It is ConvAutoencoder with `decoder: transposed`: un-pooling would need indices, which a sample from the prior
    does not have.
    """

    def __init__(self, input_shape, channels, latent_dim: int, activation: str = "relu", dropout: float = 0.0,
                 batchnorm: bool = False):
        super().__init__()
        shape = image_shape("ConvVAE", input_shape)
        channels = [int(c) for c in channels]
        if not channels:
            raise ConfigError("model.channels=[] is empty: the VAE needs at least one conv layer")
        sizes = pooled_sizes(shape, channels)
        self.latent_dim = latent_dim
        flat = (channels[-1], *sizes[-1])

        encoder = []
        for width_in, width in zip([shape[0], *channels], channels):
            encoder += [conv_block(width_in, width, activation, batchnorm), nn.MaxPool2d(2)]
        self.encoder = nn.Sequential(*encoder, nn.Flatten(), *([nn.Dropout(dropout)] if dropout > 0 else []))
        self.mu = nn.Linear(math.prod(flat), latent_dim)
        self.logvar = nn.Linear(math.prod(flat), latent_dim)

        decoder = [nn.Linear(latent_dim, math.prod(flat)), make_activation(activation), nn.Unflatten(1, flat)]
        for width, width_out, size in zip(channels[::-1], [*channels[-2::-1], None], sizes[-2::-1]):
            decoder.append(Transposed(width, size))
            decoder.append(nn.Conv2d(width, shape[0], 3, padding=1) if width_out is None
                           else conv_block(width, width_out, activation, batchnorm))
        self.decoder = nn.Sequential(*decoder)
