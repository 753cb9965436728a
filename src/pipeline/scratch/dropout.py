"""Inverted dropout (lab 5): drop each value with probability p while training and scale the survivors by 1/(1-p),
so the expected value is unchanged and evaluation needs no rescaling.

Forward:  m ~ Bernoulli(1-p) per value,  y = x · m / (1-p)   (training);   y = x   (evaluation)
Backward: ∂L/∂x = ∂L/∂y · m / (1-p)
"""
import torch
from torch import nn


class DropoutFunction(torch.autograd.Function):
    """The mask is an input, drawn outside: the same mask gives the same result, so gradcheck can check it."""

    @staticmethod
    def forward(ctx, x, mask, p: float):
        scaled_mask = mask.to(x.dtype) / (1 - p)
        ctx.save_for_backward(scaled_mask)
        return x * scaled_mask

    @staticmethod
    def backward(ctx, grad_y):
        (scaled_mask,) = ctx.saved_tensors
        return grad_y * scaled_mask, None, None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """x with a fresh mask while training (p < 1), x itself otherwise."""
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0
    mask = torch.empty_like(x).bernoulli_(1 - p)  # the draw torch.nn.Dropout makes, so a seed gives the same mask
    return DropoutFunction.apply(x, mask, p)


class Dropout(nn.Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability must be between 0 and 1, got {p}")
        self.p = p

    @classmethod
    def like(cls, module: nn.Dropout) -> "Dropout":
        return cls(module.p)

    def forward(self, x):
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
