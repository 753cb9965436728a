"""Activation functions (lab 2): y = f(x) element by element, so the backward is the upstream gradient times the
derivative at each element, ∂L/∂x = ∂L/∂y ⊙ f'(x). Each derivative is written through what forward already has:

    sigmoid   y = 1 / (1 + e^-x)                   f'(x) = y (1 - y)
    tanh      y = (e^x - e^-x) / (e^x + e^-x)      f'(x) = 1 - y²
    relu      y = max(0, x)                        f'(x) = 1 if y > 0 else 0
    leaky     y = x if x > 0 else a·x              f'(x) = 1 if x > 0 else a
    softplus  y = log(1 + e^(βx)) / β              f'(x) = σ(βx)   (y = x where βx > threshold: f' = 1)
    gelu      y = x Φ(x)                           f'(x) = Φ(x) + x φ(x)   (Φ, φ: the standard normal cdf, pdf)
"""
import math

import torch
from torch import nn

from pipeline.errors import ConfigError


class ElementwiseFunction(torch.autograd.Function):
    """y = f(x); backward multiplies by f'(x), computed by `derivative` from the saved x and y."""

    @staticmethod
    def forward(ctx, x, activation):
        y = activation.value(x)
        ctx.save_for_backward(x, y)
        ctx.activation = activation
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, y = ctx.saved_tensors
        return grad_y * ctx.activation.derivative(x, y), None


class Activation(nn.Module):
    """An activation is `value` and `derivative`; forward runs them through ElementwiseFunction."""

    def value(self, x):
        raise NotImplementedError

    def derivative(self, x, y):
        raise NotImplementedError

    @classmethod
    def like(cls, module: nn.Module) -> "Activation":
        return cls()

    def forward(self, x):
        return ElementwiseFunction.apply(x, self)


class Sigmoid(Activation):
    def value(self, x):
        return sigmoid(x)

    def derivative(self, x, y):
        return y * (1 - y)


class Tanh(Activation):
    def value(self, x):
        e = torch.exp(-2 * x.abs())  # never overflows; tanh is odd, so the sign is put back
        return torch.sign(x) * (1 - e) / (1 + e)

    def derivative(self, x, y):
        return 1 - y * y


class ReLU(Activation):
    def value(self, x):
        return x.clamp(min=0)

    def derivative(self, x, y):
        return (y > 0).to(x.dtype)


class LeakyReLU(Activation):
    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = negative_slope

    @classmethod
    def like(cls, module: nn.LeakyReLU) -> "LeakyReLU":
        return cls(module.negative_slope)

    def value(self, x):
        return torch.where(x > 0, x, x * self.negative_slope)

    def derivative(self, x, y):
        return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, self.negative_slope))

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Softplus(Activation):
    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta, self.threshold = beta, threshold

    @classmethod
    def like(cls, module: nn.Softplus) -> "Softplus":
        return cls(module.beta, module.threshold)

    def value(self, x):
        scaled = x * self.beta
        # log(1 + e^s) = max(s, 0) + log(1 + e^-|s|): no overflow; above the threshold it is s itself.
        soft = (scaled.clamp(min=0) + torch.log1p(torch.exp(-scaled.abs()))) / self.beta
        return torch.where(scaled > self.threshold, x, soft)

    def derivative(self, x, y):
        scaled = x * self.beta
        return torch.where(scaled > self.threshold, torch.ones_like(x), sigmoid(scaled))

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


class GELU(Activation):
    @classmethod
    def like(cls, module: nn.GELU) -> "GELU":
        if module.approximate != "none":
            raise ConfigError(f"modules=scratch: GELU(approximate={module.approximate!r}) is not implemented by "
                              "pipeline.scratch.activations.GELU; supported: approximate='none'")
        return cls()

    def value(self, x):
        return x * normal_cdf(x)

    def derivative(self, x, y):
        return normal_cdf(x) + x * torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def sigmoid(x):
    """1 / (1 + e^-x), which overflows for large negative x; e^x / (1 + e^x) is the same number there."""
    e = torch.exp(-x.abs())
    return torch.where(x >= 0, 1 / (1 + e), e / (1 + e))


def normal_cdf(x):
    return (1 + torch.erf(x / math.sqrt(2))) / 2
