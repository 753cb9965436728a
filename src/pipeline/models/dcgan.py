"""DCGAN (Radford et al., 2016): a generator of transposed convolutions and a discriminator of strided ones, with
BatchNorm, ReLU in the generator, LeakyReLU(0.2) in the discriminator and N(0, 0.02) initial weights."""
import torch
from torch import nn

from pipeline.errors import ConfigError


def stride2_stages(model: str, input_shape, stages: int, key: str) -> tuple[int, int, int, int]:
    """(channels, height, width, base): the image halves once per stage, down to a base of `base` pixels (height
    and width equal); anything else is refused naming the shape and what fits."""
    if len(input_shape) != 3:
        raise ConfigError(f"model {model} needs image inputs [channels, height, width], not input_shape "
                          f"{list(input_shape)}")
    channels, height, width = (int(d) for d in input_shape)
    scale = 2 ** stages
    if height != width or height % scale or height // scale < 2:
        raise ConfigError(f"model {model} cannot draw input_shape {list(input_shape)}: {key} has {stages} "
                          f"stride-2 stages, so height and width must be equal multiples of {scale} of at least "
                          f"{2 * scale} (28x28, 32x32 and 8x8 all work with 2 stages)")
    return channels, height, width, height // scale


def initialise(module: nn.Module) -> None:
    """The DCGAN paper's initialisation: convolution weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z → Linear to widths[0] maps of base x base → per next width a 4x4 stride-2 transposed conv (doubling the
    size) → BatchNorm → ReLU; the last one gives the image channels, and a sigmoid makes pixels in [0, 1]."""

    def __init__(self, latent_dim: int, widths, channels: int, base: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.project = nn.Sequential(nn.Linear(latent_dim, widths[0] * base * base, bias=False),
                                     nn.Unflatten(1, (widths[0], base, base)), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers = []
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(width_in, width_out, 4, 2, 1, bias=False), nn.BatchNorm2d(width_out),
                       nn.ReLU()]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Sigmoid()]
        self.upsample = nn.Sequential(*layers)

    def forward(self, z):
        return self.upsample(self.project(z))


class Discriminator(nn.Module):
    """Image in [0, 1] → rescaled to [-1, 1] → per width a 4x4 stride-2 conv (halving the size) → [BatchNorm,
    not on the first] → LeakyReLU(0.2) → Linear to one logit: how real the image looks."""

    def __init__(self, widths, channels: int, size: int):
        super().__init__()
        layers, width_in = [], channels
        for index, width in enumerate(widths):
            layers.append(nn.Conv2d(width_in, width, 4, 2, 1, bias=index == 0))
            if index > 0:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(0.2))
            width_in, size = width, size // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.logit = nn.Linear(width_in * size * size, 1)

    def forward(self, x):
        return self.logit(self.features(x * 2 - 1))


class DCGAN(nn.Module):
    """The two networks task=gan trains against each other. forward(x) is the discriminator's logit (one per
    image); generate(z) the generator's images. generator_widths: one entry per stride-2 stage, the first from
    a base of image size / 2^stages pixels (28x28 -> 7x7, 32x32 -> 8x8); discriminator_widths likewise."""

    def __init__(self, input_shape, latent_dim: int, generator_widths, discriminator_widths):
        super().__init__()
        for key, widths in (("generator_widths", generator_widths), ("discriminator_widths", discriminator_widths)):
            if not widths or not all(isinstance(w, int) and w >= 1 for w in widths):
                raise ConfigError(f"model.{key}={list(widths)} is invalid: must be a non-empty list of channel "
                                  "counts, each an integer >= 1 (e.g. [64, 32])")
        if not (isinstance(latent_dim, int) and latent_dim >= 1):
            raise ConfigError(f"model.latent_dim={latent_dim!r} is invalid: must be an integer >= 1")
        channels, height, _, base = stride2_stages("DCGAN", input_shape, len(generator_widths),
                                                   "model.generator_widths")
        stride2_stages("DCGAN", input_shape, len(discriminator_widths), "model.discriminator_widths")
        self.latent_dim = latent_dim
        self.image_shape = (channels, height, height)
        self.generator = Generator(latent_dim, list(generator_widths), channels, base)
        self.discriminator = Discriminator(list(discriminator_widths), channels, height)
        self.apply(initialise)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def forward(self, x):
        return self.discriminator(x)

